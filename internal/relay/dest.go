package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Dest is a destination the relay may reach: one host, by a literal IP
// or a DNS name (resolved by the relay, with its pod's DNS), and a port.
type Dest struct {
	Host string // an IP in its canonical form, or a lower-case DNS name without the final dot
	Port uint16
}

func (d Dest) String() string { return net.JoinHostPort(d.Host, strconv.Itoa(int(d.Port))) }

// ErrNotOneHost is an address that reads like a wildcard (0.0.0.0, [::],
// port 0) or names many hosts (multicast, broadcast).
var ErrNotOneHost = errors.New("not one host's address and port")

// ParseHost reads the host of a destination: a literal IP of one host
// (IPv4-mapped IPv6 unmapped, no zone), or a DNS name (RFC 1123 labels,
// case folded, a final dot dropped). The error says what is wrong, not
// where it came from: callers name the flag or target.
func ParseHost(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.Unmap()
		switch {
		case ip.Zone() != "":
			return "", fmt.Errorf("an IP with a zone (%%%s) names a link of this machine, not of the cluster", ip.Zone())
		case ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return "", ErrNotOneHost
		}
		return ip.String(), nil
	}
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if name == "" {
		return "", errors.New("no host name")
	}
	if len(name) > 253 {
		return "", fmt.Errorf("a host name of %d characters (at most 253)", len(name))
	}
	for _, label := range strings.Split(name, ".") {
		if err := checkLabel(label); err != nil {
			return "", err
		}
	}
	if strings.Trim(name, "0123456789.") == "" {
		return "", errors.New("all digits and dots, but not an IPv4 address")
	}
	return name, nil
}

// checkLabel: 1 to 63 letters, digits and hyphens, not starting or ending
// with a hyphen (RFC 1123; underscores too, which some DNS names have,
// such as _service records' hosts).
func checkLabel(l string) error {
	if l == "" {
		return errors.New("an empty label (two dots in a row)")
	}
	if len(l) > 63 {
		return fmt.Errorf("a label of %d characters (at most 63)", len(l))
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("the character %q (a host name has letters, digits, hyphens and dots)", c)
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("the label %q begins or ends with a hyphen", l)
	}
	return nil
}

// ParseDest reads HOST:PORT (an IPv6 host in brackets): ParseHost's
// rules, and a port from 1 to 65535.
func ParseDest(s string) (Dest, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Dest{}, err
	}
	h, err := ParseHost(host)
	if err != nil {
		return Dest{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return Dest{}, fmt.Errorf("port %q (want 1 to 65535)", port)
	}
	return Dest{Host: h, Port: uint16(p)}, nil
}

// ParseAllow reads a destination of --allow: HOST:PORT of the one host
// the relay may send datagrams to.
func ParseAllow(s string) (Dest, error) {
	d, err := ParseDest(s)
	if err != nil {
		return Dest{}, fmt.Errorf("--allow %q: want HOST:PORT of the one host the relay may send to (such as 10.0.3.7:53, [fd00::7]:53 or dns.example:53): %w", s, err)
	}
	return d, nil
}

// Route is a TCP destination of the relay: each connection to Listener
// (on the pod's loopback, where port-forward reaches it) is piped to
// Dest, and to nothing else.
type Route struct {
	Listener net.Listener
	Dest     Dest
}

// RouteSpec is a route as --tcp names it: PORT=HOST:PORT, the loopback
// port the relay listens on and the destination it pipes to.
type RouteSpec struct {
	Port uint16
	Dest Dest
}

func (r RouteSpec) String() string { return strconv.Itoa(int(r.Port)) + "=" + r.Dest.String() }

// ErrLoopback is a destination on the relay pod's own loopback
// (127.0.0.0/8, ::1, localhost): there, it is the relay's own listeners,
// and a route to one would dial itself without end.
var ErrLoopback = errors.New("the relay pod's own loopback (its own listeners: a route there dials itself without end)")

// IsLoopback says whether host (as ParseHost gives it) is a loopback
// address, localhost, or a name under .localhost (RFC 6761: they resolve
// to loopback).
func IsLoopback(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().IsLoopback()
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// ParseRoute reads --tcp PORT=HOST:PORT.
func ParseRoute(s string) (RouteSpec, error) {
	port, dest, ok := strings.Cut(s, "=")
	p, err := strconv.ParseUint(port, 10, 16)
	if !ok || err != nil || p == 0 {
		return RouteSpec{}, fmt.Errorf("--tcp %q: want PORT=HOST:PORT, the relay's loopback port (1 to 65535) and the destination it pipes to, such as 4091=orders.example:5432", s)
	}
	d, err := ParseDest(dest)
	if err != nil {
		return RouteSpec{}, fmt.Errorf("--tcp %q: want PORT=HOST:PORT, such as 4091=orders.example:5432: %w", s, err)
	}
	if IsLoopback(d.Host) {
		return RouteSpec{}, fmt.Errorf("--tcp %q: %s is %w", s, d.Host, ErrLoopback)
	}
	return RouteSpec{Port: uint16(p), Dest: d}, nil
}
