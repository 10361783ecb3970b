package ui

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/mattn/go-runewidth"
)

// fakeDaemon records what the UI asks of the daemon.
type fakeDaemon struct {
	mu       sync.Mutex
	st       api.Status
	started  []api.StartRequest
	stopped  []string
	restarts []string
	logs     []string
}

func (d *fakeDaemon) Status(context.Context, string) (*api.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.st
	st.Forwards = slices.Clone(d.st.Forwards)
	return &st, nil
}

func (d *fakeDaemon) Start(_ context.Context, req api.StartRequest) (*api.Forward, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.started = append(d.started, req)
	name := strings.TrimPrefix(req.Target, "svc/")
	if len(d.started) > 1 {
		name += "-2"
	}
	f := api.Forward{Name: name, Origin: req.Origin, Namespace: req.Namespace, Target: req.Target, Ports: req.Ports, State: "starting", Health: "-"}
	d.st.Forwards = append(d.st.Forwards, f)
	return &f, nil
}

func (d *fakeDaemon) Stop(_ context.Context, name, file string) (*api.Forward, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = append(d.stopped, file+"|"+name)
	d.st.Forwards = slices.DeleteFunc(d.st.Forwards, func(f api.Forward) bool { return f.Name == name && f.File == file })
	return &api.Forward{Name: name}, nil
}

func (d *fakeDaemon) RestartForward(_ context.Context, name, file string) ([]api.Picked, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.restarts = append(d.restarts, file+"|"+name)
	return []api.Picked{{File: file, Names: []string{name}}}, nil
}

func (d *fakeDaemon) Doctor(_ context.Context, name, _ string) (*api.DoctorResult, error) {
	return &api.DoctorResult{Forward: name, Checks: []api.Check{{Step: "target", Status: "fail", Summary: "no pod of svc/" + name + " is ready", Fix: "kubectl get pods"}}}, nil
}

func (d *fakeDaemon) Logs(context.Context, string, string, int) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.logs), nil
}

func (d *fakeDaemon) HTTPLog(context.Context, string, string, int) ([]string, error) {
	return []string{`{"time":"2026-01-02T03:04:05Z","kind":"request","method":"GET","path":"/healthz","status":200,"responseBytes":2048,"durationSeconds":0.0031,"pod":"web-1"}`, `a line kpf did not write`}, nil
}

func (d *fakeDaemon) Events(ctx context.Context, _ bool, _ func(api.Event) error) error {
	<-ctx.Done()
	return ctx.Err()
}

type fakeCluster struct {
	mu         sync.Mutex
	namespaced []string // ForwardNamespace's calls: context/namespace
	forbidNS   bool     // listing namespaces is forbidden
	kindNS     string   // the kind context's namespace
}

func (c *fakeCluster) Contexts() ([]Context, error) {
	return []Context{{Name: "prod", Cluster: "big", User: "ann"}, {Name: "kind", Cluster: "kind", User: "kind-admin", Current: true, Namespace: c.kindNS}}, nil
}

func (c *fakeCluster) Namespaces(_ context.Context, kctx string) ([]string, error) {
	if c.forbidNS {
		return nil, fmt.Errorf("%w: namespaces is forbidden", ErrForbidden)
	}
	if kctx == "prod" {
		return []string{"payments"}, nil
	}
	return []string{"shop", "default", "kube-system"}, nil
}

func (c *fakeCluster) Targets(_ context.Context, _, ns string) ([]Target, error) {
	if ns != "shop" {
		return nil, errors.New("namespace " + ns + " is empty")
	}
	return []Target{
		{Kind: "svc", Name: "web", Ports: []Port{{Port: 80, Name: "http", Protocol: "TCP", To: "8080"}, {Port: 53, Name: "dns", Protocol: "UDP"}}},
		{Kind: "svc", Name: "db", Ports: []Port{{Port: 5432, Protocol: "TCP"}}},
		{Kind: "deployment", Name: "web", Ready: "1/1 ready", Ports: []Port{{Port: 8080, Protocol: "TCP"}}},
		{Kind: "pod", Name: "job-x"},
	}, nil
}

func (c *fakeCluster) ForwardNamespace(_ context.Context, kctx, ns string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.namespaced = append(c.namespaced, kctx+"/"+ns)
	return "/home/me/.kpf/all/" + ns + ".yaml", nil
}

type rig struct {
	t    *testing.T
	m    *Model
	d    *fakeDaemon
	c    *fakeCluster
	busy map[int]bool // local ports in use
}

func newRig(t *testing.T, o Options) *rig { return newRigOn(t, o, &fakeCluster{}) }

func newRigOn(t *testing.T, o Options, c *fakeCluster) *rig {
	r := &rig{t: t, d: &fakeDaemon{st: api.Status{SchemaVersion: api.SchemaVersion, PID: 42}}, c: c}
	o.Daemon, o.Cluster, o.Session, o.NoColor = r.d, r.c, "ui-session", true
	o.FreePort = func(protocol string, remote int) int { return 40000 + remote }
	r.busy = map[int]bool{}
	o.PortFree = func(protocol string, port int) error {
		if r.busy[port] {
			return fmt.Errorf("listen tcp 127.0.0.1:%d: bind: address already in use", port)
		}
		return nil
	}
	if o.WriteFile == nil {
		written := map[string][]byte{}
		o.WriteFile = func(p string, b []byte, overwrite bool) error {
			if _, ok := written[p]; ok && !overwrite {
				return fmt.Errorf("%s: %w", p, ErrExists)
			}
			written[p] = b
			return nil
		}
	}
	r.m = New(o)
	r.m.every = 0
	r.run(r.m.Init())
	r.update(tea.WindowSizeMsg{Width: 80, Height: 24})
	return r
}

// run runs cmd and what its messages lead to, as Bubble Tea would, but
// not the ticks of a followed log.
func (r *rig) run(cmd tea.Cmd) {
	if cmd == nil {
		return
	}
	switch msg := cmd().(type) {
	case tea.BatchMsg:
		for _, c := range msg {
			r.run(c)
		}
	case tickMsg, nil:
	default:
		r.update(msg)
	}
}

func (r *rig) update(msg tea.Msg) {
	_, cmd := r.m.Update(msg)
	r.run(cmd)
}

// keys presses keys: names (enter, tab, esc, up, down, backspace) or runes.
func (r *rig) keys(keys ...string) {
	for _, k := range keys {
		var msg tea.KeyMsg
		switch k {
		case "enter":
			msg.Type = tea.KeyEnter
		case "tab":
			msg.Type = tea.KeyTab
		case "esc":
			msg.Type = tea.KeyEsc
		case "up":
			msg.Type = tea.KeyUp
		case "down":
			msg.Type = tea.KeyDown
		case "backspace":
			msg.Type = tea.KeyBackspace
		case "left":
			msg.Type = tea.KeyLeft
		case "right":
			msg.Type = tea.KeyRight
		case "space":
			msg.Type = tea.KeySpace
		case "pgup":
			msg.Type = tea.KeyPgUp
		default:
			msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		r.update(msg)
	}
}

func (r *rig) screenHas(want ...string) {
	r.t.Helper()
	v := r.m.View()
	for _, w := range want {
		if !strings.Contains(v, w) {
			r.t.Fatalf("the screen has no %q:\n%s", w, v)
		}
	}
}

func TestNavigateFilterAndForward(t *testing.T) {
	r := newRig(t, Options{})
	r.screenHas("kind > namespaces", "> default", "context kind · user kind-admin on kind · daemon pid 42")
	r.keys("/sh", "enter") // typed in one read: a filter, not a key named "/sh"
	r.screenHas("> shop")
	r.keys("enter")
	r.screenHas("kind > shop > targets", "> svc/web", "80/TCP (http) -> 8080", "53/UDP (dns)", "1/1 ready", "pod/job-x  (no declared port)")
	r.keys("/", "db", "enter", "enter")
	r.screenHas("svc/db:5432/TCP local port: 45432_ [tab] kept when kpf ui exits")
	r.keys("backspace", "backspace", "backspace", "backspace", "backspace", "x", "9", "0", "0", "0") // x: not a digit
	r.keys("enter")
	if len(r.d.started) != 1 {
		t.Fatalf("started %v", r.d.started)
	}
	got := r.d.started[0]
	if got.Target != "svc/db" || got.Namespace != "shop" || !slices.Equal(got.Ports, []string{"9000:5432"}) || got.Origin != Origin || got.Session != "" || !got.HTTPLog {
		t.Fatalf("the start request: %+v", got)
	}
	r.screenHas("started db (kept when kpf ui exits): 9000:5432")

	// Tied to the session, and a UDP port.
	r.keys("esc", "/", "dns", "enter", "enter", "tab")
	r.screenHas("[tab] stops when kpf ui exits")
	r.keys("enter")
	if got := r.d.started[1]; got.Session != "ui-session" || !slices.Equal(got.Ports, []string{"40053:53/udp"}) {
		t.Fatalf("the tied start request: %+v", got)
	}
	r.keys("tab")
	r.screenHas("NAME", "db", "kept", "web-2", "with ui")

	// A bad port says so and starts nothing.
	r.keys("tab", "enter", "backspace", "backspace", "backspace", "backspace", "backspace", "enter")
	r.screenHas(`local port "": want a number from 1 to 65535`)
	if len(r.d.started) != 2 {
		t.Fatalf("started %d", len(r.d.started))
	}
}

func TestForwardAllPortsAndNamespace(t *testing.T) {
	r := newRig(t, Options{Namespace: "shop"})
	r.screenHas("kind > shop > targets")
	r.keys("a")
	if len(r.d.started) != 1 || !slices.Equal(r.d.started[0].Ports, []string{"40080:80", "40053:53/udp"}) {
		t.Fatalf("a: %+v", r.d.started)
	}
	r.keys("/job", "enter", "a")
	r.screenHas("pod/job-x declares no port: forward it with kpf forward -n shop pod/job-x PORT")

	// Back to the contexts, into another one, A on its namespace.
	r.keys("esc", "esc", "esc")
	r.screenHas("contexts (enter", "kind (current)")
	r.keys("/prod", "enter", "enter")
	r.screenHas("prod > namespaces", "> payments", "context prod · user ann on big")
	r.update(tea.WindowSizeMsg{Width: 200, Height: 50})
	r.keys("A")
	if !slices.Equal(r.c.namespaced, []string{"prod/payments"}) {
		t.Fatalf("A: %v", r.c.namespaced)
	}
	r.screenHas("forwarding every service of payments, kept in step (kpf down -f /home/me/.kpf/all/payments.yaml stops it)")
}

func TestForwardsScreen(t *testing.T) {
	r := newRig(t, Options{})
	r.d.st.Forwards = []api.Forward{
		{Name: "web", File: "/src/kpf.yaml", Namespace: "shop", Target: "svc/web", Ports: []string{"8080:80"}, Local: []string{"127.0.0.1:8080"}, State: "ready", Health: "healthy", Pod: "web-1", RateIn: 2048},
		{Name: "db", Origin: Origin, Namespace: "shop", Target: "svc/db", Ports: []string{"5432"}, State: "waiting for pod", Health: "-", LastError: "no pod of svc/db is ready"},
	}
	r.keys("tab")
	r.screenHas("web", "ready", "127.0.0.1:8080", "file", "web: 127.0.0.1:8080 -> shop/svc/web (8080:80) pod web-1  health healthy")
	// Rates come once a second: the sparkline grows.
	for _, n := range []int64{0, 1000, 4000} {
		st := r.d.st
		st.Forwards = slices.Clone(st.Forwards)
		st.Forwards[0].RateIn = n
		r.update(EventMsg{Type: api.EventCounters, Status: &st})
	}
	r.screenHas("3.9K/s", "▁▃█ file")
	r.keys("down")
	r.screenHas("last error: no pod of svc/db is ready", "kept")
	r.keys("r")
	if !slices.Equal(r.d.restarts, []string{"|db"}) {
		t.Fatalf("r: %v", r.d.restarts)
	}
	r.keys("d")
	r.screenHas("doctor db", "[fail] target: no pod of svc/db is ready", "fix: kubectl get pods")
	r.keys("esc")
	r.d.logs = []string{"line 1"}
	r.keys("l")
	r.screenHas("log of db", "line 1", "F: follow (on)")
	r.d.logs = append(r.d.logs, "line 2")
	r.update(tickMsg{gen: r.m.textGen}) // a second later
	r.screenHas("line 2")
	r.keys("F")
	r.screenHas("F: follow (off)")
	r.keys("esc", "h")
	r.screenHas("HTTP log of db", " GET /healthz 200  0B in, 2.0K out, 3ms  web-1", "a line kpf did not write")
	r.keys("esc", "up", "s")
	if !slices.Equal(r.d.stopped, []string{"/src/kpf.yaml|web"}) {
		t.Fatalf("s: %v", r.d.stopped)
	}
	r.screenHas("stopped web")
	r.update(EventMsg{Type: api.EventRemoved, Forward: "web"})
	if n := len(r.m.forwards()); n != 1 {
		t.Fatalf("after an event, %d forwards", n)
	}

	r.keys("w")
	r.screenHas("write the set to: kpf.yaml_")
	r.keys("enter")
	r.screenHas("kpf.yaml: kpf up -f kpf.yaml runs it")
}

// Every line fits the screen, at any size, with colour or without.
func TestViewSizesAndColour(t *testing.T) {
	for _, noColor := range []bool{true, false} {
		r := newRig(t, Options{Namespace: "shop"})
		r.m.o.NoColor = noColor
		r.d.st.Forwards = []api.Forward{{Name: "a-very-long-forward-name", Target: "svc/web", Local: []string{"[::1]:8080"}, State: "reconnecting", LastError: strings.Repeat("x", 300)}}
		r.run(r.m.refresh())
		for _, size := range [][2]int{{80, 24}, {200, 50}, {40, 10}, {20, 6}, {20, 5}, {19, 24}, {5, 2}, {0, 0}} {
			r.update(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
			for _, k := range []string{"", "tab", "?", "x", "tab"} {
				if k != "" {
					r.keys(k)
				}
				v := r.m.View()
				lines := strings.Split(v, "\n")
				if size[1] == 0 {
					lines = nil // strings.Split("") is one empty line
				}
				if len(lines) != size[1] {
					t.Fatalf("%dx%d after %q: %d lines", size[0], size[1], k, len(lines))
				}
				for _, l := range lines {
					if w := runewidth.StringWidth(stripANSI(l)); w > size[0] {
						t.Fatalf("%dx%d after %q: a line of %d cells: %q", size[0], size[1], k, w, l)
					}
				}
				if size[0] < MinWidth || size[1] < MinHeight {
					if size[1] > 0 && !strings.HasPrefix(v, cut("terminal too small (need 20×6)", size[0])) {
						t.Fatalf("%dx%d: %q", size[0], size[1], v)
					}
					continue
				}
				if hasESC := strings.Contains(v, "\x1b["); hasESC == noColor {
					t.Fatalf("NoColor %v, escapes in the view: %v", noColor, hasESC)
				}
			}
		}
	}
}

func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b {
			for i < len(s) && s[i] != 'm' {
				i++
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// The help names the CLI command of every action that has one, whole,
// at 80x24.
func TestHelp(t *testing.T) {
	r := newRig(t, Options{})
	r.keys("?")
	for _, h := range Help {
		if len(h[1]) > 33 || 5+1+33+1+len(h[2]) > 80 {
			t.Errorf("help %q does not fit 80 columns", h)
		}
		r.screenHas(h[1] + strings.Repeat(" ", 34-len(h[1])) + h[2])
	}
	r.keys("x")
	r.screenHas("> default")
	_, cmd := r.m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	if _, ok := cmd().(tea.QuitMsg); !ok {
		t.Fatal("q does not quit")
	}
}

// w never replaces an existing file unasked: it asks, y replaces it
// (atomically), any other key leaves it as it was.
func TestWriteAsksBeforeOverwriting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpf.yaml")
	mine := []byte("# my own, written by hand\n")
	if err := os.WriteFile(path, mine, 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, Options{Namespace: "shop", WriteFile: WriteSet})
	r.update(tea.WindowSizeMsg{Width: 200, Height: 24})
	r.keys("enter", "enter", "tab", "w")
	for range len("kpf.yaml") {
		r.keys("backspace")
	}
	r.keys(path, "enter")
	r.screenHas(path + " exists: overwrite? y/N _")
	r.keys("n")
	r.screenHas("not written: " + path + " is left as it was")
	if b, _ := os.ReadFile(path); string(b) != string(mine) {
		t.Fatalf("the file was replaced: %q", b)
	}
	r.keys("w")
	for range len("kpf.yaml") {
		r.keys("backspace")
	}
	r.keys(path, "enter", "y")
	r.screenHas("wrote " + path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(path, b); err != nil || !strings.Contains(string(b), "svc/web") {
		t.Fatalf("the set written: %v\n%s", err, b)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestWriteSet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "set.yaml")
	if err := WriteSet(path, []byte("one"), false); err != nil {
		t.Fatal(err)
	}
	err := WriteSet(path, []byte("two"), false)
	if !errors.Is(err, ErrExists) || err.Error() != path+": the file exists" {
		t.Fatalf("a second write without overwrite: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Fatalf("after a refused write: %q", b)
	}
	if err := WriteSet(path, []byte("three"), true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "three" {
		t.Fatalf("after an overwrite: %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// Pasted text is text in the filter and the prompts, and runs nothing
// anywhere else.
func TestPasteIsNeverKeys(t *testing.T) {
	paste := func(r *rig, s string) { r.update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s), Paste: true}) }
	r := newRig(t, Options{Namespace: "shop"})
	r.d.st.Forwards = []api.Forward{{Name: "web", Target: "svc/web", Ports: []string{"8080:80"}, State: "ready"}}
	r.run(r.m.refresh())
	r.keys("tab")
	paste(r, "sq") // s would stop the forward, q quit
	r.keys("w")
	paste(r, "\nx") // in the prompt: text, its line break left out
	r.screenHas("write the set to: kpf.yamlx_")
	r.keys("esc", "tab")
	paste(r, "/db\n") // outside the filter: ignored
	if r.m.filtering || r.m.filter != "" || r.m.prompt != nil || len(r.d.stopped) != 0 || len(r.d.started) != 0 {
		t.Fatalf("a paste ran as keys: filtering %v filter %q prompt %+v stopped %v started %v", r.m.filtering, r.m.filter, r.m.prompt, r.d.stopped, r.d.started)
	}
	r.keys("/")
	paste(r, "db\r\n")
	r.screenHas("/db_", "> svc/db")
	r.keys("enter", "enter")
	paste(r, "x1")
	r.screenHas("svc/db:5432/TCP local port: 45432_")
	paste(r, "9")
	r.screenHas("local port: 454329_")
}

// A user who may not list namespaces gets the context's own namespace,
// told why and how to open another; n opens one by its name.
func TestNamespacesForbidden(t *testing.T) {
	r := newRigOn(t, Options{}, &fakeCluster{forbidNS: true, kindNS: "shop"})
	r.update(tea.WindowSizeMsg{Width: 120, Height: 24})
	r.screenHas("kind > shop > targets", "> svc/web", "you may not list namespaces: this is shop, the context's own (n or kpf ui -n NAMESPACE opens another)")
	r.keys("n")
	r.screenHas("open the namespace: _  enter: open  esc: cancel")
	r.keys("enter")
	r.screenHas("no namespace: type its name", "open the namespace: _  enter: open  esc: cancel")
	r.keys("default", "enter")
	r.screenHas("kind > default > targets", "namespace default is empty")
	r.keys("esc") // not back to a list that cannot be had
	r.screenHas("contexts (enter: its namespaces)", "  kind (current)")

	r = newRigOn(t, Options{}, &fakeCluster{forbidNS: true})
	r.screenHas("kind > default > targets")
}

// A with no namespace shown (a filter hides them all) forwards nothing,
// not the namespace opened before.
func TestForwardNamespaceNeedsARow(t *testing.T) {
	r := newRig(t, Options{Namespace: "shop"})
	r.keys("esc", "/", "zzz", "enter", "A")
	r.screenHas("no namespace is selected: A forwards the selected one (esc clears the filter)")
	if len(r.c.namespaced) != 0 {
		t.Fatalf("A forwarded %v", r.c.namespaced)
	}
}

// The port prompt refuses a port that is not one or is in use, saying
// why, whole, and stays open for another (a free one offered).
func TestPortPromptRefuses(t *testing.T) {
	r := newRig(t, Options{Namespace: "shop"})
	r.keys("enter") // svc/web 80: 40080 offered
	for _, c := range []struct{ typed, want string }{{"0", `local port "0": want a number from 1 to 65535`}, {"65536", `local port "65536": want a number from 1 to 65535`}, {"", `local port "": want a number from 1 to 65535`}} {
		for range 6 {
			r.keys("backspace")
		}
		r.keys(c.typed, "enter")
		r.screenHas(c.want, "local port: "+c.typed+"_")
		if len(r.d.started) != 0 {
			t.Fatalf("%q started %+v", c.typed, r.d.started)
		}
	}
	r.busy[8080] = true
	r.keys("8080", "enter")
	// The reason is whole, on lines of its own, at 80 columns.
	r.screenHas("local port 8080: listen tcp 127.0.0.1:8080: bind: address already in use; 40000", "is free (enter takes it)", "local port: 40000_")
	if len(r.d.started) != 0 {
		t.Fatalf("a port in use started %+v", r.d.started)
	}
	r.keys("enter")
	// As kpf forward NS svc/web 40000:80 does: on localhost.
	if len(r.d.started) != 1 || r.d.started[0].Ports[0] != "40000:80" || r.d.started[0].Address != "localhost" {
		t.Fatalf("started %+v", r.d.started)
	}
	r.screenHas("started web")
	// Taken after the prompt checked it: the daemon's failure is shown.
	r.d.mu.Lock()
	r.d.st.Forwards[0].State, r.d.st.Forwards[0].LastError = "failed", "listen tcp 127.0.0.1:40000: bind: address already in use"
	r.d.mu.Unlock()
	r.run(r.m.refresh())
	r.screenHas("web failed: listen tcp 127.0.0.1:40000: bind: address already in use")
}

// When the daemon's stream breaks, the forwards it listed are no longer
// shown as ready; when it is back, so are they, and the message goes.
func TestDaemonDown(t *testing.T) {
	r := newRig(t, Options{})
	r.d.st.Forwards = []api.Forward{{Name: "web", Target: "svc/web", Ports: []string{"8080:80"}, Local: []string{"127.0.0.1:8080"}, State: "ready", Health: "ok", RateIn: 2048}}
	r.run(r.m.refresh())
	r.keys("tab")
	r.screenHas("web           ready", "2.0K/s")
	r.update(DaemonDownMsg{Err: errors.New("unexpected EOF")})
	r.screenHas("web           unknown", "the kpf daemon is down (its event stream: unexpected EOF): reconnecting", "daemon not answering")
	if v := r.m.View(); strings.Contains(v, "ready") || strings.Contains(v, "2.0K/s") {
		t.Fatalf("the daemon is down, the screen still says:\n%s", v)
	}
	r.update(EventMsg(api.Event{Type: api.EventCounters, Status: &api.Status{PID: 43, Forwards: r.d.st.Forwards}}))
	r.screenHas("web           ready", "the kpf daemon answers again", "daemon pid 43")
	if strings.Contains(r.m.View(), "reconnecting") {
		t.Fatal("the reconnecting message stays once the stream is back")
	}
}

// A filter longer than the screen shows its end, where typing goes.
func TestLongFilterShowsItsEnd(t *testing.T) {
	r := newRig(t, Options{})
	r.keys("/", strings.Repeat("a", 100)+"xyz")
	r.screenHas("aaaxyz_\n")
	if !strings.Contains(r.m.View(), "\n…aaa") {
		t.Fatalf("the filter's start is cut, not its end:\n%s", r.m.View())
	}
}

// Why a namespace lists nothing stays in the list, whatever the message
// line says next.
func TestTargetsErrorStays(t *testing.T) {
	r := newRig(t, Options{Namespace: "nosuchns"})
	r.m.say("something else")
	r.screenHas("kind > nosuchns > targets", "\n  namespace nosuchns is empty")
}

// The keys the help lists as aliases do what it says.
func TestHelpAliases(t *testing.T) {
	r := newRig(t, Options{})
	r.update(tea.WindowSizeMsg{Width: 80, Height: 7}) // a page of 3 rows
	r.keys("G")
	r.screenHas("> shop")
	r.keys("g")
	r.screenHas("> default")
	r.keys("j", "j", "k")
	r.screenHas("> kube-system")
	r.keys("right") // as enter
	r.screenHas("kind > kube-system > targets")
	r.keys("left") // as esc
	r.screenHas("kind > namespaces")
	r.keys("f")
	r.screenHas("[forwards]")
	r.keys("t")
	r.screenHas("[targets]")
	r.keys("tab", "backspace")
	r.screenHas("[targets]")
	r.keys("tab", "left")
	r.screenHas("[targets]")
	r.update(tea.WindowSizeMsg{Width: 80, Height: 24})
	r.keys("/", "shop", "enter", "enter")
	r.update(tea.WindowSizeMsg{Width: 80, Height: 7})
	r.keys("space") // a page of 3 rows down
	r.screenHas("> deployment/web")
	r.keys("pgup")
	r.screenHas("> svc/web")
}

func TestSetFile(t *testing.T) {
	fws := []api.Forward{
		{Name: "web", Context: "kind", Namespace: "shop", Target: "svc/web", Ports: []string{"8080:80", "9053:53/udp"}, Addresses: []string{"127.0.0.1"}},
		{Name: "web.shop:80", Namespace: "shop", Target: "svc/web", Ports: []string{"8081:80"}, Addresses: []string{"localhost"}},
		{Name: "socks", Kind: api.KindProxy, Target: "proxy"},
	}
	b, err := SetFile("kpf.yaml", fws)
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse("kpf.yaml", b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if got := f.Names(); !slices.Equal(got, []string{"web", "web-shop-80"}) {
		t.Fatalf("names %v\n%s", got, b)
	}
	w := f.Forwards[0]
	if w.Context != "kind" || w.Namespace != "shop" || w.Target != "svc/web" || len(w.Ports) != 2 || w.Ports[1].String() != "9053:53/udp" || !slices.Equal(w.Addresses, []string{"127.0.0.1"}) {
		t.Fatalf("web: %+v", w)
	}
	if _, err := SetFile("kpf.yaml", fws[2:]); err == nil || err.Error() != "no forwards to write to kpf.yaml: start one first (Enter on a port in the targets screen)" {
		t.Fatalf("an empty set: %v", err)
	}
	// Two forwards on one port: kpf up would refuse it, so does w.
	clash := []api.Forward{fws[0], {Name: "web", Target: "svc/api", Ports: []string{"8080:80"}, Addresses: []string{"127.0.0.1"}}}
	if _, err := SetFile("kpf.yaml", clash); err == nil || !strings.HasPrefix(err.Error(), "the set would not be a valid kpf.yaml: ") {
		t.Fatalf("a clash: %v", err)
	}
}

func TestSparklineAndRate(t *testing.T) {
	for _, c := range []struct {
		vals []int64
		w    int
		want string
	}{
		{nil, 3, "   "},
		{[]int64{0, 0}, 2, "▁▁"},
		{[]int64{0, 50, 100}, 4, " ▁▅█"},
		{[]int64{1, 2, 3, 4}, 2, "▆█"},
	} {
		if got := sparkline(c.vals, c.w); got != c.want {
			t.Errorf("sparkline(%v, %d) = %q, want %q", c.vals, c.w, got, c.want)
		}
	}
	for n, want := range map[int64]string{0: "0B/s", 1023: "1023B/s", 1536: "1.5K/s", 3 << 20: "3.0M/s"} {
		if got := rate(n); got != want {
			t.Errorf("rate(%d) = %q, want %q", n, got, want)
		}
	}
}

// The suggested port is the remote one when it is free and not a
// privileged one, else another free one.
func TestFreeLocalPort(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busy := l.Addr().(*net.TCPAddr).Port
	if got := FreeLocalPort("TCP", busy); got == busy || got == 0 {
		t.Errorf("FreeLocalPort(TCP, %d held) = %d", busy, got)
	}
	l.Close()
	if got := FreeLocalPort("TCP", busy); got != busy {
		t.Errorf("FreeLocalPort(TCP, %d free) = %d", busy, got)
	}
	if got := FreeLocalPort("UDP", 53); got < 1024 {
		t.Errorf("FreeLocalPort(UDP, 53) = %d: a privileged port", got)
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := PortInUse("TCP", port); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("PortInUse(TCP, %d held) = %v", port, err)
	}
	l.Close()
	if err := PortInUse("TCP", port); err != nil {
		t.Errorf("PortInUse(TCP, %d free) = %v", port, err)
	}
}

// Whatever is typed, the UI neither panics nor draws past the screen.
func FuzzKeys(f *testing.F) {
	f.Add("/shenter\tenter\x7fa", uint8(80), uint8(24))
	f.Add("\x1b\x1b\x1bAq?x", uint8(20), uint8(6))
	f.Add("\tdownsrdlhFw\x7f\x7f\n", uint8(200), uint8(50))
	f.Fuzz(func(t *testing.T, typed string, w, h uint8) {
		r := newRig(t, Options{})
		r.d.st.Forwards = []api.Forward{{Name: "web", Target: "svc/web", Ports: []string{"8080:80"}, Local: []string{"127.0.0.1:8080"}, State: "ready"}}
		r.update(tea.WindowSizeMsg{Width: int(w), Height: int(h)})
		for _, c := range typed {
			var msg tea.KeyMsg
			switch c {
			case '\n':
				msg.Type = tea.KeyEnter
			case '\t':
				msg.Type = tea.KeyTab
			case 0x1b:
				msg.Type = tea.KeyEsc
			case 0x7f:
				msg.Type = tea.KeyBackspace
			case 'q', 0x03:
				continue // quitting ends the run
			default:
				msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{c}}
			}
			_, cmd := r.m.Update(msg)
			if cmd != nil {
				if _, ok := cmd().(tea.QuitMsg); ok {
					continue
				}
				r.run(cmd)
			}
		}
		width, height := int(w), int(h)
		lines := strings.Split(r.m.View(), "\n")
		if height == 0 {
			lines = nil // strings.Split("") is one empty line
		}
		if len(lines) != height {
			t.Fatalf("%d lines on a screen of %d", len(lines), height)
		}
		for _, l := range lines {
			if n := runewidth.StringWidth(stripANSI(l)); n > width {
				t.Fatalf("a line of %d cells on a screen of %d: %q", n, width, l)
			}
		}
	})
}
