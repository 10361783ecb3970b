package portspec

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	tests := []struct {
		in      string
		want    Port
		wantErr string
	}{
		{in: "80", want: Port{Local: 80, Remote: "80"}},
		{in: "8080:80", want: Port{Local: 8080, Remote: "80", LocalSet: true}},
		{in: ":80", want: Port{Local: 0, Remote: "80", LocalSet: true}},
		{in: "0:80", want: Port{Local: 0, Remote: "80", LocalSet: true}},
		{in: "http", want: Port{Remote: "http"}},
		{in: "8080:http", want: Port{Local: 8080, Remote: "http", LocalSet: true}},
		{in: "65535:65535", want: Port{Local: 65535, Remote: "65535", LocalSet: true}},
		{in: "080", want: Port{Local: 80, Remote: "80"}},
		{in: "", wantErr: `invalid port "": the remote port is empty`},
		{in: "8080:", wantErr: `invalid port "8080:": the remote port is empty`},
		{in: "0", wantErr: `invalid port "0": the remote port must be from 1 to 65535`},
		{in: "1:2:3", wantErr: `invalid port "1:2:3": want [LOCAL:]REMOTE`},
		{in: "70000", wantErr: `invalid port "70000": the remote port 70000 is out of range`},
		{in: "x:80", wantErr: `invalid port "x:80": the local port "x" is not a number from 0 to 65535 (use :80 for a free one)`},
		{in: "99999:80", wantErr: `the local port "99999" is not a number`},
		{in: "-1:80", wantErr: `the local port "-1"`},
		{in: "HTTP", wantErr: `may hold only lower-case letters`},
		{in: "a-very-long-port-name", wantErr: `longer than 15 characters`},
		{in: "-http", wantErr: `may not start or end with '-'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePort(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePort(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				if !errors.Is(err, ErrSyntax) {
					t.Errorf("error %v does not wrap ErrSyntax", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePort(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParsePort(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestResolveNamedPort(t *testing.T) {
	lookup := func(name string) (uint16, error) {
		if name == "http" {
			return 8080, nil
		}
		return 0, fmt.Errorf("no port named %s", name)
	}
	for in, want := range map[string]Resolved{
		"http":        {8080, 8080, false}, // kubectl listens on the resolved number
		"9000:http":   {9000, 8080, false},
		":http":       {0, 8080, false},
		"81":          {81, 81, false},
		"7:81":        {7, 81, false},
		"5353:53/udp": {5353, 53, true},
		"53/UDP":      {53, 53, true},
		":53/udp":     {0, 53, true},
		"80/tcp":      {80, 80, false},
	} {
		p, err := ParsePort(in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Resolve(lookup)
		if err != nil || got != want {
			t.Errorf("%s: Resolve = %+v, %v; want %+v", in, got, err, want)
		}
	}
	p, _ := ParsePort("metrics")
	if _, err := p.Resolve(lookup); err == nil {
		t.Error("unknown name resolved")
	}
}

func TestParseAddresses(t *testing.T) {
	tests := []struct {
		in      []string
		want    string
		wantErr string
	}{
		{in: []string{"localhost"}, want: "127.0.0.1* ::1*"},
		{in: []string{"127.0.0.1"}, want: "127.0.0.1"},
		{in: []string{"localhost,10.0.0.1"}, want: "10.0.0.1 127.0.0.1* ::1*"},
		{in: []string{"localhost", "127.0.0.1"}, want: "127.0.0.1 ::1*"},
		{in: []string{"::1,0.0.0.0"}, want: "0.0.0.0 ::1"},
		{in: []string{"[::1]"}, want: "::1"},
		{in: []string{"example.com"}, wantErr: `--address "example.com": example.com is not a valid IP`},
		{in: []string{"127.0.0.1,"}, wantErr: `an empty address`},
		{in: []string{"fe80::1%eth0"}, wantErr: `is not a valid IP`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, " "), func(t *testing.T) {
			got, err := ParseAddresses(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, a := range got {
				s := a.IP.String()
				if a.FromLocalhost {
					s += "*"
				}
				parts = append(parts, s)
			}
			if s := strings.Join(parts, " "); s != tt.want {
				t.Errorf("got %s, want %s", s, tt.want)
			}
		})
	}
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"80", "8080:80", ":80", "0:80", "http", "a:b:c", "", ":", "65536", "x-y", "5353:53/udp", "53/tcp", "53/sctp", "/udp", "dns/udp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePort(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not wrap ErrSyntax", err)
			}
			return
		}
		if p.Remote == "" || p.Remote == "0" {
			t.Fatalf("%q parsed to an empty or zero remote port: %+v", s, p)
		}
		// What parses, round-trips.
		again, err := ParsePort(p.String())
		if err != nil || again.Remote != p.Remote || again.UDP != p.UDP || (p.LocalSet && again.Local != p.Local) {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, p, p.String(), again, err)
		}
	})
}

func FuzzParseAddresses(f *testing.F) {
	for _, s := range []string{"localhost", "127.0.0.1,::1", "0.0.0.0", "[::1]", "a,b", ",", "::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addrs, err := ParseAddresses([]string{s})
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, a := range addrs {
			if !a.IP.IsValid() || seen[a.IP.String()] {
				t.Fatalf("%q: bad or duplicate address in %v", s, addrs)
			}
			seen[a.IP.String()] = true
		}
	})
}

func TestProtocolSuffix(t *testing.T) {
	for in, want := range map[string]string{
		"53/sctp":  `the protocol "sctp" is not tcp or udp`,
		"/udp":     "the remote port is empty",
		"x:53/udp": `the local port "x" is not a number`,
	} {
		if _, err := ParsePort(in); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), strconv.Quote(in)) {
			t.Errorf("%q: %v, want %q and the port as typed", in, err, want)
		}
	}
}

// One forward names a local port once: kpf forward, the API and kpf mcp
// refuse a second listener on it (kubectl port-forward half-works).
func TestParsePortsRefusesALocalPortTwice(t *testing.T) {
	for _, tc := range []struct {
		ports []string
		want  string
	}{
		{[]string{"8080:80", "8080:81"}, `local port given twice: "8080:80" and "8080:81" both listen on local port 8080 (give each its own local port, or :81 for a free one)`},
		{[]string{"80", "8080:80", "80:81"}, `local port given twice: "80" and "80:81" both listen on local port 80 (give each its own local port, or :81 for a free one)`},
		{[]string{"5353:53/udp", "5353:53"}, ""},
		{[]string{":80", ":81", "0:82"}, ""},
	} {
		_, err := ParsePorts(tc.ports)
		if tc.want == "" && err != nil || tc.want != "" && (!errors.Is(err, ErrDuplicate) || err.Error() != tc.want) {
			t.Errorf("ParsePorts(%q) = %v, want %q", tc.ports, err, tc.want)
		}
	}
}
