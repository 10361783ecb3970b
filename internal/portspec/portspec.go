// Package portspec parses what users type for ports and listen addresses,
// with kubectl port-forward's syntax and rules: [LOCAL:]REMOTE, where REMOTE
// may be a port name, and a comma list of addresses where "localhost" means
// both 127.0.0.1 and ::1.
package portspec

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// A Port is one [LOCAL:]REMOTE pair as typed. Remote is a number or a port
// name until the target resolves it.
type Port struct {
	Local  uint16 // 0: a free port chosen at listen time
	Remote string
	// LocalSet says the local port was typed; otherwise it follows the
	// remote port, which a port name only fixes later.
	LocalSet bool
	// UDP: the port was typed with /udp (kpf's own syntax; /tcp is the
	// default, and what kubectl's syntax means).
	UDP bool
}

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("invalid port")

// ParsePort parses "8080:80", "80", ":80", "0:80", "8080:http" or "http",
// each with an optional /udp or /tcp.
func ParsePort(s string) (Port, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	udp := false
	if hasProto {
		switch strings.ToLower(proto) {
		case "udp":
			udp = true
		case "tcp":
		default:
			return Port{}, fmt.Errorf("%w %q: the protocol %q is not tcp or udp (want [LOCAL:]REMOTE[/udp], like 5353:53/udp)", ErrSyntax, s, proto)
		}
	}
	p, err := parsePort(spec, s)
	p.UDP = udp
	return p, err
}

func parsePort(s, typed string) (Port, error) {
	local, remote, hasColon := strings.Cut(s, ":")
	if !hasColon {
		remote = local
	}
	if strings.Contains(remote, ":") {
		return Port{}, fmt.Errorf("%w %q: want [LOCAL:]REMOTE, like 8080:80, :80 or 80", ErrSyntax, typed)
	}
	if remote == "" {
		return Port{}, fmt.Errorf("%w %q: the remote port is empty (want [LOCAL:]REMOTE, like 8080:80)", ErrSyntax, typed)
	}
	p := Port{Remote: remote}
	if n, err := strconv.ParseUint(remote, 10, 16); err == nil {
		if n == 0 {
			return Port{}, fmt.Errorf("%w %q: the remote port must be from 1 to 65535", ErrSyntax, typed)
		}
		p.Remote = strconv.FormatUint(n, 10)
	} else if isDigits(remote) {
		return Port{}, fmt.Errorf("%w %q: the remote port %s is out of range (1 to 65535)", ErrSyntax, typed, remote)
	} else if err := validName(remote); err != nil {
		return Port{}, fmt.Errorf("%w %q: %v", ErrSyntax, typed, err)
	}
	if !hasColon {
		if n, err := strconv.ParseUint(remote, 10, 16); err == nil {
			p.Local = uint16(n)
		}
		return p, nil
	}
	p.LocalSet = true
	if local == "" {
		return p, nil // :REMOTE: a free local port
	}
	n, err := strconv.ParseUint(local, 10, 16)
	if err != nil {
		return Port{}, fmt.Errorf("%w %q: the local port %q is not a number from 0 to 65535 (use :%s for a free one)", ErrSyntax, typed, local, remote)
	}
	p.Local = uint16(n)
	return p, nil
}

// ParsePorts parses each argument.
func ParsePorts(args []string) ([]Port, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: no ports given (want [LOCAL:]REMOTE...)", ErrSyntax)
	}
	ports := make([]Port, 0, len(args))
	for _, a := range args {
		p, err := ParsePort(a)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	if err := Duplicate(ports); err != nil {
		return nil, err
	}
	return ports, nil
}

// ErrDuplicate is wrapped when one forward names a local port twice.
var ErrDuplicate = errors.New("local port given twice")

