package daemon

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/internal/daemon/api"
)

// FuzzReadEvents: any stream (a daemon's, or garbage) is read without a
// panic, and each event it yields is one that was in it.
func FuzzReadEvents(f *testing.F) {
	f.Add("id: 1\nevent: pod\ndata: {\"id\":1,\"type\":\"pod\",\"forward\":\"web\"}\n\n")
	f.Add(": comment\n\ndata: {\"type\":\"counters\",\"status\":{\"pid\":1}}\n\n")
	f.Add("data: {\ndata: }\n\n")
	f.Add("data: not json\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		err := ReadEvents(strings.NewReader(s), func(e api.Event) error {
			if _, err := json.Marshal(e); err != nil {
				t.Fatal(err)
			}
			return nil
		})
		if err == nil {
			t.Fatal("a stream that ends must say so")
		}
	})
}

// FuzzCheckAPIAddr: only loopback addresses with a port pass.
func FuzzCheckAPIAddr(f *testing.F) {
	for _, s := range []string{"127.0.0.1:7070", "[::1]:1", "localhost:80", "0.0.0.0:7070", "10.0.0.1:80", ":7070", "127.0.0.1", "[::ffff:127.0.0.1]:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := CheckAPIAddr(s)
		if err == nil && !ap.Addr().IsLoopback() {
			t.Fatalf("%q passed as %v", s, ap)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "--api-addr ") {
			t.Fatalf("%q: %v does not name the flag", s, err)
		}
	})
}

// FuzzStartRequest: a request to start a forward is refused with a
// message, or makes a forward on loopback with a valid name.
func FuzzStartRequest(f *testing.F) {
	f.Add("svc/web", "8080:80", "", "", "30s")
	f.Add("", "", "0.0.0.0", "Web", "x")
	f.Add("pod/a", ":80", "::1", "db", "")
	s := &Server{origins: map[string]string{}}
	f.Fuzz(func(t *testing.T, target, port, addr, name, wait string) {
		req := startReq(target, port)
		req.Address, req.Name, req.Wait = addr, name, wait
		fw, _, err := s.startRequest(req, nil)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if !nameRE.MatchString(fw.Name) || len(fw.Addresses) != 1 {
			t.Fatalf("%+v", fw)
		}
	})
}
