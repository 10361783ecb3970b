package audit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func lines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestRecordsAreJSONLinesWithTimeAndKind(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.now = func() time.Time { return time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) }
	fw := Forward{Who: Who{Context: "prod", Cluster: "c", User: "alice"}, Namespace: "shop", Name: "db", Target: "service/db"}
	l.Event(Event{Forward: fw, Event: "start", Pod: "db-0", Listen: []string{"127.0.0.1:5432"}})
	l.Connection(Connection{Forward: fw, Pod: "db-0", RemotePort: 5432, Local: "127.0.0.1:5432", Peer: "127.0.0.1:50000", BytesIn: 10, BytesOut: 20, Result: "error", Error: "refused \"x\""})
	l.Event(Event{Forward: fw, Event: "switch", From: "db-0", Pod: "db-1", Reason: "the pod is gone"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l.Event(Event{Forward: fw, Event: "stop"}) // after Close: dropped, no panic
	var none *Log
	none.Connection(Connection{}) // nil: nothing
	got := lines(t, path)
	if len(got) != 3 {
		t.Fatalf("%d lines", len(got))
	}
	for i, want := range []map[string]any{
		{"kind": "forward", "event": "start", "user": "alice", "forward": "db", "time": "2026-11-30T12:00:00Z"},
		{"kind": "connection", "bytesIn": 10.0, "bytesOut": 20.0, "result": "error", "error": `refused "x"`, "remotePort": 5432.0},
		{"kind": "forward", "event": "switch", "from": "db-0", "pod": "db-1"},
	} {
		for k, v := range want {
			if got[i][k] != v {
				t.Errorf("line %d: %s = %v, want %v", i, k, got[i][k], v)
			}
		}
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
}

func TestRotatesBySizeAndKeepsN(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, 1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		l.Connection(Connection{Forward: Forward{Target: "pod/x" + strings.Repeat("y", i%7)}, BytesIn: int64(i), Result: "ok"})
	}
	l.Close()
	for _, p := range []string{path, path + ".1", path + ".2"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if fi.Size() > 1000 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %d bytes, mode %v", p, fi.Size(), fi.Mode().Perm())
		}
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("a third rotated file: %v", err)
	}
	// The newest records are in the current file, in order.
	cur := lines(t, path)
	if last := cur[len(cur)-1]["bytesIn"]; last != 99.0 {
		t.Errorf("last record %v", last)
	}
}

func TestOpenMakesAWideFilePrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}
