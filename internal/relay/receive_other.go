//go:build !unix

package relay

import "net"

// receive waits for the next datagram on c and hands it to deliver, in a
// buffer of the pool's (held while waiting, here: the relay runs on
// Linux, where receive_unix.go holds none).
func receive(c *net.UDPConn, deliver func([]byte) error) error {
	bp := datagrams.Get().(*[]byte)
	defer datagrams.Put(bp)
	n, err := c.Read(*bp)
	if err != nil {
		return err
	}
	return deliver((*bp)[:n])
}
