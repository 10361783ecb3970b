// Package daemon is kpf's per-user background process: it runs a manager
// and answers the CLI over a unix socket that only the user can open (the
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
	"strconv"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/manager"
)

// SchemaVersion versions the JSON of status and the socket API.
const SchemaVersion = 1

// Home is the daemon's folder: the socket, its pid and its log.
type Home string

// DefaultHome is $KPF_HOME, else kpf under $XDG_RUNTIME_DIR, else
// /tmp/kpf-UID. It is created with mode 0700.
func DefaultHome() Home {
	if h := os.Getenv("KPF_HOME"); h != "" {
		return Home(h)
	}
	if r := os.Getenv("XDG_RUNTIME_DIR"); r != "" {
		return Home(filepath.Join(r, "kpf"))
	}
	return Home(filepath.Join(os.TempDir(), "kpf-"+strconv.Itoa(os.Getuid())))
}

// Socket is the API socket's path.
func (h Home) Socket() string { return filepath.Join(string(h), "kpf.sock") }

// Log is the daemon's log file.
func (h Home) Log() string { return filepath.Join(string(h), "daemon.log") }

// Ensure creates the folder, readable by the user only.
func (h Home) Ensure() error {
	if err := os.MkdirAll(string(h), 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(string(h))
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to another user: set KPF_HOME to a folder of yours", h)
	}
	return os.Chmod(string(h), 0o700)
}

// Status is what GET /v1/status answers.
type Status struct {
	SchemaVersion int           `json:"schemaVersion"`
	PID           int           `json:"pid"`
	Started       time.Time     `json:"started"`
	File          string        `json:"file,omitempty"`
	Forwards      []manager.Row `json:"forwards"`
}

// ApplyRequest asks the daemon to run the forwards of a file.
type ApplyRequest struct {
	File  string   `json:"file"`  // absolute path
	Names []string `json:"names"` // empty: all, and stop the ones gone from the file
}

// ApplyResult says what changed.
type ApplyResult struct {
	Started   []string `json:"started"`
	Restarted []string `json:"restarted"`
	Unchanged []string `json:"unchanged"`
	Stopped   []string `json:"stopped"`
}

// NamesRequest names forwards for down and restart (empty: all).
type NamesRequest struct {
	Names []string `json:"names"`
}

// Server is the daemon.
type Server struct {
	Manager *manager.Manager
	Home    Home
	Log     *slog.Logger
	started time.Time
	file    string
	ctx     context.Context
	quit    context.CancelFunc
}

// Serve answers the socket until the last forward is stopped with down, or
// ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Home.Ensure(); err != nil {
		return err
	}
	s.started = time.Now()
	s.ctx, s.quit = context.WithCancel(ctx)
	defer s.quit()
	sock := s.Home.Socket()
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("a kpf daemon already answers on %s", sock)
	}
	os.Remove(sock) // stale, from a daemon that died
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return err
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/apply", s.apply)
	mux.HandleFunc("POST /v1/down", s.down)
	mux.HandleFunc("POST /v1/restart", s.restart)
	mux.HandleFunc("POST /v1/wait", s.wait)
	srv := &http.Server{Handler: sameUser(mux), ConnContext: withConn}
	go func() { <-s.ctx.Done(); srv.Close() }()
	s.Log.Info("daemon listening", "socket", sock, "pid", os.Getpid())
	err = srv.Serve(ln)
	s.Manager.Stop()
	os.Remove(sock)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// sameUser refuses peers of another uid (SO_PEERCRED), on top of the
// socket's 0600 mode and its folder's 0700.
func sameUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uc, ok := r.Context().Value(connKey{}).(*net.UnixConn)
		if !ok {
			http.Error(w, "not a unix socket peer", http.StatusForbidden)
			return
		}
		raw, err := uc.SyscallConn()
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		var cred *syscall.Ucred
		var cerr error
		raw.Control(func(fd uintptr) {
			cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
		})
		if cerr != nil || int(cred.Uid) != os.Getuid() {
			http.Error(w, "forbidden: the kpf daemon serves its own user only", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (s *Server) snapshot() Status {
	return Status{SchemaVersion: SchemaVersion, PID: os.Getpid(), Started: s.started, File: s.file, Forwards: s.Manager.Snapshot()}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) { writeJSON(w, s.snapshot()) }

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	var req ApplyRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
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
	s.file = req.File
	var res ApplyResult
	res.Started, res.Restarted, res.Unchanged, res.Stopped = s.Manager.Apply(s.ctx, fws, len(req.Names) == 0)
	s.Log.Info("applied", "file", req.File, "started", res.Started, "restarted", res.Restarted, "unchanged", res.Unchanged, "stopped", res.Stopped)
	writeJSON(w, res)
}

func readNames(r *http.Request) ([]string, error) {
	var req NamesRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return req.Names, nil
}

// names reads the request's forward names and checks that they run; it
// answers the error itself.
func (s *Server) names(w http.ResponseWriter, r *http.Request) ([]string, bool) {
	names, err := readNames(r)
	if err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	if missing := s.missing(names); missing != "" {
		http.Error(w, missing, http.StatusNotFound)
		return nil, false
	}
	return names, true
}

func (s *Server) down(w http.ResponseWriter, r *http.Request) {
	names, ok := s.names(w, r)
	if !ok {
		return
	}
	stopped := s.Manager.StopNames(names)
	s.Log.Info("stopped", "forwards", stopped)
	last := s.Manager.Len() == 0
	writeJSON(w, struct {
		Stopped    []string `json:"stopped"`
		DaemonExit bool     `json:"daemonExits"`
	}{stopped, last})
	if last {
		// Nothing left to run: the daemon goes too, once this answer is out.
		go func() { time.Sleep(100 * time.Millisecond); s.quit() }()
	}
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	names, ok := s.names(w, r)
	if !ok {
		return
	}
	writeJSON(w, struct {
		Restarted []string `json:"restarted"`
	}{s.Manager.RestartNames(s.ctx, names)})
}

func (s *Server) missing(names []string) string {
	have := s.Manager.Names()
	for _, n := range names {
		found := false
		for _, h := range have {
			found = found || h == n
		}
		if !found {
			return fmt.Sprintf("no forward named %q runs (running: %v)", n, have)
		}
	}
	return ""
}

func (s *Server) wait(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("timeout"))
	if err != nil || d <= 0 {
		d = 2 * time.Minute
	}
	if err := s.Manager.WaitGood(r.Context(), d); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, s.snapshot())
}
