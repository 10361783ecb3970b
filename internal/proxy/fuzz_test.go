package proxy

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

// FuzzSOCKS feeds a client's bytes to the SOCKS5 parsers: they return an
// error or a request, never panic, and a request read back re-encodes to
// the bytes it came from.
func FuzzSOCKS(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 3, 'a', 'p', 'i', 0, 80})
	f.Add([]byte{5, 1, 2, 1, 3, 'a', 'n', 'n', 1, 'x', 5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22})
	f.Add([]byte{5, 0})
	f.Add([]byte{5, 1, 0, 5, 2, 0, 3, 0, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		methods, err := readGreeting(r)
		if err != nil {
			return
		}
		if len(methods) == 0 {
			t.Fatal("a greeting with no methods was accepted")
		}
		if bytes.IndexByte(methods, methodPass) >= 0 {
			if _, _, err := readUserPass(r); err != nil {
				return
			}
		}
		before := r.Len()
		host, port, err := readRequest(r)
		if err != nil {
			return
		}
		if host == "" || port == 0 {
			t.Fatalf("accepted %q:%d", host, port)
		}
		if used := before - r.Len(); used < 7 || used > 4+1+255+2 {
			t.Fatalf("request of %d bytes", used)
		}
	})
}

// FuzzNames resolves any host name against an empty cluster: an error
// (not a cluster name, or no such service), never a panic or a route.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"api", "api.shop", "api.shop.svc", "db-0.db.shop.svc.cluster.local", "10.0.0.1", "::1", "[::1]", "a..b", ".svc", "svc.cluster.local", "x.svc.cluster.local.", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		r := &resolver{client: fake.NewClientset(), namespace: "default", domain: "cluster.local"}
		rt, err := r.lookup(context.Background(), host, 80)
		if err == nil {
			t.Fatalf("%q routed to %+v in an empty cluster", host, rt)
		}
		var nf *NotFoundError
		if !errors.Is(err, ErrOutside) && !errors.As(err, &nf) && !strings.Contains(err.Error(), "a cluster name is") && !strings.Contains(err.Error(), "service") {
			t.Fatalf("%q: unexplained error %v", host, err)
		}
	})
}
