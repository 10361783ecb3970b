// Package daemon is kpf's per-user background process: it runs the
// forwards of many files side by side, each file with the identity and
// settings of the kpf up -d that applied it (one manager per file), and
// answers the CLI over a unix socket that only the user can open (the
// socket's folder is 0700 and every peer's uid is checked). The CLI never
// finds the daemon by process name: the socket is the only way in. One
// daemon runs per user: it holds the lock of its home for its whole life.
//
// What the socket serves are the versioned types of package api, built
// here from the manager's rows: the manager's internals are not the API.
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/metrics"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/supervise"
)

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

// Lock is the file whose lock the running daemon holds: one daemon per
// home, whoever starts first.
func (h Home) Lock() string { return filepath.Join(string(h), "daemon.lock") }

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
	// DiscoverOpener, if set, runs the discover entries of files.
	DiscoverOpener func(id identity.Identity) manager.DiscoverOpener
	// MetricsURL is where the daemon's metrics are served, for status.
	MetricsURL string
	Describe   DescribeFunc
	// Events receives every forward's state changes, as log lines.
	Events io.Writer
	// Initial are files to apply at start (a user service's files).
	Initial []api.ApplyRequest
	// Cleanup, if set, removes what a daemon that did not stop cleanly
	// left in the cluster for a file's forwards (their UDP relay pods),
	// connecting as id. It is called for every recorded file at start,
	// restored or not.
	Cleanup func(ctx context.Context, id identity.Identity, fws []config.Forward) error

	// restored is what Serve did with the recorded files; set before the
	// socket answers, never changed after.
	restored []api.Restore
	// cleaning joins the Cleanup calls.
	cleaning sync.WaitGroup

	// Doctor, if set, runs GET /v1/forwards/{name}/doctor.
	Doctor DoctorFunc
	// APIAddr, if set, serves the API on this loopback TCP address too,
	// behind the bearer token in Home.APIToken (api_tcp.go).
	APIAddr string
	// APIAddrRestored: APIAddr is a killed daemon's (LastFlags), not
	// asked for now: if it cannot be listened on, the daemon says so in
	// its log and runs without it, rather than not at all.
	APIAddrRestored bool
	// MetricsAddr is where the daemon's metrics listen (the CLI serves
	// them), recorded in its Flags.
	MetricsAddr string
	// Warnings are shown in the status (api.Status.Warnings); set before
	// Serve, which adds its own.
	Warnings []string

	// The event stream (events.go); eventBuffer (0: EventBuffer) is for
	// tests. origins are the file-less runs' origins by key, under mu.
	hubOnce     sync.Once
	ev          *hubState
	eventBuffer int
	origins     map[string]string
	sessions    map[string][]*fileRun // file-less runs by the session that started them, under mu
	apiAt       net.Addr              // where APIAddr listens, once it does

	// started, ctx and quit are set by Serve before the socket answers,
	// and never change after.
	started time.Time
	ctx     context.Context
	quit    context.CancelFunc

	// The state discipline. Two locks, always taken in this order:
	//
	//   - opMu serialises what changes the set of forwards (apply, down,
	//     restart, the stop at exit). It is held while forwards start and
	//     stop, and while a file's description (who) is worked out.
	//   - mu guards files and each fileRun's who. It is held only to read
	//     or write them: never while calling a manager, an opener or
	//     Describe (a forward that opens takes it, in guard, to look for
	//     port conflicts).
	//
	// A fileRun's path, id, settings and m are set before it is put in
	// files and never change: anyone may read them. Its who is never
	// changed in place: a new map replaces it, under mu, so a reader
	// that took the map under mu may read it after. The manager is safe
	// for concurrent use on its own. status reads only through runs(),
	// so no request path reads state outside this discipline.
	settle settler // hands garbage back once the forwards are quiet (settle.go)

	opMu   sync.Mutex
	mu     sync.Mutex
	files  map[string]*fileRun
	events sync.Mutex // one event line at a time on Events
}

// fileRun is one applied file: its forwards run as its identity.
type fileRun struct {
	path     string
	id       identity.Identity
	settings spec.Settings
	m        *manager.Manager
	who      map[string][3]string // by forward context: context, cluster, user; replaced whole, under Server.mu
	// stamp is when the file was applied and a hash of its bytes then,
	// for its record; read and written under Server.opMu only.
	stamp stamp
}

