package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/spec"
)

// DoctorFunc runs kpf doctor's checks of one forward as id (the CLI
// supplies it: the checks' advice is the CLI's words).
type DoctorFunc func(ctx context.Context, id identity.Identity, fw config.Forward, s spec.Settings) api.DoctorResult

// A forward started without a file runs in a group of its own, keyed by
// "(ORIGIN) NAME": never an absolute path, so never a file's key.
func adhocKey(origin, name string) string { return "(" + origin + ") " + name }

// DefaultOrigin labels a file-less forward whose request named no origin.
const DefaultOrigin = "started by api"

// originOf is the origin of a file-less run's key, "" for a file.
func (s *Server) originOf(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.origins[key]
}

func kindOf(target string) string {
	if target == "proxy" {
		return api.KindProxy
	}
	return api.KindForward
}

// statusOf is the status of every forward, with totals (kind and origin
// filled in).
func (s *Server) statusOf(file string) api.Status {
	st := s.snapshot(file)
	st.Files = slices.DeleteFunc(st.Files, func(f string) bool { return s.originOf(f) != "" })
	for i := range st.Forwards {
		f := &st.Forwards[i]
		f.Kind = kindOf(f.Target)
		if o := s.originOf(f.File); o != "" {
			f.File, f.Origin = "", o
		}
		t := &st.Totals
		t.Forwards++
		if f.State == "ready" {
			t.Ready++
		}
		t.Open += f.Open
		t.Total += f.Total
		t.Failed += f.Failed
		t.BytesIn += f.BytesIn
		t.BytesOut += f.BytesOut
		t.Reconnects += f.Reconnects
		t.Switches += f.Switches
	}
	return st
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	out := []api.File{}
	for _, run := range s.runs() {
		if s.originOf(run.path) != "" {
			continue
		}
		f := api.File{Path: run.path, Forwards: []string{}, Proxies: []string{}}
		for _, fw := range run.m.Specs(false) {
			if fw.Proxy != nil {
				f.Proxies = append(f.Proxies, fw.Name)
			} else {
				f.Forwards = append(f.Forwards, fw.Name)
			}
		}
		out = append(out, f)
	}
	writeJSON(w, out)
}

func (s *Server) listKind(w http.ResponseWriter, r *http.Request, kind string) {
	st := s.statusOf(r.URL.Query().Get("file"))
	out := []api.Forward{}
	for _, f := range st.Forwards {
		if f.Kind == kind {
			out = append(out, f)
		}
	}
	writeJSON(w, out)
}

func (s *Server) listForwards(w http.ResponseWriter, r *http.Request) {
	s.listKind(w, r, api.KindForward)
}

func (s *Server) listProxies(w http.ResponseWriter, r *http.Request) {
	s.listKind(w, r, api.KindProxy)
}

// find is the one forward (or proxy) of kind named in the path, of the
// file in ?file= if given; the error is the answer to send.
func (s *Server) find(r *http.Request, kind string) (api.Forward, int, error) {
	name, file := r.PathValue("name"), r.URL.Query().Get("file")
	var found []api.Forward
	var names, elsewhere []string
	for _, f := range s.statusOf("").Forwards {
		if f.Kind != kind {
			continue
		}
		if file != "" && f.File != file {
			if f.Name == name {
				elsewhere = append(elsewhere, f.File)
			}
			continue
		}
		names = append(names, f.Name)
		if f.Name == name {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 1:
		return found[0], 0, nil
	case 0:
		running := strings.Join(names, ", ")
		if running == "" {
			running = "none"
		}
		if file == "" {
			return api.Forward{}, http.StatusNotFound, fmt.Errorf("the daemon runs no %s %q (running: %s)", kind, name, running)
		}
		msg := fmt.Sprintf("%s has no %s %q running (its %ss: %s)", file, kind, name, kind, running)
		if len(elsewhere) > 0 {
			msg += fmt.Sprintf("; %q runs from %s: drop ?file= or give that file", name, strings.Join(elsewhere, ", "))
		}
		return api.Forward{}, http.StatusNotFound, errors.New(msg)
	}
	var files []string
	for _, f := range found {
		files = append(files, f.File)
	}
	return api.Forward{}, http.StatusConflict, fmt.Errorf("%s %q runs from %d files (%s): say which with ?file=FILE", kind, name, len(found), strings.Join(files, ", "))
}

// keyOf is the run key of a forward as status shows it.
func keyOf(f api.Forward) string {
	if f.Origin != "" {
		return adhocKey(f.Origin, f.Name)
	}
	return f.File
}

func (s *Server) getForward(w http.ResponseWriter, r *http.Request) {
	f, code, err := s.find(r, api.KindForward)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	writeJSON(w, f)
}

func (s *Server) getProxy(w http.ResponseWriter, r *http.Request) {
	f, code, err := s.find(r, api.KindProxy)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	writeJSON(w, f)
}

// findRun is the forward the request names and the run that holds it,
// or false when it answered the error. s.opMu is held.
func (s *Server) findRun(w http.ResponseWriter, r *http.Request) (api.Forward, *fileRun, bool) {
	f, code, err := s.find(r, api.KindForward)
	if err != nil {
		httpError(w, err.Error(), code)
		return f, nil, false
	}
	run := s.run(keyOf(f))
	if run == nil { // stopped meanwhile
		httpError(w, fmt.Sprintf("forward %q stopped meanwhile", f.Name), http.StatusNotFound)
		return f, nil, false
	}
	return f, run, true
}

// stopForward stops one forward; a file-less one is forgotten with it.
// The daemon goes on running (DELETE answers the forward as it was).
func (s *Server) stopForward(w http.ResponseWriter, r *http.Request) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	f, run, ok := s.findRun(w, r)
	if !ok {
		return
	}
	run.m.StopNames([]string{f.Name})
	if run.m.Len() == 0 {
		s.forget(run.path)
		s.mu.Lock()
		delete(s.origins, run.path)
		s.mu.Unlock()
	}
	s.Log.Info("stopped", "file", run.path, "forwards", []string{f.Name})
	f.State = "stopped"
	writeJSON(w, f)
}