// Duplicate finds a local port that two of ports would both listen on (a
// free port, 0, never does; TCP and UDP are apart): one forward cannot
// listen twice on a port, and a second listener would fail, or half of
// the forward would be missing.
func Duplicate(ports []Port) error {
	for i, p := range ports {
		for _, q := range ports[:i] {
			if p.Local != 0 && p.Local == q.Local && p.UDP == q.UDP {
				return fmt.Errorf("%w: %q and %q both listen on local port %d (give each its own local port, or :%s for a free one)",
					ErrDuplicate, q, p, p.Local, p.Remote)
			}
		}
	}
	return nil
}

// Resolved is a port whose remote side is a number.
type Resolved struct {
	Local  uint16
	Remote uint16
	UDP    bool
}

// Resolve turns the remote port into a number with lookup (which knows the
// target's port names); a named port with no local port typed listens on
// the number it resolves to, as kubectl does.
func (p Port) Resolve(lookup func(name string) (uint16, error)) (Resolved, error) {
	if n, err := strconv.ParseUint(p.Remote, 10, 16); err == nil {
		return Resolved{Local: p.Local, Remote: uint16(n), UDP: p.UDP}, nil
	}
	n, err := lookup(p.Remote)
	if err != nil {
		return Resolved{}, err
	}
	local := p.Local
	if !p.LocalSet {
		local = n
	}
	return Resolved{Local: local, Remote: n, UDP: p.UDP}, nil
}

// AnyUDP reports whether any of ports is a /udp port (and so needs a relay).
func AnyUDP(ports []Port) bool {
	for _, p := range ports {
		if p.UDP {
			return true
		}
	}
	return false
}

func (p Port) String() string {
	s := p.Remote
	if p.LocalSet {
		s = fmt.Sprintf("%d:%s", p.Local, p.Remote)
	}
	if p.UDP {
		s += "/udp"
	}
	return s
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// validName applies Kubernetes' IANA_SVC_NAME rules to a port name.
func validName(s string) error {
	if len(s) > 15 {
		return fmt.Errorf("port name %q is longer than 15 characters", s)
	}
	letter := false
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z':
			letter = true
		case r >= '0' && r <= '9':
		case r == '-':
			if i == 0 || i == len(s)-1 || s[i-1] == '-' {
				return fmt.Errorf("port name %q may not start or end with '-' or hold '--'", s)
			}
		default:
			return fmt.Errorf("port name %q may hold only lower-case letters, digits and '-'", s)
		}
	}
	if !letter {
		return fmt.Errorf("port name %q needs a letter", s)
	}
	return nil
}

// An Address is one local address to listen on.
type Address struct {
	IP netip.Addr
	// FromLocalhost: part of "localhost", which fails only if both
	// 127.0.0.1 and ::1 fail; a typed IP must not fail.
	FromLocalhost bool
}

// Network is tcp4 or tcp6.
func (a Address) Network() string {
	if a.IP.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// Loopback reports whether only this machine can reach the address.
func (a Address) Loopback() bool { return a.IP.IsLoopback() }

// ParseAddresses parses --address values (each may be a comma list):
// "localhost" or IP literals. Duplicates are dropped; the result is sorted
// as kubectl sorts it (by its text), so 127.0.0.1 comes before ::1.
func ParseAddresses(values []string) ([]Address, error) {
	seen := map[netip.Addr]Address{}
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			switch {
			case s == "":
				return nil, fmt.Errorf("--address %q: an empty address (want localhost or IP addresses, comma separated)", v)
			case s == "localhost":
				for _, ip := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
					if _, ok := seen[ip]; !ok {
						seen[ip] = Address{IP: ip, FromLocalhost: true}
					}
				}
			default:
				ip, err := netip.ParseAddr(strings.Trim(s, "[]"))
				if err != nil || ip.Zone() != "" {
					return nil, fmt.Errorf("--address %q: %s is not a valid IP (want localhost or IP addresses like 127.0.0.1, ::1 or 0.0.0.0)", v, s)
				}
				ip = ip.Unmap()
				seen[ip] = Address{IP: ip}
			}
		}
	}
	out := make([]Address, 0, len(seen))
	for _, a := range seen {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.String() < out[j].IP.String() })
	return out, nil
}