// stamp is when a file was applied, and a hash of its bytes then.
type stamp struct {
	at   time.Time
	hash string
}

// Serve answers the socket until the last forward is stopped with down, or
// ctx ends. It first takes the home's lock: while another daemon of the
// user runs, Serve returns an error wrapping ErrAnotherDaemon.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Home.Ensure(); err != nil {
		return err
	}
	lock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer lock.Close() // the lock goes last, once the socket is gone
	s.started = time.Now()
	s.files = map[string]*fileRun{}
	s.ctx, s.quit = context.WithCancel(ctx)
	defer s.quit()
	ln, err := listen(s.Home.Socket())
	if err != nil {
		return err
	}
	defer os.Remove(s.Home.Socket())
	stopTCP, err := s.serveTCP()
	keepAPI := "" // a restored address not served now, kept for the next restore
	if err != nil && s.APIAddrRestored {
		s.Log.Warn("the API address of the daemon before this one (which was killed) is not served: restart the daemon with --api-addr to serve one", "err", err)
		s.Warnings = append(s.Warnings, fmt.Sprintf("the API address %s of the daemon before this one (which was killed) is not served: %v; the API answers on the socket only (once the address is free: kpf down --all, then kpf up -d --api-addr %s)", s.APIAddr, err, s.APIAddr))
		keepAPI, s.APIAddr = s.APIAddr, ""
		stopTCP, err = s.serveTCP()
	}
	if err != nil {
		ln.Close()
		return err
	}
	defer stopTCP()
	// Recorded while it runs, removed at a clean exit: a daemon started
	// after this one is killed serves where it did.
	flags := Flags{APIAddr: s.APIAddr, MetricsAddr: s.MetricsAddr, PID: os.Getpid()}
	if s.apiAt != nil {
		flags.APIAddr = s.apiAt.String() // a port chosen at listen time stays
	}
	if keepAPI != "" {
		flags.APIAddr = keepAPI // not forgotten: the next restore tries it again
	}
	if err := s.Home.writeFlags(flags); err != nil {
		s.Log.Error("record the daemon's flags", "err", err)
	}
	defer os.Remove(s.Home.flagsPath())
	s.hub().diff(s)
	go s.hub().run(s)
	// Requests see the daemon's context: a wait ends when the daemon does.
	srv := &http.Server{Handler: s.Handler(), ConnContext: withConn, BaseContext: func(net.Listener) context.Context { return s.ctx }}
	s.Log.Info("daemon listening", "socket", s.Home.Socket(), "pid", os.Getpid())
	for _, req := range s.Initial {
		if err := s.applyInitial(req); err != nil {
			s.Log.Error("apply", "file", req.File, "err", err)
		}
	}
	s.restore()
	defer s.cleaning.Wait()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served:
	case <-s.ctx.Done():
		// Answers being written (down's, which asked for this) are
		// finished, then every connection closes.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		cancel()
		srv.Close()
		err = <-served
	}
	s.stopAll()
	s.settle.stop()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ErrAnotherDaemon: another kpf daemon of this user holds the home's
// lock.
var ErrAnotherDaemon = errors.New("another kpf daemon runs for this user")

// errLocked: the lock is held by another open file.
var errLocked = errors.New("locked")

// lockWait bounds how long a daemon waits for one that holds the lock but
// does not answer (it is starting, or stopping its forwards).
const lockWait = 10 * time.Second

