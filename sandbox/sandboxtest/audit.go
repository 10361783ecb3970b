package sandboxtest

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"testing"
)

// AuditEvent is the part of an API server audit event that tests read.
type AuditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	UserAgent string `json:"userAgent"`
	ObjectRef struct {
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// AuditOffset is where the audit log ends now; pass it to AuditEvents to
// read only what comes after.
func (s *Sandbox) AuditOffset() int64 {
	fi, err := os.Stat(s.Dir.AuditLog())
	if err != nil {
		return 0
	}
	return fi.Size()
}

// AuditEvents reads the audit log from offset on.
func (s *Sandbox) AuditEvents(t testing.TB, from int64) []AuditEvent {
	t.Helper()
	f, err := os.Open(s.Dir.AuditLog())
	if err != nil {
		t.Fatalf("audit log: %v", err)
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var evs []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e AuditEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			evs = append(evs, e)
		}
	}
	return evs
}

// WebSocketVerb and SPDYVerb are the verbs the API server records for a
// port-forward upgrade over each transport: a WebSocket upgrade is a GET,
// an SPDY upgrade a POST (create).
const (
	WebSocketVerb = "get"
	SPDYVerb      = "create"
)
