package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/testnet"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// opened records what the daemon asked to open: which identity and
// session spec each forward of each file got. The sessions themselves
// never open (no cluster): forwards wait until stopped.
type opened struct {
	mu    sync.Mutex
	byFwd map[string]openCall // "file#name"
}

type openCall struct {
	id identity.Identity
	sp session.Spec
}

func (o *opened) opener(_ string, id identity.Identity, log *slog.Logger) manager.Opener {
	return func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
		o.mu.Lock()
		o.byFwd[fw.Name+"@"+id.Get("context")] = openCall{id, sp}
		o.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
}

func (o *opened) get(key string) (openCall, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c, ok := o.byFwd[key]
	return c, ok
}

// start runs a daemon in a home of the test's; it stops with the test.
func start(t *testing.T) (*Client, *opened, string) {
	t.Helper()
	o := &opened{byFwd: map[string]openCall{}}
	s := &Server{Log: discard, Opener: o.opener, Describe: describeByContext}
	return serve(t, s), o, t.TempDir()
}

// describeByContext names a context's cluster and user after it.
func describeByContext(id identity.Identity, ctx string) (string, string, string) {
	if ctx == "" {
		ctx = id.Get("context")
	}
	return ctx, "cluster-" + ctx, id.Get("user")
}

// serve runs s in a home of the test's until the test ends, and returns
// its client once it answers.
func serve(t *testing.T, s *Server) *Client {
	t.Helper()
	// Short: a unix socket path has a length limit (104 bytes on macOS).
	home, err := os.MkdirTemp("", "kpfd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	s.Home = Home(home)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := NewClient(Home(home))
	waitRunning(t, c, done)
	return c
}

// waitRunning waits until the daemon behind c answers, failing the test
// if it ends first.
func waitRunning(t *testing.T, c *Client, done <-chan error) {
	t.Helper()
	for !c.Running() {
		select {
		case err := <-done:
			t.Fatalf("daemon ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func as(ctx, user string) identity.Identity {
	return identity.Identity{Flags: map[string][]string{"context": {ctx}, "user": {user}}, Env: []string{"AWS_PROFILE=" + user}}
}

const fileA = `forwards:
  - {name: api, target: svc/api, ports: ["18080:80"]}
  - {name: db, target: sts/db, ports: ["15432:5432"]}
`
const fileB = `forwards:
  - {name: api, target: svc/api, ports: ["18081:80"]}
`

// Two files, applied by two commands as two identities, run side by
// side, each as its own identity; a file applied again as another
// identity restarts as that one; down -f stops one file only.
func TestFilesRunSideBySideAsTheirIdentities(t *testing.T) {
	c, o, dir := start(t)
	ctx := context.Background()
	a := writeFile(t, dir, "a.yaml", fileA)
	b := writeFile(t, dir, "b.yaml", fileB)
	settingsB := spec.Defaults()
	settingsB.Transport = "spdy"
	settingsB.ReconnectWait = 2 * time.Second
	if _, err := c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("staging", "admin"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}
	res, err := c.Apply(ctx, api.ApplyRequest{File: b, Identity: as("prod", "viewer"), Settings: settingsB})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Started, []string{"api"}) || len(res.Stopped) != 0 {
		t.Fatalf("applying b: %+v (a's forwards must keep running)", res)
	}
	testnet.WaitFor(t, func() bool {
		_, ok1 := o.get("api@staging")
		_, ok2 := o.get("api@prod")
		_, ok3 := o.get("db@staging")
		return ok1 && ok2 && ok3
	})
	pa, _ := o.get("api@staging")
	pb, _ := o.get("api@prod")
	if pa.id.Get("user") != "admin" || pb.id.Get("user") != "viewer" || pb.id.Env[0] != "AWS_PROFILE=viewer" {
		t.Fatalf("identities: a %+v, b %+v", pa.id, pb.id)
	}
	if pb.sp.Transport != "spdy" || pb.sp.ReconnectWait != 2*time.Second || pa.sp.Transport != "auto" {
		t.Fatalf("settings: a %+v, b %+v", pa.sp, pb.sp)
	}
	st, err := c.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Files, []string{a, b}) || len(st.Forwards) != 3 {
		t.Fatalf("status: files %v, %d forwards", st.Files, len(st.Forwards))
	}
	for _, r := range st.Forwards {
		want := map[string][2]string{a: {"staging", "admin"}, b: {"prod", "viewer"}}[r.File]
		if r.Context != want[0] || r.User != want[1] || r.Cluster != "cluster-"+want[0] {
			t.Fatalf("row %+v: want context %s user %s", r, want[0], want[1])
		}
	}
	// The name api is in both files: down must be told which.
	if _, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"api"}}); err == nil || !strings.Contains(err.Error(), `forward "api" runs from 2 files`) {
		t.Fatalf("ambiguous down: %v", err)
	}
	stopped, exits, err := c.Down(ctx, api.NamesRequest{File: b})
	if err != nil || exits || len(stopped) != 1 || stopped[0].File != b || !slices.Equal(stopped[0].Names, []string{"api"}) {
		t.Fatalf("down -f b: %+v %v %v", stopped, exits, err)
	}
	if st, _ := c.Status(ctx, ""); !slices.Equal(st.Files, []string{a}) || len(st.Forwards) != 2 {
		t.Fatalf("after down -f b: %+v", st)
	}
	// Now unique: the name alone is enough.
	if stopped, _, err := c.Down(ctx, api.NamesRequest{Names: []string{"db"}}); err != nil || stopped[0].File != a {
		t.Fatalf("down db: %+v %v", stopped, err)
	}
	// Applied again as another identity: everything restarts as it.
	res, err = c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("staging", "dev"), Settings: spec.Defaults()})
	if err != nil || !slices.Equal(res.Restarted, []string{"api"}) || !slices.Equal(res.Started, []string{"db"}) {
		t.Fatalf("re-apply as dev: %+v %v", res, err)
	}
	testnet.WaitFor(t, func() bool { p, _ := o.get("api@staging"); return p.id.Get("user") == "dev" })
	// The last forward gone, the daemon says it exits.
	if _, exits, err := c.Down(ctx, api.NamesRequest{All: true}); err != nil || !exits {
		t.Fatalf("down --all: exits %v, %v", exits, err)
	}
}