// lock takes the home's lock, held until the returned file is closed
// (or the process ends). When a daemon that answers holds it, this one
// goes at once; one that starts or stops is waited for, a while.
func (s *Server) lock(ctx context.Context) (*os.File, error) {
	f, err := os.OpenFile(s.Home.Lock(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := tryLock(f)
		if err == nil {
			// The pid is for people and messages; the lock is the truth.
			f.Truncate(0)
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return f, nil
		}
		if !errors.Is(err, errLocked) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", s.Home.Lock(), err)
		}
		held := func(how string) error {
			b, _ := os.ReadFile(s.Home.Lock())
			f.Close()
			return fmt.Errorf("%w (pid %s %s on %s): kpf status shows it, kpf down --all stops it",
				ErrAnotherDaemon, strings.TrimSpace(string(b)), how, s.Home.Socket())
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, serr := NewClient(s.Home).Status(pctx, "")
		cancel()
		if serr == nil {
			return nil, held("answers")
		}
		if time.Now().After(deadline) {
			return nil, held("holds its lock but does not answer")
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
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
	return sameUser(s.mux())
}

// listen opens the socket. The caller holds the home's lock, so a socket
// file left there is a dead daemon's.
func listen(sock string) (net.Listener, error) {
	os.Remove(sock)
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

// ErrRootReadOnly: root (sudo kpf ...) asked for more than the status.
var ErrRootReadOnly = errors.New("forbidden: root may only read the status of a user's kpf daemon (run this kpf command as yourself, without sudo)")

// sameUser refuses peers of another uid, on top of the socket's 0600 mode
// and its folder's 0700. Root may read the status, and only that: sudo
// kpf hosts --write /etc/hosts needs the user's forwards, and root can
// read the daemon's memory and files anyway; a change made as root (a
// file applied with root's files and environment) is refused.
func sameUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uc, ok := r.Context().Value(connKey{}).(*net.UnixConn)
		if !ok {
			httpError(w, "not a unix socket peer", http.StatusForbidden)
			return
		}
		if err := allowPeer(uc, r); err != nil {
			httpError(w, err.Error(), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func allowPeer(c *net.UnixConn, r *http.Request) error {
	uid, err := peerUID(c)
	switch {
	case err != nil:
		return fmt.Errorf("%w (peer credentials: %v)", ErrOtherUser, err)
	case uid == os.Getuid():
		return nil
	case uid == 0 && r.Method == http.MethodGet && r.URL.Path == "/v1/status":
		return nil
	case uid == 0:
		return ErrRootReadOnly
	}
	return ErrOtherUser
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

// whoOf is the run's description of who its contexts connect as, taken
// under mu (the map is never changed in place: see Server).
func (s *Server) whoOf(r *fileRun) map[string][3]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return r.who
}

func (s *Server) snapshot(only string) api.Status {
	st := api.Status{SchemaVersion: api.SchemaVersion, PID: os.Getpid(), Started: s.started, Files: []string{}, Forwards: []api.Forward{}, Metrics: s.MetricsURL, Restored: s.restored}
	if s.apiAt != nil {
		st.API = s.apiAt.String()
	}
	st.Warnings = s.Warnings
	for _, r := range s.runs() {
		if only != "" && r.path != only {
			continue
		}
		st.Files = append(st.Files, r.path)
		// The rows first: a forward is described before it is started,
		// so the description taken after names every row's context.
		rows := r.m.Snapshot()
		who := s.whoOf(r)
		for _, row := range rows {
			f := ForwardOf(row)
			f.File = r.path
			w := who[row.Context]
			f.Context, f.Cluster, f.User = w[0], w[1], w[2]
			st.Forwards = append(st.Forwards, f)
		}
	}
	return st
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.statusOf(r.URL.Query().Get("file")))
}

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	var req api.ApplyRequest
	missing, err := decodeRequest(r, 4<<20, &req, "settings")
	if err != nil {
		httpError(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !filepath.IsAbs(req.File) {
		httpError(w, fmt.Sprintf("bad request: file %q is not an absolute path", req.File), http.StatusBadRequest)
		return
	}
	if missing != nil {
		httpError(w, missing.Error(), http.StatusBadRequest)
		return
	}
	if err := req.Settings.Validate(); err != nil {
		httpError(w, err.Error(), http.StatusBadRequest)
		return
	}
	f, err := config.Load(req.File)
	if err != nil {
		httpError(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	fws, err := f.Select(req.Names)
	if err != nil {
		httpError(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	res := s.applyFile(req, fws)
	s.save(req.File, &stamp{time.Now(), hashOf(req.File)})
	for _, fw := range fws {
		if !slices.Contains(res.Started, fw.Name) && !slices.Contains(res.Restarted, fw.Name) {
			continue
		}
		if err := s.portTaken(req.File, fw); err != nil {
			res.Failed = append(res.Failed, api.Failure{Name: fw.Name, Error: err.Error()})
		}
	}
	s.Log.Info("applied", "file", req.File, "started", res.Started, "restarted", res.Restarted, "unchanged", res.Unchanged, "stopped", res.Stopped, "failed", len(res.Failed))
	writeJSON(w, res)
}

// applyInitial applies a file the daemon was started with.
func (s *Server) applyInitial(req api.ApplyRequest) error {
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
	s.save(req.File, &stamp{time.Now(), hashOf(req.File)})
	s.Log.Info("applied", "file", req.File, "started", res.Started)
	return nil
}

// applyFile makes the file's running forwards match fws. A file applied
// again as the same identity with the same settings restarts only the
// forwards that changed; another identity or other settings restart all
// of them. s.opMu is held.
func (s *Server) applyFile(req api.ApplyRequest, fws []config.Forward) api.ApplyResult {
	var res api.ApplyResult
	prune := len(req.Names) == 0
	old := s.run(req.File)
	if old != nil && (!old.id.Equal(req.Identity) || old.settings != req.Settings) {
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
	s.describe(old, fws)
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

func (s *Server) newRun(req api.ApplyRequest, fws []config.Forward) *fileRun {
	log := s.Log.With("file", req.File)
	run := &fileRun{path: req.File, id: req.Identity, settings: req.Settings}
	s.describe(run, fws)
	var openProxy manager.ProxyOpener
	if s.ProxyOpener != nil {
		openProxy = s.ProxyOpener(req.File, req.Identity, log)
	}
	var openDiscover manager.DiscoverOpener
	if s.DiscoverOpener != nil {
		openDiscover = s.DiscoverOpener(req.Identity)
	}
	run.m = manager.New(manager.Options{
		OpenDiscover: openDiscover,
		Open:         s.guard(req.File, s.Opener(req.File, req.Identity, log)),
		OpenProxy:    openProxy,
		Settings:     req.Settings,
		Log:          log,
		Events: func(e manager.Event) {
			s.hub().poke()
			s.settle.changed()
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

// describe records who each context of the file's forwards connects as:
// the contexts not described yet are described (reading kubeconfig files,
// with no lock held), and a new map replaces the run's. s.opMu is held, so
// no other describe runs at once.
func (s *Server) describe(r *fileRun, fws []config.Forward) {
	old := s.whoOf(r)
	var add map[string][3]string
	for _, fw := range fws {
		if _, ok := old[fw.Context]; ok || s.Describe == nil {
			continue
		}
		if _, ok := add[fw.Context]; ok {
			continue
		}
		if add == nil {
			add = map[string][3]string{}
		}
		c, cl, u := s.Describe(r.id, fw.Context)
		add[fw.Context] = [3]string{c, cl, u}
	}
	if add == nil && old != nil {
		return
	}
	who := make(map[string][3]string, len(old)+len(add))
	for k, v := range old {
		who[k] = v
	}
	for k, v := range add {
		who[k] = v
	}
	s.mu.Lock()
	r.who = who
	s.mu.Unlock()
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
		if err := s.portTaken(path, fw); err != nil {
			// Waiting does not free it: retried only slowly.
			return nil, supervise.Permanent(err)
		}
		return open(ctx, fw, sp)
	}
}

// portTaken is the ErrPortTaken of fw (of the file at path) when another
// file's forward holds one of its local ports, or nil.
func (s *Server) portTaken(path string, fw config.Forward) error {
	for _, r := range s.runs() {
		if r.path == path {
			continue
		}
		for _, other := range r.m.Specs(true) {
			if port, addr, ok := config.Overlap(fw, other); ok {
				return fmt.Errorf("%w: local port %d on %s is used by forward %q %s",
					ErrPortTaken, port, addr, other.Name, s.whereStop(r.path, other.Name))
			}
		}
	}
	return nil
}

func readNames(r *http.Request) (api.NamesRequest, error) {
	var req api.NamesRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		return req, err
	}
	return req, nil
}

// pick resolves a NamesRequest to forwards by file; the error is the
// answer to send.
func (s *Server) pick(req api.NamesRequest) ([]api.Picked, int, error) {
	runs := s.runs()
	var out []api.Picked
	switch {
	case req.All && (len(req.Names) > 0 || req.File != ""):
		return nil, http.StatusBadRequest, errors.New("all takes no names and no file: ask for every forward (all), or for names (of a file)")
	case req.All:
		for _, r := range runs {
			out = append(out, api.Picked{File: r.path, Names: r.m.Names()})
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
		return []api.Picked{{File: r.path, Names: names}}, 0, nil
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
			for _, key := range in {
				if o := s.originOf(key); o != "" {
					// It has no -f to give: once the files' forwards of
					// the name are stopped, the name is its alone.
					return nil, http.StatusConflict, fmt.Errorf("forward %q runs from %d places (%s): kpf down %s -f FILE stops a file's; kpf down %s then stops the one %s",
						n, len(in), strings.Join(s.places(in), ", "), n, n, o)
				}
			}
			return nil, http.StatusConflict, fmt.Errorf("forward %q runs from %d files (%s): say which with -f FILE", n, len(in), strings.Join(in, ", "))
		}
	}
	for _, r := range runs {
		if names, ok := byFile[r.path]; ok {
			out = append(out, api.Picked{File: r.path, Names: names})
		}
	}
	return out, 0, nil
}

func listFiles(runs []*fileRun) string {
	var p []string
	for _, r := range runs {
		if filepath.IsAbs(r.path) { // not a forward started without a file
			p = append(p, r.path)
		}
	}
	if len(p) == 0 {
		return "none"
	}
	return strings.Join(p, ", ")
}

// places names the runs of keys as a person would: a file's path, or
// "no file (started by mcp)" for a forward started without one.
func (s *Server) places(keys []string) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if o := s.originOf(k); o != "" {
			k = "no file (" + o + ")"
		}
		out = append(out, k)
	}
	return out
}

// whereStop says where forward name of the run key comes from and the
// command that stops it: kpf down NAME -f FILE for a file's, kpf down NAME
// (or the API) for one started without a file, which has no -f to give.
func (s *Server) whereStop(key, name string) string {
	if o := s.originOf(key); o != "" {
		return fmt.Sprintf("%s, without a file (stop it with: kpf down %s, or DELETE /v1/forwards/%s)", o, name, name)
	}
	return fmt.Sprintf("of %s (stop it with: kpf down %s -f %s)", key, name, key)
}

func (s *Server) down(w http.ResponseWriter, r *http.Request) {
	req, err := readNames(r)
	if err != nil {
		httpError(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.opMu.Lock()
	picked, code, err := s.pick(req)
	if err != nil {
		s.opMu.Unlock()
		httpError(w, err.Error(), code)
		return
	}
	var stopped []api.Picked
	for _, p := range picked {
		run := s.run(p.File)
		names := run.m.StopNames(p.Names)
		if run.m.Len() == 0 {
			s.forget(run.path)
		}
		s.save(p.File, nil)
		stopped = append(stopped, api.Picked{File: p.File, Names: names})
		s.Log.Info("stopped", "file", p.File, "forwards", names)
	}
	last := len(s.runs()) == 0
	s.opMu.Unlock()
	writeJSON(w, api.DownResult{Stopped: stopped, DaemonExits: last})
	if last {
		// Nothing left to run: the daemon goes too. Serve shuts the
		// server down gracefully, so this answer is written first.
		s.quit()
	}
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	req, err := readNames(r)
	if err != nil {
		httpError(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	picked, code, err := s.pick(req)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	var out []api.Picked
	for _, p := range picked {
		out = append(out, api.Picked{File: p.File, Names: s.run(p.File).m.RestartNames(s.ctx, p.Names)})
	}
	writeJSON(w, api.RestartResult{Restarted: out})
}

func (s *Server) stopAll() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for _, r := range s.runs() {
		r.m.Stop()
		s.forget(r.path)
		// Stopped on purpose (a signal, the service manager): it cleaned
		// up, and nothing is restored from it.
		s.save(r.path, nil)
	}
}

// wait waits until every forward of the file (of every file, without one)
// is ready and healthy.
func (s *Server) wait(w http.ResponseWriter, r *http.Request) {
	d := 2 * time.Minute
	if v := r.URL.Query().Get(qTimeout); v != "" {
		t, err := time.ParseDuration(v)
		if err != nil {
			httpError(w, fmt.Sprintf("bad request: timeout=%q: want a duration, such as 60s", v), http.StatusBadRequest)
			return
		}
		if t > 0 {
			d = t
		}
	}
	file := r.URL.Query().Get("file")
	var ms []*manager.Manager
	for _, run := range s.runs() {
		if file == "" || run.path == file {
			ms = append(ms, run.m)
		}
	}
	if file != "" && len(ms) == 0 {
		httpError(w, fmt.Sprintf("no forwards of %s run", file), http.StatusNotFound)
		return
	}
	deadline := time.Now().Add(d)
	for _, m := range ms {
		if err := m.WaitGood(r.Context(), time.Until(deadline)); err != nil {
			httpError(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	writeJSON(w, s.statusOf(file))
}