func (s *Server) restartForward(w http.ResponseWriter, r *http.Request) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	f, run, ok := s.findRun(w, r)
	if !ok {
		return
	}
	run.m.RestartNames(s.ctx, []string{f.Name})
	writeJSON(w, api.RestartResult{Restarted: []api.Picked{{File: f.File, Names: []string{f.Name}}}})
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

// startRequest checks a StartRequest and makes its forward.
// missing, if not nil, names the settings the body left out.
func (s *Server) startRequest(req api.StartRequest, missing error) (config.Forward, time.Duration, error) {
	var fw config.Forward
	var wait time.Duration
	if req.Wait != "" {
		d, err := time.ParseDuration(req.Wait)
		if err != nil || d <= 0 || d > 10*time.Minute {
			return fw, 0, fmt.Errorf("wait %q: want a duration from 1s to 10m, such as 30s", req.Wait)
		}
		wait = d
	}
	if req.Target == "" {
		return fw, 0, errors.New("target is empty: name what to forward to as TYPE/NAME (svc/web, deploy/api, pod/db-0)")
	}
	if len(req.Ports) == 0 {
		return fw, 0, errors.New("ports is empty: name at least one port as [LOCAL:]REMOTE (8080, 5432:5432, :80)")
	}
	ports, err := portspec.ParsePorts(req.Ports)
	if err != nil {
		return fw, 0, fmt.Errorf("ports: %w", err)
	}
	addr := req.Address
	if addr == "" {
		addr = "127.0.0.1"
	}
	if a, err := netip.ParseAddr(addr); addr != "localhost" && (err != nil || !a.IsLoopback()) {
		return fw, 0, fmt.Errorf("address %q: a forward started without a file listens on loopback only (127.0.0.1, ::1 or localhost); use a kpf.yaml for others", req.Address)
	}
	name := req.Name
	if name == "" {
		name = s.freeName(req.Target)
	}
	if !nameRE.MatchString(name) {
		return fw, 0, fmt.Errorf("name %q: want lower-case letters, digits and dashes, at most 40, such as web-api", name)
	}
	if missing != nil {
		return fw, 0, missing
	}
	if err := req.Settings.Validate(); err != nil {
		return fw, 0, err
	}
	fw = config.Forward{Name: name, Context: req.Context, Namespace: req.Namespace, Target: req.Target, Ports: ports, Addresses: []string{addr}}
	if req.HTTPLog {
		fw.HTTPLog = filepath.Join(string(s.Home), "http", name+".log")
	}
	return fw, wait, nil
}

// freeName names a file-less forward after its target: svc/web is web,
// then web-2, web-3... while the name is taken.
func (s *Server) freeName(target string) string {
	_, base, _ := strings.Cut(target, "/")
	if base == "" {
		base = target
	}
	base = strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, base), "-")
	if len(base) > 34 {
		base = strings.Trim(base[:34], "-")
	}
	if base == "" {
		base = "forward"
	}
	for i := 1; ; i++ {
		n := base
		if i > 1 {
			n = fmt.Sprintf("%s-%d", base, i)
		}
		if s.takenBy(n) == "" {
			return n
		}
	}
}

// takenBy says where a forward named name runs, of a file or without
// one, as whereStop words it ("" when none does): a forward started
// without a file takes a name no other forward has, so that kpf down NAME
// and /v1/forwards/NAME find it alone.
func (s *Server) takenBy(name string) string {
	for _, r := range s.runs() {
		if o := s.originOf(r.path); o != "" {
			// A run stopped by down (which knows no origins) is gone
			// from runs: its name is free again.
			if r.path == adhocKey(o, name) {
				return s.whereStop(r.path, name)
			}
			continue
		}
		if slices.Contains(r.m.Names(), name) {
			return s.whereStop(r.path, name)
		}
	}
	return ""
}

