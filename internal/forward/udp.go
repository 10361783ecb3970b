package forward

import (
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/kpf-dev/kpf/internal/portspec"
)

// UDPListener is a bound /udp port on one address.
type UDPListener struct {
	Conn   *net.UDPConn
	Remote uint16 // the port in the pod
}

// ListenUDP binds each /udp port on every address (a port asked as 0 gets
// a free one on the first address, and the same on the others). It prints
// no "Forwarding from" line: the caller does, once the relay is ready. As
// for TCP, a "localhost" address may fail while the other binds; a typed
// one may not.
func ListenUDP(addrs []portspec.Address, ports []portspec.Resolved, errOut io.Writer) ([]UDPListener, error) {
	var out []UDPListener
	for _, p := range ports {
		local := p.Local
		bound := 0
		for _, a := range addrs {
			network := "udp4"
			if a.IP.Is6() {
				network = "udp6"
			}
			c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.IP, local)))
			if err != nil {
				if a.FromLocalhost {
					fmt.Fprintf(errOut, "Unable to listen on %s: %v\n", netip.AddrPortFrom(a.IP, local), err)
					continue
				}
				for _, c := range out {
					c.Conn.Close()
				}
				return nil, fmt.Errorf("listen on %s/udp: %w", netip.AddrPortFrom(a.IP, local), err)
			}
			c.SetReadBuffer(4 << 20)
			c.SetWriteBuffer(4 << 20)
			if local == 0 {
				local = uint16(c.LocalAddr().(*net.UDPAddr).Port)
			}
			out = append(out, UDPListener{c, p.Remote})
			bound++
		}
		if bound == 0 {
			for _, c := range out {
				c.Conn.Close()
			}
			return nil, fmt.Errorf("unable to listen on %d/udp on any of the requested addresses", p.Local)
		}
	}
	return out, nil
}
