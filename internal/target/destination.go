package target

import (
	"fmt"
	"net/netip"

	"strings"

	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/relay"
	corev1 "k8s.io/api/core/v1"
)

// Destination is a host/NAME or ip/ADDR target: no object of the cluster
// but a host that a relay pod dials from inside it (its DNS, its
// network). "ip" is also the short name of the IPAddress resource
// (networking.k8s.io); an IPAddress cannot be port-forwarded, so for a
// forward's target kpf's meaning wins, and ipaddress/NAME or
// ipaddresses.networking.k8s.io/NAME keep kubectl's.
type Destination struct {
	Kind string // "host" or "ip"
	Host string // as relay.ParseHost gives it
}

// Ref is the target as the user would write it again.
func (d Destination) Ref() string { return d.Kind + "/" + d.Host }

// DestinationError is a host/ or ip/ target that names no host.
type DestinationError struct {
	Target string
	Msg    string
}

func (e *DestinationError) Error() string {
	return fmt.Sprintf("target %q: %s", e.Target, e.Msg)
}

// ParseDestination says whether typeName is a host/ or ip/ target (ok),
// and reads it; any other target is the resource builder's (ok false).
func ParseDestination(typeName string) (d Destination, ok bool, err error) {
	kind, name, found := strings.Cut(typeName, "/")
	kind = strings.ToLower(kind)
	if !found || (kind != "host" && kind != "ip") {
		return Destination{}, false, nil
	}
	bad := func(format string, a ...any) (Destination, bool, error) {
		return Destination{}, true, &DestinationError{Target: typeName, Msg: fmt.Sprintf(format, a...)}
	}
	if name == "" {
		return bad("names no host (want host/NAME, such as host/orders.example.com, or ip/ADDR, such as ip/10.1.2.3)")
	}
	host, herr := relay.ParseHost(name)
	_, perr := netip.ParseAddr(host)
	isIP := herr == nil && perr == nil
	switch {
	case herr != nil && kind == "ip":
		return bad("%q is not the IP address of one host (%v); a name is host/NAME", name, herr)
	case herr != nil:
		return bad("%q is not a host name (%v): want host/NAME, such as host/orders.example.com", name, herr)
	case kind == "ip" && !isIP:
		return bad("%q is not an IP address: for a name, write host/%s", name, host)
	case kind == "host" && isIP:
		return bad("%q is an IP address: write ip/%s", name, host)
	case relay.IsLoopback(host):
		return bad("%q is the relay pod's own loopback, where only the relay itself listens (a connection there would make it dial itself without end): name a host the cluster reaches; for this machine's own ports, kpf forward needs no relay", name)
	}
	return Destination{Kind: kind, Host: host}, true, nil
}

// DestinationPorts are a destination's ports: numbers only (a host
// outside the cluster has no named ports), each local port the remote
// one unless given.
func DestinationPorts(d Destination, ports []portspec.Port) ([]portspec.Resolved, error) {
	out := make([]portspec.Resolved, 0, len(ports))
	for _, p := range ports {
		r, err := p.Resolve(func(name string) (uint16, error) {
			return 0, fmt.Errorf("%s has no named ports: give the port's number instead of %q", d.Ref(), name)
		})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// ForDestination is the target d, carried by the relay pod: the forward
// follows that pod (and the ones that replace it), and each of ports
// reaches d through the relay.
func ForDestination(namespace string, d Destination, relayPod *corev1.Pod, ports []portspec.Resolved) *Target {
	return &Target{Namespace: namespace, Ref: d.Ref(), Object: relayPod, Pod: relayPod, Ports: ports, Destination: &d}
}

// At is d at port as the relay's --allow and --tcp name it.
func (d Destination) At(port uint16) string {
	return relay.Dest{Host: d.Host, Port: port}.String()
}