// startForward runs one forward without a file (POST /v1/forwards).
func (s *Server) startForward(w http.ResponseWriter, r *http.Request) {
	var req api.StartRequest
	missing, err := decodeRequest(r, 1<<20, &req, "settings")
	if err != nil {
		httpError(w, err.Error(), http.StatusBadRequest)
		return
	}
	origin := req.Origin
	if origin == "" {
		origin = DefaultOrigin
	}
	s.opMu.Lock()
	fw, wait, err := s.startRequest(req, missing)
	if err != nil {
		s.opMu.Unlock()
		httpError(w, err.Error(), http.StatusBadRequest)
		return
	}
	if where := s.takenBy(fw.Name); where != "" {
		s.opMu.Unlock()
		httpError(w, fmt.Sprintf("a forward named %q runs already, %s; or choose another name", fw.Name, where), http.StatusConflict)
		return
	}
	if fw.HTTPLog != "" {
		if err := os.MkdirAll(filepath.Dir(fw.HTTPLog), 0o700); err != nil {
			s.opMu.Unlock()
			httpError(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	key := adhocKey(origin, fw.Name)
	s.mu.Lock()
	if s.origins == nil {
		s.origins = map[string]string{}
	}
	s.origins[key] = origin
	s.mu.Unlock()
	s.applyFile(api.ApplyRequest{File: key, Identity: req.Identity, Settings: req.Settings}, []config.Forward{fw})
	s.Log.Info("started", "origin", origin, "forward", fw.Name, "target", fw.Target)
	run := s.run(key)
	if req.Session != "" && run != nil {
		s.mu.Lock()
		if s.sessions == nil {
			s.sessions = map[string][]*fileRun{}
		}
		s.sessions[req.Session] = append(s.sessions[req.Session], run)
		s.mu.Unlock()
	}
	s.opMu.Unlock()
	s.hub().diff(s)
	if wait > 0 && run != nil {
		if err := run.m.WaitGood(r.Context(), wait); err != nil {
			// A program that asked to wait is told, and nothing is
			// left behind that it does not know about.
			s.opMu.Lock()
			if s.run(key) == run {
				run.m.Stop()
				s.forget(key)
				s.mu.Lock()
				delete(s.origins, key)
				s.mu.Unlock()
			}
			s.opMu.Unlock()
			httpError(w, fmt.Sprintf("forward %q was not ready within %s, and was stopped: %v", fw.Name, wait, err), http.StatusServiceUnavailable)
			return
		}
	}
	f, _, err := s.find(withName(r, fw.Name), api.KindForward)
	if err != nil {
		httpError(w, err.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Location", "/v1/forwards/"+fw.Name)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(f)
}

// withName is r asking for the forward name, of no file in particular.
func withName(r *http.Request, name string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = ""
	r2.SetPathValue("name", name)
	return r2
}

func (s *Server) doctorForward(w http.ResponseWriter, r *http.Request) {
	f, code, err := s.find(r, api.KindForward)
	if err != nil {
		httpError(w, err.Error(), code)
		return
	}
	run := s.run(keyOf(f))
	if run == nil {
		httpError(w, fmt.Sprintf("forward %q stopped meanwhile", f.Name), http.StatusNotFound)
		return
	}
	if s.Doctor == nil {
		httpError(w, "this daemon runs no doctor", http.StatusNotFound)
		return
	}
	specs := run.m.Specs(false)
	i := slices.IndexFunc(specs, func(fw config.Forward) bool { return fw.Name == f.Name })
	if i < 0 {
		httpError(w, fmt.Sprintf("forward %q stopped meanwhile", f.Name), http.StatusNotFound)
		return
	}
	fw := specs[i]
	// Its own port is held by the forward itself: the local step says so.
	res := s.Doctor(r.Context(), run.id, fw, run.settings)
	res.Forward = f.Name
	writeJSON(w, res)
}

// endSession stops the file-less forwards started with session, once its
// event stream has ended.
func (s *Server) endSession(session string) {
	s.mu.Lock()
	runs := s.sessions[session]
	delete(s.sessions, session)
	s.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	s.opMu.Lock()
	for _, run := range runs {
		// Only that very run: its name may be another's by now.
		if s.run(run.path) == run {
			run.m.Stop()
			s.forget(run.path)
			s.mu.Lock()
			delete(s.origins, run.path)
			s.mu.Unlock()
			s.Log.Info("stopped with its session", "file", run.path)
		}
	}
	s.opMu.Unlock()
	s.hub().diff(s)
}

// decodeRequest decodes the JSON body of r (at most limit bytes) into v.
// missing names a field of required that the body leaves out (or sends as
// null), to be answered where the field is checked: a missing settings
// object was refused as `--transport "": want auto...`, which names no
// field the caller sent.
func decodeRequest(r *http.Request, limit int64, v any, required ...string) (missing, err error) {
	var raw json.RawMessage
	if err := json.NewDecoder(io.LimitReader(r.Body, limit)).Decode(&raw); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	for _, f := range required {
		if b, ok := fields[f]; !ok || string(b) == "null" {
			return fmt.Errorf("bad request: the field %q is missing: the request needs it (docs/api/openapi.yaml lists the required fields)", f), nil
		}
	}
	return nil, nil
}
