//go:build unix

package relay

import (
	"net"
	"syscall"
)

// receive waits for the next datagram on c and hands it to deliver in a
// buffer of the pool's: a flow waiting for its target holds none (a
// buffer of its own, 64 KiB on its goroutine's stack, made a relay of a
// thousand flows outgrow its pod's 64 MiB).
func receive(c *net.UDPConn, deliver func([]byte) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		bp = datagrams.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *bp)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			datagrams.Put(bp)
			bp = nil
			return false // wait for the next datagram without a buffer
		}
		return true
	})
	if bp != nil {
		defer datagrams.Put(bp)
	}
	if err != nil {
		return err
	}
	if rerr != nil {
		return rerr
	}
	return deliver((*bp)[:n])
}
