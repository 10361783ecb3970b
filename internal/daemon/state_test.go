package daemon

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/testnet"
)

// serveIn runs s in home until stop (or the test's end); stop returns
// once Serve has.
func serveIn(t *testing.T, s *Server, home string) (*Client, func()) {
	t.Helper()
	s.Home = Home(home)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	c := NewClient(Home(home))
	waitRunning(t, c, done)
	return c, stop
}

// killed keeps the home's records as a daemon killed now would leave
// them (its clean stop removes them), and puts them back: the returned
// func is called once the daemon has stopped.
func killed(t *testing.T, home string) func() {
	t.Helper()
	st := Home(home).State()
	ents, err := os.ReadDir(st)
	if err != nil {
		t.Fatal(err)
	}
	saved := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(st, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		saved[e.Name()] = b
	}
	return func() {
		for n, b := range saved {
			if err := os.WriteFile(filepath.Join(st, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func tempHome(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "kpfd") // short: a socket path's limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	return home
}

// A daemon that did not stop (killed) is followed by one that runs each
// of its files again as the identity and with the settings that applied
// it, with the forwards as they were applied (a down of one forward
// included, the file's later edits not), and says so; a clean stop and
// kpf down leave nothing to restore. The records are 0600 in a 0700
// folder and hold no credential.
func TestRestoreAfterKill(t *testing.T) {
	home, dir := tempHome(t), t.TempDir()
	a := writeFile(t, dir, "a.yaml", fileA)
	b := writeFile(t, dir, "b.yaml", fileB)
	settingsB := spec.Defaults()
	settingsB.Transport = "spdy"
	o := &opened{byFwd: map[string]openCall{}}
	c, stop := serveIn(t, &Server{Log: discard, Opener: o.opener, Describe: describeByContext}, home)
	ctx := context.Background()
	if _, err := c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("staging", "admin"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(ctx, api.ApplyRequest{File: b, Identity: as("prod", "viewer"), Settings: settingsB}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
	if got := Home(home).Recorded(); !slices.Equal(got, []string{a, b}) {
		t.Fatalf("recorded %q", got)
	}
	fi, err := os.Stat(Home(home).State())
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state folder: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(Home(home).State())
	for _, e := range ents {
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("record %s: mode %v", e.Name(), fi.Mode())
		}
	}
	// The file changes after it was applied: restored as applied.
	writeFile(t, dir, "a.yaml", fileA+"  - {name: extra, target: svc/x, ports: [\"19000:80\"]}\n")
	// b is deleted (or moved): restored as applied, saying it is gone.
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	putBack := killed(t, home)
	stop()
	if got := Home(home).Recorded(); len(got) != 0 {
		t.Fatalf("a clean stop left records of %q", got)
	}
	putBack()

	o2 := &opened{byFwd: map[string]openCall{}}
	c2, _ := serveIn(t, &Server{Log: discard, Opener: o2.opener, Describe: describeByContext}, home)
	testnet.WaitFor(t, func() bool {
		_, ok1 := o2.get("api@staging")
		_, ok2 := o2.get("api@prod")
		return ok1 && ok2
	})
	pa, _ := o2.get("api@staging")
	pb, _ := o2.get("api@prod")
	if pa.id.Get("user") != "admin" || pb.id.Get("user") != "viewer" || !slices.Equal(pb.id.Env, []string{"AWS_PROFILE=viewer"}) {
		t.Errorf("identities: a %+v, b %+v", pa.id, pb.id)
	}
	if pb.sp.Transport != "spdy" || pa.sp.Transport != "auto" {
		t.Errorf("settings: a %+v, b %+v", pa.sp, pb.sp)
	}
	if _, ok := o2.get("db@staging"); ok {
		t.Error("db was stopped before the kill, yet restored")
	}
	st, err := c2.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Files, []string{a, b}) || len(st.Restored) != 2 {
		t.Fatalf("status: files %q, restored %+v", st.Files, st.Restored)
	}
	ra, rb := st.Restored[0], st.Restored[1]
	if !ra.Restored || !slices.Equal(ra.Forwards, []string{"api"}) || !strings.Contains(ra.Note, "restored as applied at") || !strings.Contains(ra.Note, "the file changed since") {
		t.Errorf("a: %+v", ra)
	}
	if !rb.Restored || !strings.Contains(rb.Note, "the file is gone since (deleted or moved; kpf down -f "+b+" stops its forwards)") || rb.PreviousPID != os.Getpid() {
		t.Errorf("b: %+v", rb)
	}
	for _, r := range st.Forwards {
		if r.Name == "extra" {
			t.Error("a forward added to the file after it was applied runs")
		}
	}
	// kpf down: nothing to restore.
	if _, _, err := c2.Down(ctx, api.NamesRequest{File: b}); err != nil {
		t.Fatal(err)
	}
	if got := Home(home).Recorded(); !slices.Equal(got, []string{a}) {
		t.Errorf("after down -f b, recorded %q", got)
	}
}

// A file whose identity held a credential is not written with it, and
// not restored: the daemon says which and how to run it again. Another
// kubeconfig user behind the same path is not restored either; the
// same user behind an edited kubeconfig is, saying so. A record that
// cannot be read is said to be so.
func TestRestoreRefusesWhatItCannotRunAsItWas(t *testing.T) {
	home, dir := tempHome(t), t.TempDir()
	kc := writeFile(t, dir, "kubeconfig", "user: dev\n")
	a := writeFile(t, dir, "a.yaml", fileA)
	b := writeFile(t, dir, "b.yaml", fileB)
	c3 := writeFile(t, dir, "c.yaml", "forwards:\n  - {name: web, target: svc/web, ports: [\"18090:80\"]}\n")
	// Who a kubeconfig connects as is what its file says.
	describe := func(id identity.Identity, ctx string) (string, string, string) {
		body, _ := os.ReadFile(kc)
		return "ctx", "cl", strings.TrimSpace(strings.TrimPrefix(string(body), "user:"))
	}
	fileID := identity.Identity{Flags: map[string][]string{"kubeconfig": {kc}}, Files: []identity.File{{Path: kc}}}
	fileID, _ = fileID.Rehash()
	secret := as("staging", "admin")
	secret.Flags["token"] = []string{"sekrit-token"}
	secret.Env = append(secret.Env, "AWS_SECRET_ACCESS_KEY=sekrit-aws")

	o := &opened{byFwd: map[string]openCall{}}
	c, stop := serveIn(t, &Server{Log: discard, Opener: o.opener, Describe: describe}, home)
	ctx := context.Background()
	for _, req := range []api.ApplyRequest{{File: a, Identity: secret}, {File: b, Identity: fileID}, {File: c3, Identity: fileID}} {
		req.Settings = spec.Defaults()
		if _, err := c.Apply(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(Home(home).State())
	for _, e := range ents {
		body, _ := os.ReadFile(filepath.Join(Home(home).State(), e.Name()))
		if strings.Contains(string(body), "sekrit") {
			t.Errorf("a credential on disk in %s:\n%s", e.Name(), body)
		}
	}
	putBack := killed(t, home)
	stop()
	putBack()
	os.WriteFile(filepath.Join(Home(home).State(), "0000.json"), []byte("{not json"), 0o600)

	// c's record says its kubeconfig connects as someone else now...
	var rec record
	recs, _ := Home(home).readRecords()
	for _, r := range recs {
		if r.File == c3 {
			rec = r
		}
	}
	rec.Who = map[string][3]string{"": {"ctx", "cl", "ops"}}
	if err := Home(home).writeRecord(rec); err != nil {
		t.Fatal(err)
	}
	// ...and the kubeconfig is edited, still as dev.
	writeFile(t, dir, "kubeconfig", "user: dev\n\n")

	o2 := &opened{byFwd: map[string]openCall{}}
	c2, _ := serveIn(t, &Server{Log: discard, Opener: o2.opener, Describe: describe}, home)
	st, err := c2.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	notes := map[string]api.Restore{}
	for _, r := range st.Restored {
		notes[filepath.Base(r.File)] = r
	}
	if r := notes["a.yaml"]; r.Restored || r.Note != "not restored: its identity held --token, AWS_SECRET_ACCESS_KEY, which kpf keeps in memory only and never writes to disk; apply it again: kpf up -d -f "+a {
		t.Errorf("a: %+v", r)
	}
	if r := notes["b.yaml"]; !r.Restored || r.Note != kc+" changed since it was applied (the same context, cluster and user)" {
		t.Errorf("b: %+v", r)
	}
	if r := notes["c.yaml"]; r.Restored || !strings.Contains(r.Note, `not restored: `+kc+` changed since it was applied, and now connects as context "ctx", cluster "cl", user "dev", not "ctx", "cl", "ops"`) {
		t.Errorf("c: %+v", r)
	}
	if r := notes["0000.json"]; r.Restored || !strings.HasPrefix(r.Note, "not restored: its record cannot be read") {
		t.Errorf("the broken record: %+v", r)
	}
	if !slices.Equal(st.Files, []string{b}) {
		t.Errorf("running %q, want only %s", st.Files, b)
	}
	// What was not restored is forgotten; what was is recorded again.
	if got := Home(home).Recorded(); !slices.Equal(got, []string{b}) {
		t.Errorf("recorded %q", got)
	}
}

// Cleanup is asked, for each recorded file, restored or not, to remove
// what the daemon before left, connecting as the file's identity.
func TestRestoreCleansUp(t *testing.T) {
	home, dir := tempHome(t), t.TempDir()
	a := writeFile(t, dir, "a.yaml", fileA)
	b := writeFile(t, dir, "b.yaml", fileB)
	secret := as("prod", "viewer")
	secret.Flags["token"] = []string{"t"}
	o := &opened{byFwd: map[string]openCall{}}
	c, stop := serveIn(t, &Server{Log: discard, Opener: o.opener, Describe: describeByContext}, home)
	ctx := context.Background()
	c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("staging", "admin"), Settings: spec.Defaults()})
	c.Apply(ctx, api.ApplyRequest{File: b, Identity: secret, Settings: spec.Defaults()})
	putBack := killed(t, home)
	stop()
	putBack()
	var mu sync.Mutex
	cleaned := map[string][]string{}
	s := &Server{Log: discard, Opener: o.opener, Describe: describeByContext,
		Cleanup: func(_ context.Context, id identity.Identity, fws []config.Forward) error {
			mu.Lock()
			defer mu.Unlock()
			for _, fw := range fws {
				cleaned[id.Get("user")] = append(cleaned[id.Get("user")], fw.Name)
			}
			return nil
		}}
	serveIn(t, s, home)
	testnet.WaitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(cleaned) == 2
	})
	if !slices.Equal(cleaned["admin"], []string{"api", "db"}) || !slices.Equal(cleaned["viewer"], []string{"api"}) {
		t.Errorf("cleaned %v", cleaned)
	}
}

// A discover entry's forwards are made again from the cluster by the
// restored entry: the record keeps the entry, not what it made.
func TestRecordKeepsDiscoverEntriesNotTheirForwards(t *testing.T) {
	got := applied([]config.Forward{{Name: "web"}, {Name: "discover-shop"}, {Name: "api.shop:80", Owner: "discover-shop"}})
	if len(got) != 2 || got[0].Name != "web" || got[1].Name != "discover-shop" {
		t.Fatalf("recorded %+v, want web and discover-shop only", got)
	}
}

// The daemon records its own flags while it runs, with the API address it
// listens on (not the :0 asked for) and never its token, and removes them
// at a clean exit: only a killed daemon's are left for the next one.
func TestDaemonFlagsAreRecordedWhileItRuns(t *testing.T) {
	home, err := os.MkdirTemp("", "kpfd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(home)
	s := &Server{Home: Home(home), Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener, APIAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:9911"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := NewClient(Home(home))
	waitRunning(t, c, done)
	st, err := c.Status(ctx, "")
	if err != nil || st.API != s.APIAt().String() {
		t.Fatalf("status api %q, %v: want %s", st.API, err, s.APIAt())
	}
	f, ok := Home(home).LastFlags()
	if !ok || f.APIAddr != s.APIAt().String() || f.MetricsAddr != "127.0.0.1:9911" || f.PID != os.Getpid() {
		t.Fatalf("recorded %+v, %v", f, ok)
	}
	token, _ := os.ReadFile(Home(home).APIToken())
	b, _ := os.ReadFile(filepath.Join(home, "state", flagsFile))
	if len(token) == 0 || strings.Contains(string(b), strings.TrimSpace(string(token))) {
		t.Fatalf("the record %s holds the token (or there is none)", b)
	}
	if len(Home(home).Recorded()) != 0 {
		t.Fatal("the flags are read as a file's record")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f, ok := Home(home).LastFlags(); ok {
		t.Fatalf("after a clean exit: %+v is left", f)
	}
}

// A killed daemon's API address that cannot be listened on any more is
// said and left out: the daemon runs, and restores its files, without it.
func TestRestoredAPIAddrThatIsTakenIsLeftOut(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener, APIAddr: held.Addr().String(), APIAddrRestored: true}
	c := serve(t, s)
	st, err := c.Status(context.Background(), "")
	if err != nil || st.API != "" {
		t.Fatalf("status api %q, %v: want none", st.API, err)
	}
	// Said in the status (it was only a WARN in the daemon's log) ...
	if want := "the API address " + held.Addr().String() + " of the daemon before this one (which was killed) is not served: "; len(st.Warnings) != 1 || !strings.HasPrefix(st.Warnings[0], want) {
		t.Fatalf("status warnings %q, want one starting %q", st.Warnings, want)
	}
	// ... and kept for the next restore (it was recorded without it,
	// forgotten for good).
	if f, ok := s.Home.LastFlags(); !ok || f.APIAddr != held.Addr().String() {
		t.Fatalf("recorded flags %+v, want apiAddr %s", f, held.Addr())
	}
}
