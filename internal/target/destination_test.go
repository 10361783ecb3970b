package target

import (
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/internal/portspec"
)

// TestParseDestination: host/ and ip/ are kpf's targets (ip before the
// IPAddress resource's short name); ipaddress/ and other kinds stay the
// resource builder's; a bad host or address is an error naming the
// target and the fix.
func TestParseDestination(t *testing.T) {
	for in, want := range map[string]string{
		"host/orders.abc.eu-west-1.rds.amazonaws.com": "host/orders.abc.eu-west-1.rds.amazonaws.com",
		"HOST/Orders.Example.":                        "host/orders.example",
		"ip/10.1.2.3":                                 "ip/10.1.2.3",
		"ip/fd00::7":                                  "ip/fd00::7",
		"ip/::ffff:10.1.2.3":                          "ip/10.1.2.3",
	} {
		d, ok, err := ParseDestination(in)
		if !ok || err != nil || d.Ref() != want {
			t.Errorf("%s: %v %v %v, want %s", in, d.Ref(), ok, err, want)
		}
	}
	for _, other := range []string{"svc/api", "pod/ip", "ipaddress/10.1.2.3", "ipaddresses.networking.k8s.io/10.1.2.3", "web-0", "hosts/x"} {
		if _, ok, err := ParseDestination(other); ok || err != nil {
			t.Errorf("%s: taken as a destination (%v)", other, err)
		}
	}
	for in, want := range map[string]string{
		"ip/orders.example": `target "ip/orders.example": "orders.example" is not an IP address: for a name, write host/orders.example`,
		"host/10.1.2.3":     `target "host/10.1.2.3": "10.1.2.3" is an IP address: write ip/10.1.2.3`,
		"ip/":               `target "ip/": names no host (want host/NAME, such as host/orders.example.com, or ip/ADDR, such as ip/10.1.2.3)`,
		"ip/0.0.0.0":        `target "ip/0.0.0.0": "0.0.0.0" is not the IP address of one host (not one host's address and port); a name is host/NAME`,
		"host/a..b":         `target "host/a..b": "a..b" is not a host name (an empty label (two dots in a row)): want host/NAME, such as host/orders.example.com`,
		"host/bad name":     `target "host/bad name": "bad name" is not a host name (the character ' ' (a host name has letters, digits, hyphens and dots)): want host/NAME, such as host/orders.example.com`,
	} {
		_, ok, err := ParseDestination(in)
		if !ok || err == nil || err.Error() != want {
			t.Errorf("%s: %v\n want %s", in, err, want)
		}
	}
	// The relay pod's own loopback: a connection there would make the
	// relay dial its own listener without end.
	for _, in := range []string{"ip/127.0.0.1", "ip/127.8.9.10", "ip/::1", "ip/::ffff:127.0.0.1", "host/localhost", "host/LocalHost.", "host/db.localhost"} {
		_, ok, err := ParseDestination(in)
		if !ok || err == nil || !strings.Contains(err.Error(), `target "`+in+`"`) || !strings.Contains(err.Error(), "the relay pod's own loopback") {
			t.Errorf("%s: %v, want refused as the relay pod's own loopback", in, err)
		}
	}
}

// TestDestinationPortsNumbersOnly: a destination has no named ports.
func TestDestinationPortsNumbersOnly(t *testing.T) {
	d := Destination{Kind: "ip", Host: "10.1.2.3"}
	ports, _ := portspec.ParsePorts([]string{"8080:80", "5432", ":53/udp"})
	r, err := DestinationPorts(d, ports)
	if err != nil || len(r) != 3 || r[0] != (portspec.Resolved{Local: 8080, Remote: 80}) || r[1] != (portspec.Resolved{Local: 5432, Remote: 5432}) || !r[2].UDP || r[2].Remote != 53 {
		t.Fatalf("%+v, %v", r, err)
	}
	named, _ := portspec.ParsePorts([]string{"http"})
	if _, err := DestinationPorts(d, named); err == nil || !strings.Contains(err.Error(), `ip/10.1.2.3 has no named ports: give the port's number instead of "http"`) {
		t.Fatalf("named port: %v", err)
	}
}

// FuzzParseDestination: any target is the builder's, or a destination
// whose Ref parses back to itself, or an error naming the target; never
// a panic.
func FuzzParseDestination(f *testing.F) {
	for _, s := range []string{"host/orders.example", "ip/10.1.2.3", "ip/fd00::7", "host/", "ip/a", "svc/x", "host/A.B.", "ip/1.2.3.4%eth0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok, err := ParseDestination(s)
		switch {
		case err != nil:
			if !ok || !strings.HasPrefix(err.Error(), "target ") {
				t.Fatalf("%q: %v (ok %v)", s, err, ok)
			}
		case ok:
			again, ok2, err2 := ParseDestination(d.Ref())
			if !ok2 || err2 != nil || again != d {
				t.Fatalf("%q -> %q -> %+v %v", s, d.Ref(), again, err2)
			}
		}
	})
}