// A local port held by another file's forward fails that forward, naming
// the other forward and its file.
func TestPortTakenByAnotherFile(t *testing.T) {
	c, _, dir := start(t)
	ctx := context.Background()
	a := writeFile(t, dir, "a.yaml", fileA)
	b := writeFile(t, dir, "b.yaml", "forwards:\n  - {name: other, target: svc/x, ports: [\"15432:5432\"]}\n")
	c.Apply(ctx, api.ApplyRequest{File: a, Identity: as("c", "u"), Settings: spec.Defaults()})
	res, err := c.Apply(ctx, api.ApplyRequest{File: b, Identity: as("c", "u"), Settings: spec.Defaults()})
	taken := fmt.Sprintf(`local port taken by another file's forward: local port 15432 on 127.0.0.1 is used by forward "db" of %s (stop it with: kpf down db -f %s)`, a, a)
	// Known as it is applied: the apply answer says so (kpf up -d said
	// "started: other" and exited 0).
	if err != nil || len(res.Failed) != 1 || res.Failed[0] != (api.Failure{Name: "other", Error: taken}) {
		t.Fatalf("apply b: %+v %v\nwant failed other: %s", res, err, taken)
	}
	_, err = c.Wait(ctx, b, 5*time.Second)
	if want := "other: failed: " + taken; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v\nwant %s", err, want)
	}
}

func TestBadRequestsAreNamed(t *testing.T) {
	c, _, dir := start(t)
	ctx := context.Background()
	bad := spec.Defaults()
	bad.ReconnectWait = 0
	f := writeFile(t, dir, "a.yaml", fileA)
	for _, tc := range []struct {
		req  api.ApplyRequest
		want string
	}{
		{api.ApplyRequest{File: "a.yaml", Settings: spec.Defaults()}, `file "a.yaml" is not an absolute path`},
		{api.ApplyRequest{File: f, Settings: bad}, "--reconnect-wait 0s: must be higher than zero"},
		{api.ApplyRequest{File: filepath.Join(dir, "none.yaml"), Settings: spec.Defaults()}, "no such file"},
		{api.ApplyRequest{File: f, Names: []string{"web"}, Settings: spec.Defaults()}, `no forward named "web"`},
	} {
		if _, err := c.Apply(ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("apply %+v: %v, want %q", tc.req, err, tc.want)
		}
	}
	if _, _, err := c.Down(ctx, api.NamesRequest{}); err == nil || !strings.Contains(err.Error(), "name the forwards, a file (-f FILE) or --all") {
		t.Errorf("down with nothing named: %v", err)
	}
	if _, _, err := c.Down(ctx, api.NamesRequest{File: f}); err == nil || !strings.Contains(err.Error(), "no forwards of "+f+" run (running: none)") {
		t.Errorf("down of a file not applied: %v", err)
	}
}

// Applies, restarts and status from many clients at once (run with
// -race); the daemon stays consistent.
func TestConcurrentApplyAndStatus(t *testing.T) {
	c, _, dir := start(t)
	ctx := context.Background()
	files := []string{writeFile(t, dir, "a.yaml", fileA), writeFile(t, dir, "b.yaml", fileB)}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 15 {
				f := files[(i+j)%2]
				var err error
				switch j % 3 {
				case 0:
					_, err = c.Apply(ctx, api.ApplyRequest{File: f, Identity: as("c", fmt.Sprint("u", i%2)), Settings: spec.Defaults()})
				case 1:
					_, err = c.Status(ctx, "")
				case 2:
					_, err = c.Restart(ctx, api.NamesRequest{File: f})
					if err != nil && strings.Contains(err.Error(), "no forwards of") {
						err = nil // not applied yet
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st, err := c.Status(ctx, "")
	if err != nil || len(st.Files) != 2 || len(st.Forwards) != 3 {
		t.Fatalf("status after the storm: %+v %v", st, err)
	}
}

// A daemon started with files (a user service) runs them at once, as the
// identity it was given.
func TestInitialFilesRunAtStart(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", fileA)
	home, _ := os.MkdirTemp("", "kpfd")
	defer os.RemoveAll(home)
	o := &opened{byFwd: map[string]openCall{}}
	s := &Server{Home: Home(home), Log: discard, Opener: o.opener,
		Initial: []api.ApplyRequest{{File: a, Identity: as("login", "me"), Settings: spec.Defaults()}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	testnet.WaitFor(t, func() bool { _, ok := o.get("db@login"); return ok })
	st, err := NewClient(Home(home)).Status(context.Background(), "")
	if err != nil || !slices.Equal(st.Files, []string{a}) || len(st.Forwards) != 2 {
		t.Fatalf("status %+v, %v", st, err)
	}
}
