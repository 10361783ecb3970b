package doctor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
)

// local checks this machine's side: each local port is free on each
// address (or who holds it), and the addresses are loopback.
func (d *Doctor) local(fw config.Forward) Check {
	c := Check{Step: "local", Status: OK}
	addrs := fw.Addresses
	if len(addrs) == 0 {
		addrs = []string{"localhost"}
	}
	list, err := portspec.ParseAddresses(addrs)
	if err != nil {
		c.Status, c.Summary = Fail, err.Error()
		return c
	}
	var free, taken, half []string
	for _, p := range fw.Ports {
		if p.Local == 0 {
			continue // a free port is chosen when it listens
		}
		// localhost fails only when both of its addresses do.
		var lhTaken []string
		lhFree := false
		for _, a := range list {
			ap := netip.AddrPortFrom(a.IP, p.Local)
			err := tryListen(a.Network(), ap)
			switch {
			case err == nil:
				free = append(free, ap.String())
				lhFree = lhFree || a.FromLocalhost
			case a.FromLocalhost && errors.Is(err, syscall.EADDRNOTAVAIL):
				// no IPv6 (or IPv4) loopback here: kubectl skips it too
			case a.FromLocalhost:
				lhTaken = append(lhTaken, who(ap, err))
			default:
				taken = append(taken, who(ap, err))
			}
		}
		if !lhFree {
			taken = append(taken, lhTaken...)
		} else if len(lhTaken) > 0 {
			// kpf (like kubectl) listens on the other one, and clients that
			// try this one first reach whatever holds it.
			half = append(half, lhTaken...)
		}
	}
	switch {
	case len(taken) > 0:
		c.Status = Fail
		c.Summary = "local port in use: " + strings.Join(taken, "; ")
		c.Fix = "stop what holds it, or choose another local port (LOCAL:REMOTE, or :REMOTE for any free one)"
	case len(half) > 0:
		c.Status = Warn
		c.Summary = "one loopback address is taken: " + strings.Join(half, "; ")
		c.Details = append(c.Details, "kpf listens on the other one only (free: "+strings.Join(free, ", ")+"); clients that try the taken one reach what holds it, not the pod")
		c.Fix = "stop what holds it, or choose another local port"
	case len(free) > 0:
		c.Summary = "free: " + strings.Join(free, ", ")
	default:
		c.Summary = "local ports are chosen when kpf listens"
	}
	for _, a := range list {
		if !a.Loopback() {
			c.Details = append(c.Details, fmt.Sprintf("--address %s: reachable from other machines, with your rights in the cluster", a.IP))
			if c.Status == OK {
				c.Status = Warn
			}
		}
	}
	return c
}

func tryListen(network string, ap netip.AddrPort) error {
	l, err := net.Listen(network, ap.String())
	if err != nil {
		return err
	}
	return l.Close()
}

// who says who holds ap, where this system tells.
func who(ap netip.AddrPort, err error) string {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Sprintf("%s: %v", ap, err)
	}
	if pid, prog := holder(ap.Port()); pid > 0 {
		return fmt.Sprintf("%s is held by %s (pid %d)", ap, prog, pid)
	}
	return ap.String() + " is held by another program (" + holderHint(ap.Port()) + ")"
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }
