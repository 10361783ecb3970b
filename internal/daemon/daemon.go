// Package daemon is kpf's per-user background process: it runs the
// forwards of many files side by side, each file with the identity and
// settings of the kpf up -d that applied it (one manager per file), and
// answers the CLI over a unix socket that only the user can open (the
// socket's folder is 0700 and every peer's uid is checked). The CLI never
// finds the daemon by process name: the socket is the only way in.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/metrics"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/supervise"
)

// SchemaVersion versions the JSON of status and the socket API. 2: many
// files (files, and each forward's file, cluster and user).
const SchemaVersion = 2

// Home is the daemon's folder: the socket, its pid and its log.
type Home string

// DefaultHome is $KPF_HOME, else the platform's place for it (on Linux
// kpf under $XDG_RUNTIME_DIR, else /tmp/kpf-UID; on macOS $TMPDIR/kpf-UID,
// which is the user's own; on Windows %LocalAppData%\\kpf). It is created
// readable by the user only.
func DefaultHome() Home {
	if h := os.Getenv("KPF_HOME"); h != "" {
		return Home(h)
	}
	return Home(defaultHome())
}

// Socket is the API socket's path.
func (h Home) Socket() string { return filepath.Join(string(h), "kpf.sock") }

// Log is the daemon's log file.
func (h Home) Log() string { return filepath.Join(string(h), "daemon.log") }

// AuditLog is the daemon's audit trail: a line per connection and per
// forward start, stop and pod switch (see package audit).
func (h Home) AuditLog() string { return filepath.Join(string(h), "audit.log") }

// Ensure creates the folder, readable by the user only.
func (h Home) Ensure() error {
	if err := os.MkdirAll(string(h), 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(string(h))
	if err != nil {
		return err
	}
	if !ownedByUser(fi) {
		return fmt.Errorf("%s belongs to another user: set KPF_HOME to a folder of yours", h)
	}
	return os.Chmod(string(h), 0o700)
}

// Status is what GET /v1/status answers.
type Status struct {
	SchemaVersion int           `json:"schemaVersion"`
	PID           int           `json:"pid"`
	Started       time.Time     `json:"started"`
	Files         []string      `json:"files"`
	Forwards      []manager.Row `json:"forwards"`
	Metrics       string        `json:"metrics,omitempty"` // the URL of its Prometheus metrics, if served
}

// ApplyRequest asks the daemon to run the forwards of a file as the
// identity and with the settings of the command that applied it.
type ApplyRequest struct {
	File     string            `json:"file"`  // absolute path: the file's key
	Names    []string          `json:"names"` // empty: all, and stop the ones gone from the file
	Identity identity.Identity `json:"identity"`
	Settings spec.Settings     `json:"settings"`
}

// ApplyResult says what changed.
type ApplyResult struct {
	Started   []string `json:"started"`
	Restarted []string `json:"restarted"`
	Unchanged []string `json:"unchanged"`
	Stopped   []string `json:"stopped"`
}

// NamesRequest picks forwards for down and restart: the named ones (of
// File, when given), every forward of File, or All.
type NamesRequest struct {
	Names []string `json:"names"`
	File  string   `json:"file,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// Picked says which forwards a NamesRequest picked, by file.
type Picked struct {
	File  string   `json:"file"`
	Names []string `json:"names"`
}

// OpenerFunc makes the opener of a file's sessions, connecting as id.
type OpenerFunc func(file string, id identity.Identity, log *slog.Logger) manager.Opener

// ProxyOpenerFunc makes the opener of a file's proxies, connecting as id.
type ProxyOpenerFunc func(file string, id identity.Identity, log *slog.Logger) manager.ProxyOpener

// DescribeFunc names the context, cluster and user that id, with a
// forward's own context ("" for the identity's), connects as.
type DescribeFunc func(id identity.Identity, context string) (ctx, cluster, user string)

// Server is the daemon.
type Server struct {
	Home   Home
	Log    *slog.Logger
	Opener OpenerFunc
	// ProxyOpener, if set, runs the proxies of files.
	ProxyOpener ProxyOpenerFunc
	// MetricsURL is where the daemon's metrics are served, for status.
	MetricsURL string
	Describe   DescribeFunc
	// Events receives every forward's state changes, as log lines.
	Events io.Writer
	// Initial are files to apply at start (a user service's files).
	Initial []ApplyRequest

	started time.Time
	ctx     context.Context
	quit    context.CancelFunc

	// opMu serialises what changes the set of forwards (apply, down,
	// restart); it is held while forwards start and stop. mu guards
	// files only, and is never held while waiting on a forward: a forward
	// that is opening takes it to look for port conflicts.
	opMu   sync.Mutex
	mu     sync.Mutex
	files  map[string]*fileRun
	events sync.Mutex
}

// fileRun is one applied file: its forwards run as its identity.
type fileRun struct {
	path     string
	id       identity.Identity
	settings spec.Settings
	m        *manager.Manager
	who      map[string][3]string // by forward context: context, cluster, user
}

// Serve answers the socket until the last forward is stopped with down, or
// ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Home.Ensure(); err != nil {
		return err
	}
	s.started = time.Now()
	s.files = map[string]*fileRun{}
	s.ctx, s.quit = context.WithCancel(ctx)
	defer s.quit()
	ln, err := listen(s.Home.Socket())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.Handler(), ConnContext: withConn}
	go func() { <-s.ctx.Done(); srv.Close() }()
	s.Log.Info("daemon listening", "socket", s.Home.Socket(), "pid", os.Getpid())
	for _, req := range s.Initial {
		if err := s.applyInitial(req); err != nil {
			s.Log.Error("apply", "file", req.File, "err", err)
		}
	}
	err = srv.Serve(ln)
	s.stopAll()
	os.Remove(s.Home.Socket())
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Metrics are every file's forwards, for the metrics endpoint.
func (s *Server) Metrics() []metrics.Forward {
	var out []metrics.Forward
	for _, r := range s.runs() {
		out = append(out, r.m.Metrics(r.path)...)
	}
	return out
}

// Handler is the daemon's API, behind the same-user check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/apply", s.apply)
	mux.HandleFunc("POST /v1/down", s.down)
	mux.HandleFunc("POST /v1/restart", s.restart)
	mux.HandleFunc("POST /v1/wait", s.wait)
	return sameUser(mux)
}

// listen opens the socket, refusing to take over one a live daemon
// answers on.
func listen(sock string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("a kpf daemon already answers on %s", sock)
	}
	os.Remove(sock) // stale, from a daemon that died
	ln, err := listenUserOnly(sock)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// ErrOtherUser: a peer of another user reached the socket.
var ErrOtherUser = errors.New("forbidden: the kpf daemon serves its own user only")

// sameUser refuses peers of another uid, on top of the socket's 0600 mode
// and its folder's 0700.
func sameUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uc, ok := r.Context().Value(connKey{}).(*net.UnixConn)
		if !ok {
			http.Error(w, "not a unix socket peer", http.StatusForbidden)
			return
		}
		if err := checkPeer(uc); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// runs returns the applied files, sorted by path.
func (s *Server) runs() []*fileRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*fileRun, 0, len(s.files))
	for _, r := range s.files {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *fileRun) int { return strings.Compare(a.path, b.path) })
	return out
}

func (s *Server) run(path string) *fileRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[path]
}

func (s *Server) snapshot(only string) Status {
	st := Status{SchemaVersion: SchemaVersion, PID: os.Getpid(), Started: s.started, Files: []string{}, Forwards: []manager.Row{}, Metrics: s.MetricsURL}
	for _, r := range s.runs() {
		if only != "" && r.path != only {
			continue
		}
		st.Files = append(st.Files, r.path)
		for _, row := range r.m.Snapshot() {
			row.File = r.path
			w := r.who[row.Context]
			row.Context, row.Cluster, row.User = w[0], w[1], w[2]
			st.Forwards = append(st.Forwards, row)
		}
	}
	return st
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.snapshot(r.URL.Query().Get("file")))
}

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	var req ApplyRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !filepath.IsAbs(req.File) {
		http.Error(w, fmt.Sprintf("bad request: file %q is not an absolute path", req.File), http.StatusBadRequest)
		return
	}
	if err := req.Settings.Validate(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f, err := config.Load(req.File)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	fws, err := f.Select(req.Names)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	res := s.applyFile(req, fws)
	s.Log.Info("applied", "file", req.File, "started", res.Started, "restarted", res.Restarted, "unchanged", res.Unchanged, "stopped", res.Stopped)
	writeJSON(w, res)
}

// applyInitial applies a file the daemon was started with.
func (s *Server) applyInitial(req ApplyRequest) error {
	if err := req.Settings.Validate(); err != nil {
		return err
	}
	f, err := config.Load(req.File)
	if err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	res := s.applyFile(req, f.Forwards)
	s.Log.Info("applied", "file", req.File, "started", res.Started)
	return nil
}

// applyFile makes the file's running forwards match fws. A file applied
// again as the same identity with the same settings restarts only the
// forwards that changed; another identity or other settings restart all
// of them. s.opMu is held.
func (s *Server) applyFile(req ApplyRequest, fws []config.Forward) ApplyResult {
	var res ApplyResult
	prune := len(req.Names) == 0
	old := s.run(req.File)
	if old != nil && (!reflect.DeepEqual(old.id, req.Identity) || old.settings != req.Settings) {
		// A file runs as one identity: the whole file restarts as the
		// new one (with only some forwards named, the others too).
		if !prune {
			fws = mergeForwards(old.m.Specs(false), fws)
		}
		for _, fw := range fws {
			if slices.Contains(old.m.Names(), fw.Name) {
				res.Restarted = append(res.Restarted, fw.Name)
			} else {
				res.Started = append(res.Started, fw.Name)
			}
		}
		for _, n := range old.m.Names() {
			if !slices.ContainsFunc(fws, func(fw config.Forward) bool { return fw.Name == n }) {
				res.Stopped = append(res.Stopped, n)
			}
		}
		old.m.Stop()
		s.forget(old.path)
		run := s.newRun(req, fws)
		run.m.Start(s.ctx, fws)
		return res
	}
	if old == nil {
		run := s.newRun(req, fws)
		run.m.Start(s.ctx, fws)
		res.Started = run.m.Names()
		return res
	}
	old.describe(s.Describe, fws)
	res.Started, res.Restarted, res.Unchanged, res.Stopped = old.m.Apply(s.ctx, fws, prune)
	if old.m.Len() == 0 {
		s.forget(old.path)
	}
	return res
}

// mergeForwards is running with fws replacing the forwards of the same
// name.
func mergeForwards(running, fws []config.Forward) []config.Forward {
	out := slices.Clone(fws)
	for _, r := range running {
		if !slices.ContainsFunc(fws, func(fw config.Forward) bool { return fw.Name == r.Name }) {
			out = append(out, r)
		}
	}
	return out
}

func (s *Server) newRun(req ApplyRequest, fws []config.Forward) *fileRun {
	log := s.Log.With("file", req.File)
	run := &fileRun{path: req.File, id: req.Identity, settings: req.Settings}
	run.describe(s.Describe, fws)
	var openProxy manager.ProxyOpener
	if s.ProxyOpener != nil {
		openProxy = s.ProxyOpener(req.File, req.Identity, log)
	}
	run.m = manager.New(manager.Options{
		Open:      s.guard(req.File, s.Opener(req.File, req.Identity, log)),
		OpenProxy: openProxy,
		Settings:  req.Settings,
		Log:       log,
		Events: func(e manager.Event) {
			if s.Events == nil {
				return
			}
			s.events.Lock()
			defer s.events.Unlock()
			fmt.Fprintf(s.Events, "%s %s: %s (file %s)\n", e.Time.Format(time.RFC3339), e.Forward, e.Message, req.File)
		},
	})
	s.mu.Lock()
	s.files[req.File] = run
	s.mu.Unlock()
	return run
}

// describe records who each context of the file's forwards connects as.
func (r *fileRun) describe(d DescribeFunc, fws []config.Forward) {
	if r.who == nil {
		r.who = map[string][3]string{}
	}
	for _, fw := range fws {
		if _, ok := r.who[fw.Context]; ok || d == nil {
			continue
		}
		c, cl, u := d(r.id, fw.Context)
		r.who[fw.Context] = [3]string{c, cl, u}
	}
}

// forget drops a file that runs nothing: its identity (and any token in
// it) goes with it.
func (s *Server) forget(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.files, path)
}

// ErrPortTaken is wrapped when another file's forward holds a local port.
var ErrPortTaken = errors.New("local port taken by another file's forward")

// guard fails a forward whose local port another file's forward holds,
// naming that forward and its file, before it tries to listen.
func (s *Server) guard(path string, open manager.Opener) manager.Opener {
	return func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
		for _, r := range s.runs() {
			if r.path == path {
				continue
			}
			for _, other := range r.m.Specs(true) {
				if port, addr, ok := config.Overlap(fw, other); ok {
					// Waiting does not free it: retried only slowly.
					return nil, supervise.Permanent(fmt.Errorf("%w: local port %d on %s is used by forward %q of %s (stop it with: kpf down %s -f %s)",
						ErrPortTaken, port, addr, other.Name, r.path, other.Name, r.path))
				}
			}
		}
		return open(ctx, fw, sp)
	}
}

func readNames(r *http.Request) (NamesRequest, error) {
	var req NamesRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		return req, err
	}
	return req, nil
}

// pick resolves a NamesRequest to forwards by file; the error is the
// answer to send.
func (s *Server) pick(req NamesRequest) ([]Picked, int, error) {
	runs := s.runs()
	var out []Picked
	switch {
	case req.All:
		for _, r := range runs {
			out = append(out, Picked{r.path, r.m.Names()})
		}
		return out, 0, nil
	case req.File != "":
		r := s.run(req.File)
		if r == nil {
			return nil, http.StatusNotFound, fmt.Errorf("no forwards of %s run (running: %s)", req.File, listFiles(runs))
		}
		names := req.Names
		for _, n := range names {
			if !slices.Contains(r.m.Names(), n) {
				return nil, http.StatusNotFound, fmt.Errorf("no forward named %q runs from %s (running: %s)", n, req.File, strings.Join(r.m.Names(), ", "))
			}
		}
		if len(names) == 0 {
			names = r.m.Names()
		}
		return []Picked{{r.path, names}}, 0, nil
	case len(req.Names) == 0:
		return nil, http.StatusBadRequest, errors.New("name the forwards, a file (-f FILE) or --all")
	}
	byFile := map[string][]string{}
	for _, n := range req.Names {
		var in []string
		for _, r := range runs {
			if slices.Contains(r.m.Names(), n) {
				in = append(in, r.path)
			}
		}
		switch len(in) {
		case 0:
			var all []string
			for _, r := range runs {
				all = append(all, r.m.Names()...)
			}
			return nil, http.StatusNotFound, fmt.Errorf("no forward named %q runs (running: %s)", n, strings.Join(all, ", "))
		case 1:
			byFile[in[0]] = append(byFile[in[0]], n)
		default:
			return nil, http.StatusConflict, fmt.Errorf("forward %q runs from %d files (%s): say which with -f FILE", n, len(in), strings.Join(in, ", "))
		}
	}
	for _, r := range runs {
		if names, ok := byFile[r.path]; ok {
			out = append(out, Picked{r.path, names})
		}
	}
	return out, 0, nil
}

func listFiles(runs []*fileRun) string {
	if len(runs) == 0 {
		return "none"
	}
	var p []string
	for _, r := range runs {
		p = append(p, r.path)
	}
	return strings.Join(p, ", ")
}

func (s *Server) down(w http.ResponseWriter, r *http.Request) {
	req, err := readNames(r)
	if err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.opMu.Lock()
	picked, code, err := s.pick(req)
	if err != nil {
		s.opMu.Unlock()
		http.Error(w, err.Error(), code)
		return
	}
	var stopped []Picked
	for _, p := range picked {
		run := s.run(p.File)
		names := run.m.StopNames(p.Names)
		if run.m.Len() == 0 {
			s.forget(run.path)
		}
		stopped = append(stopped, Picked{p.File, names})
		s.Log.Info("stopped", "file", p.File, "forwards", names)
	}
	last := len(s.runs()) == 0
	s.opMu.Unlock()
	writeJSON(w, struct {
		Stopped    []Picked `json:"stopped"`
		DaemonExit bool     `json:"daemonExits"`
	}{stopped, last})
	if last {
		// Nothing left to run: the daemon goes too, once this answer is out.
		go func() { time.Sleep(100 * time.Millisecond); s.quit() }()
	}
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	req, err := readNames(r)
	if err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	picked, code, err := s.pick(req)
	if err != nil {
		http.Error(w, err.Error(), code)
		return
	}
	var out []Picked
	for _, p := range picked {
		out = append(out, Picked{p.File, s.run(p.File).m.RestartNames(s.ctx, p.Names)})
	}
	writeJSON(w, struct {
		Restarted []Picked `json:"restarted"`
	}{out})
}

func (s *Server) stopAll() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for _, r := range s.runs() {
		r.m.Stop()
		s.forget(r.path)
	}
}

// wait waits until every forward of the file (of every file, without one)
// is ready and healthy.
func (s *Server) wait(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("timeout"))
	if err != nil || d <= 0 {
		d = 2 * time.Minute
	}
	file := r.URL.Query().Get("file")
	var ms []*manager.Manager
	for _, run := range s.runs() {
		if file == "" || run.path == file {
			ms = append(ms, run.m)
		}
	}
	if file != "" && len(ms) == 0 {
		http.Error(w, fmt.Sprintf("no forwards of %s run", file), http.StatusNotFound)
		return
	}
	deadline := time.Now().Add(d)
	for _, m := range ms {
		if err := m.WaitGood(r.Context(), time.Until(deadline)); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	writeJSON(w, s.snapshot(file))
}
