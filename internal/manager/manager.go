// Package manager runs many forwards from a file at once: each forward is a
// session with its own state, health checks and counters, run under a
// supervisor (internal/supervise) that opens it again after a failure, so
// one forward's failure (a busy port, a missing target, a cluster not
// reachable yet) leaves the others running and heals when its cause goes.
// It reports state changes as events and status as snapshots. What a
// forward starts (its session, health and state loops) ends with it, and
// stopping joins it all.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/proxy"
	"github.com/kpf-dev/kpf/internal/supervise"
	"github.com/kpf-dev/kpf/internal/target"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/metrics"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
)

// States of a forward.
const (
	Starting     = "starting"
	Ready        = "ready"
	Waiting      = "waiting for pod"
	Reconnecting = "reconnecting"
	// Retrying: it failed to open, or its session ended, and it opens
	// again after a wait; the row's LastError says why.
	Retrying = "waiting"
	// Failed: as Retrying, for an error waiting cannot heal (a bad port
	// spec, Forbidden, a local port another process holds): retried
	// slowly, in case its cause is fixed meanwhile.
	Failed  = "failed"
	Stopped = "stopped"
)

// Health values; a forward without a check is "-".
const (
	HealthNone      = "-"
	HealthUnknown   = "unknown"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Opener opens a session for a forward (kube contexts and error
// explanations live with the caller).
type Opener func(ctx context.Context, fw config.Forward, spec session.Spec) (*session.Session, error)

// ProxyOpener opens a proxy of the file (fw.Proxy set): listening, to be
// served by Serve.
type ProxyOpener func(ctx context.Context, fw config.Forward, s spec.Settings) (*proxy.Proxy, net.Listener, error)

// DiscoverOpener runs a discover entry (fw.Discover set) until ctx ends:
// it calls apply with every new set of forwards the entry should run, and
// a note on what it found. It returns early only for an error.
type DiscoverOpener func(ctx context.Context, fw config.Forward, apply func(fws []config.Forward, note string)) error

// Options configure a Manager.
type Options struct {
	Open         Opener
	OpenProxy    ProxyOpener
	OpenDiscover DiscoverOpener
	Settings     spec.Settings
	// Retry is how each forward is opened again after a failure;
	// supervise.Defaults() when its Initial is 0.
	Retry supervise.Policy
	Log   *slog.Logger
	// Events receives a line for every state or health change, if set.
	Events func(Event)
}

// Event is a change worth telling.
type Event struct {
	Time    time.Time
	Forward string
	Message string
}

// Manager runs forwards.
type Manager struct {
	o Options
	// ops makes Apply, RestartNames, StopNames and a discover entry's
	// applies run one at a time: each reads the running set, then changes
	// it, and two of them interleaved would start a forward twice
	// (TestConcurrentUse). A channel of one, so that a discover entry
	// being stopped by one of them gives up waiting for it.
	ops      chan struct{}
	mu       sync.Mutex
	forwards []*Forward
	changed  chan struct{}
}

// Forward is one running forward.
type Forward struct {
	Spec config.Forward

	mu         sync.Mutex
	state      string
	health     string
	healthNote string
	err        string
	retryAt    time.Time // when a Retrying or Failed forward opens again
	sess       *session.Session
	px         *proxy.Proxy // for a proxy entry, once it listens
	pxAddr     string
	cancel     context.CancelFunc
	done       chan struct{}
	// life is the forward's context: a discover entry starts its
	// forwards under it, so that they end with it.
	life context.Context
}

// New returns a Manager.
func New(o Options) *Manager {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Retry.Initial == 0 {
		o.Retry = supervise.Defaults()
	}
	return &Manager{o: o, changed: make(chan struct{}), ops: make(chan struct{}, 1)}
}

func (m *Manager) lockOps()   { m.ops <- struct{}{} }
func (m *Manager) unlockOps() { <-m.ops }

// Start starts each forward in the background; Stop or ctx ends them.
func (m *Manager) Start(ctx context.Context, fws []config.Forward) {
	for _, spec := range fws {
		f := &Forward{Spec: spec, state: Starting, health: HealthNone, done: make(chan struct{})}
		if spec.Health != nil {
			f.health = HealthUnknown
		}
		fctx, cancel := context.WithCancel(ctx)
		f.cancel, f.life = cancel, fctx
		m.mu.Lock()
		m.forwards = append(m.forwards, f)
		m.mu.Unlock()
		go m.run(fctx, f)
	}
}

// Stop stops every forward and waits for them.
func (m *Manager) Stop() { m.StopNames(nil) }

func (m *Manager) event(f *Forward, format string, a ...any) {
	e := Event{Time: time.Now(), Forward: f.Spec.Name, Message: fmt.Sprintf(format, a...)}
	if m.o.Events != nil {
		m.o.Events(e)
	}
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *Manager) setState(f *Forward, state, why string) {
	f.mu.Lock()
	old := f.state
	f.state = state
	if state == Ready {
		f.err, f.retryAt = "", time.Time{}
	}
	f.mu.Unlock()
	if old == state {
		return
	}
	switch state {
	case Ready:
		m.event(f, "ready: %s", why)
	default:
		m.event(f, "%s%s", state, prefix(": ", why))
	}
}

func prefix(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

// run runs a forward under its supervisor until ctx ends.
func (m *Manager) run(ctx context.Context, f *Forward) {
	defer close(f.done)
	defer func() {
		f.mu.Lock()
		f.state = Stopped
		f.mu.Unlock()
	}()
	once := m.serveOnce
	switch {
	case f.Spec.Proxy != nil:
		once = m.proxyOnce
	case f.Spec.Discover != nil:
		once = m.discoverOnce
	}
	m.o.Retry.Run(ctx, func(ctx context.Context, up func()) error { return once(ctx, f, up) }, func(r supervise.Retry) {
		state, every := Retrying, ""
		if r.Permanent {
			state, every = Failed, fmt.Sprintf(", every %s", m.o.Retry.Permanent)
		}
		f.mu.Lock()
		f.err, f.retryAt = r.Err.Error(), time.Now().Add(r.In)
		old := f.state
		f.state = state
		if f.Spec.Health != nil {
			f.health, f.healthNote = HealthUnknown, ""
		}
		f.mu.Unlock()
		m.o.Log.Info("forward down", "forward", f.Spec.Name, "err", r.Err, "retryIn", r.In.Round(time.Millisecond), "permanent", r.Permanent)
		if old != state || r.Failures == 1 {
			m.event(f, "%s: %s (trying again in %s%s)", state, r.Err, r.In.Round(time.Second), every)
		}
	})
}

// serveOnce opens the forward's session and serves it until ctx ends or
// the session does; what it starts, it joins.
func (m *Manager) serveOnce(ctx context.Context, f *Forward, up func()) error {
	sp, err := spec.Session(f.Spec, m.o.Settings)
	if err != nil {
		return supervise.Permanent(err)
	}
	// Opening waits up to --pod-running-timeout for a running pod (a
	// deployment at 0 replicas): the row says so meanwhile, instead of
	// "starting" and no reason.
	sp.Waiting = func(why string) {
		f.mu.Lock()
		f.err = why
		f.mu.Unlock()
		m.setState(f, Waiting, why)
	}
	sess, err := m.o.Open(ctx, f.Spec, sp)
	if err != nil {
		return openError(err)
	}
	f.mu.Lock()
	f.sess = sess
	f.mu.Unlock()
	up()
	st := sess.Status()
	m.setState(f, Ready, readyLine(sess, st.Pod))
	loops, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if f.Spec.Health != nil {
		wg.Go(func() { m.checkHealth(loops, f, sess) })
	}
	wg.Go(func() { m.watchState(loops, f, sess) })
	err = sess.Serve(ctx)
	stop()
	wg.Wait()
	f.mu.Lock()
	f.sess = nil
	f.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, forward.ErrIdle):
		return nil // done as asked: idle for its idle timeout
	case err == nil:
		return errors.New("the forward ended")
	}
	return err
}

// openError marks the errors of opening a forward that waiting cannot heal.
func openError(err error) error {
	switch {
	case apierrors.IsForbidden(err), apierrors.IsInvalid(err), apierrors.IsBadRequest(err),
		errors.Is(err, forward.ErrNoListener), errors.Is(err, syscall.EADDRINUSE), errors.Is(err, syscall.EACCES),
		errors.Is(err, target.ErrNoPort), errors.Is(err, target.ErrUDPOnly), errors.Is(err, target.ErrNoSelector),
		configInvalid(err):
		return supervise.Permanent(err)
	}
	return err
}

// configInvalid: the kubeconfig names no such context (or is broken),
// which only an edit of it heals.
func configInvalid(err error) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		if clientcmd.IsConfigurationInvalid(err) {
			return true
		}
	}
	return false
}

// proxyOnce opens a proxy entry and serves it until ctx ends.
func (m *Manager) proxyOnce(ctx context.Context, f *Forward, up func()) error {
	if m.o.OpenProxy == nil {
		return supervise.Permanent(errors.New("proxies are not run here"))
	}
	px, ln, err := m.o.OpenProxy(ctx, f.Spec, m.o.Settings)
	if err != nil {
		return openError(err)
	}
	f.mu.Lock()
	f.px, f.pxAddr = px, ln.Addr().String()
	f.mu.Unlock()
	up()
	m.setState(f, Ready, "proxy on "+ln.Addr().String())
	err = px.Serve(ctx, ln)
	f.mu.Lock()
	f.px, f.pxAddr = nil, ""
	f.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return nil
	case err == nil:
		return errors.New("the proxy stopped")
	}
	return err
}

// stateFallback is how often watchState looks without being told: for
// what only time changes (a retry's wait running out).
const stateFallback = 5 * time.Second

// watchState turns the session's own state into events as it changes. It
// waits to be told (Session.Changed) rather than looking four times a
// second: that timer per forward woke an idle daemon of 200 forwards 800
// times a second, 2.4% of a core.
func (m *Manager) watchState(ctx context.Context, f *Forward, sess *session.Session) {
	t := time.NewTicker(stateFallback)
	defer t.Stop()
	changed := sess.Changed()
	lastPod := sess.Status().Pod
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
		changed = sess.Changed()
		st := sess.Status()
		if st.State == Failed {
			continue // the session is ending: the supervisor says what next
		}
		if st.State == Ready && st.Pod != lastPod && st.Pod != "" {
			m.event(f, "now on pod %s (was %s)", st.Pod, lastPod)
			lastPod = st.Pod
		}
		why := ""
		if st.State == Ready {
			// Ready again after reconnecting says where, as the first
			// time did (it used to say "ready: " and nothing).
			why = readyLine(sess, st.Pod)
		}
		m.setState(f, st.State, why)
	}
}

// readyLine is what a ready forward's event says: its addresses, target
// and pod.
func readyLine(sess *session.Session, pod string) string {
	return fmt.Sprintf("%s -> %s %s", strings.Join(sess.Addrs(), ", "), sess.Target.Ref, pod)
}

func (m *Manager) checkHealth(ctx context.Context, f *Forward, sess *session.Session) {
	h := f.Spec.Health
	fails := 0
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var err error
		if h.Type == "http" {
			err = sess.CheckHTTP(ctx, h.Path, h.StatusMin, h.StatusMax, h.Timeout)
		} else {
			err = sess.CheckTCP(ctx, h.Timeout)
		}
		if ctx.Err() != nil {
			return // the forward is stopping: no verdict
		}
		f.mu.Lock()
		old := f.health
		switch {
		case err == nil:
			fails = 0
			f.health, f.healthNote = HealthHealthy, ""
		default:
			fails++
			f.healthNote = err.Error()
			if fails >= h.FailureThreshold {
				f.health = HealthUnhealthy
			}
		}
		now, note := f.health, f.healthNote
		f.mu.Unlock()
		if now != old {
			m.event(f, "%s%s", now, prefix(": ", note))
		}
		t.Reset(h.Interval)
	}
}

// Row is one forward in a status snapshot.
type Row struct {
	Name string `json:"name"`
	// File, Cluster and User are filled in by the daemon: which file the
	// forward comes from, and who it connects as.
	File      string   `json:"file,omitempty"`
	Context   string   `json:"context,omitempty"`
	Cluster   string   `json:"cluster,omitempty"`
	User      string   `json:"user,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	Target    string   `json:"target"`
	Ports     []string `json:"ports,omitempty"` // as applied: [LOCAL:]REMOTE[/udp]
	Pod       string   `json:"pod,omitempty"`
	Local     []string `json:"local,omitempty"`
	// Addresses are the ones the file gives it (an auto address as the
	// address it stands for), listening or not.
	Addresses  []string `json:"addresses,omitempty"`
	State      string   `json:"state"`
	Health     string   `json:"health"`
	HealthNote string   `json:"healthDetail,omitempty"`
	Open       int64    `json:"openConnections"`
	Total      int64    `json:"connections"`
	Failed     int64    `json:"failedConnections"`
	BytesIn    int64    `json:"bytesIn"`  // to the local clients, counted as they move
	BytesOut   int64    `json:"bytesOut"` // to the pod
	RateIn     int64    `json:"bytesInPerSecond"`
	RateOut    int64    `json:"bytesOutPerSecond"`
	Reconnects int64    `json:"reconnects"`
	Switches   int64    `json:"podSwitches"`
	HTTPLog    string   `json:"httpLog,omitempty"` // where its HTTP requests are logged
	// RetryAt is when a forward that is waiting (or failed) opens again;
	// LastError says why it is down.
	RetryAt time.Time `json:"retryAt,omitzero"`
	// Its /udp ports: local peers with a flow now, datagrams each way, and
	// the relay pod.
	UDPPeers     int    `json:"udpPeers,omitempty"`
	DatagramsIn  int64  `json:"datagramsIn,omitempty"`
	DatagramsOut int64  `json:"datagramsOut,omitempty"`
	Relay        string `json:"relayPod,omitempty"`
	LastError    string `json:"lastError,omitempty"`
	// NotListening: addresses of localhost a port listens without, and
	// why.
	NotListening []string `json:"notListening,omitempty"`
}

// Snapshot returns every forward's status, in file order.
func (m *Manager) Snapshot() []Row {
	m.mu.Lock()
	fws := append([]*Forward(nil), m.forwards...)
	m.mu.Unlock()
	rows := make([]Row, 0, len(fws))
	for _, f := range fws {
		f.mu.Lock()
		r := Row{Name: f.Spec.Name, Context: f.Spec.Context, Namespace: f.Spec.Namespace, Target: f.Spec.Target, HTTPLog: f.Spec.HTTPLog,
			Addresses: f.Spec.Addresses, State: f.state, Health: f.health, HealthNote: f.healthNote, LastError: f.err, RetryAt: f.retryAt}
		for _, p := range f.Spec.Ports {
			r.Ports = append(r.Ports, p.String())
		}
		sess, px, pxAddr := f.sess, f.px, f.pxAddr
		f.mu.Unlock()
		if px != nil {
			st := px.Status()
			r.Local, r.Open, r.Total, r.Failed, r.BytesIn, r.BytesOut = []string{pxAddr}, st.Open, st.Total, st.Failed+st.Refused, st.BytesIn, st.BytesOut
		}
		if sess != nil {
			st := sess.Status()
			r.Pod, r.Open, r.Total, r.Failed, r.BytesIn, r.BytesOut = st.Pod, st.Open, st.Total, st.Failed, st.BytesIn, st.BytesOut
			r.RateIn, r.RateOut, r.Reconnects, r.Switches = st.RateIn, st.RateOut, st.Reconnects, st.Switches
			r.Local = sess.Addrs()
			r.UDPPeers, r.DatagramsIn, r.DatagramsOut, r.Relay = st.UDP.Peers, st.UDP.DatagramsIn, st.UDP.DatagramsOut, st.UDP.Relay
			r.NotListening = st.NotListening
			if r.Namespace == "" {
				r.Namespace = sess.Target.Namespace
			}
			if r.LastError == "" {
				r.LastError = st.LastError
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// Metrics are the forwards as the metrics endpoint shows them, file
// naming where they come from.
func (m *Manager) Metrics(file string) []metrics.Forward {
	m.mu.Lock()
	fws := append([]*Forward(nil), m.forwards...)
	m.mu.Unlock()
	out := make([]metrics.Forward, 0, len(fws))
	for _, f := range fws {
		f.mu.Lock()
		mf := metrics.Forward{Name: f.Spec.Name, File: file, Namespace: f.Spec.Namespace, Target: f.Spec.Target, Ready: f.state == Ready}
		if f.Spec.Health != nil {
			ok := f.health == HealthHealthy
			mf.Healthy = &ok
		}
		sess, px := f.sess, f.px
		f.mu.Unlock()
		if px != nil {
			st := px.Status()
			mf.Proxy = &st
		}
		if sess != nil {
			sm := sess.Metrics()
			mf.Session, mf.Pod = &sm, sm.Pod
			if mf.Namespace == "" {
				mf.Namespace = sess.Target.Namespace
			}
		}
		out = append(out, mf)
	}
	return out
}

// Good reports whether a row is ready and, if checked, healthy.
func (r Row) Good() bool {
	return r.State == Ready && (r.Health == HealthNone || r.Health == HealthHealthy)
}

// WaitGood waits until every forward is ready and healthy; on timeout it
// returns an error that names the ones that are not, and why.
func (m *Manager) WaitGood(ctx context.Context, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		rows := m.Snapshot()
		var bad []string
		for _, r := range rows {
			if !r.Good() {
				bad = append(bad, describeBad(r))
			}
		}
		if len(bad) == 0 {
			return nil
		}
		for _, r := range rows {
			if r.State == Failed {
				return fmt.Errorf("not every forward is up:\n  %s", strings.Join(bad, "\n  "))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			sort.Strings(bad)
			// The daemon passes what is left of the user's --timeout: not
			// "after 9.999999761s" for 10s.
			return fmt.Errorf("not every forward was healthy after %s:\n  %s", timeout.Round(time.Millisecond), strings.Join(bad, "\n  "))
		case <-changed:
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func describeBad(r Row) string {
	switch {
	case r.State == Failed || r.State == Retrying:
		return fmt.Sprintf("%s: %s: %s", r.Name, r.State, r.LastError)
	case r.State != Ready:
		return fmt.Sprintf("%s: %s%s", r.Name, r.State, prefix(": ", r.LastError))
	default:
		return fmt.Sprintf("%s: %s%s", r.Name, r.Health, prefix(": ", r.HealthNote))
	}
}

// Apply makes the running set match fws: new forwards start, forwards whose
// spec changed restart, unchanged ones keep running (and their
// connections). With prune, running forwards not in fws stop.
func (m *Manager) Apply(ctx context.Context, fws []config.Forward, prune bool) (started, restarted, unchanged, stopped []string) {
	m.lockOps()
	defer m.unlockOps()
	want := map[string]config.Forward{}
	for _, fw := range fws {
		want[fw.Name] = fw
	}
	m.mu.Lock()
	running := map[string]*Forward{}
	for _, f := range m.forwards {
		running[f.Spec.Name] = f
	}
	m.mu.Unlock()
	var toStop []*Forward
	var toStart []config.Forward
	for _, fw := range fws {
		f, ok := running[fw.Name]
		switch {
		case !ok:
			started = append(started, fw.Name)
			toStart = append(toStart, fw)
		case !sameSpec(f.Spec, fw) || f.stateIs(Failed) || f.stateIs(Stopped):
			restarted = append(restarted, fw.Name)
			toStop = append(toStop, f)
			toStart = append(toStart, fw)
		default:
			unchanged = append(unchanged, fw.Name)
		}
	}
	if prune {
		for name, f := range running {
			if f.Spec.Owner != "" {
				continue // its discover entry's: stopped with it
			}
			if _, ok := want[name]; !ok {
				stopped = append(stopped, name)
				toStop = append(toStop, f)
			}
		}
	}
	m.stop(toStop)
	m.Start(ctx, toStart)
	return
}

// StopNames stops the named forwards (all when names is empty) and forgets
// them; it returns the names it stopped.
func (m *Manager) StopNames(names []string) []string {
	m.lockOps()
	defer m.unlockOps()
	fs := m.stop(m.pick(names))
	var out []string
	for _, f := range fs {
		out = append(out, f.Spec.Name)
	}
	return out
}

// RestartNames restarts the named forwards (all when names is empty).
func (m *Manager) RestartNames(ctx context.Context, names []string) []string {
	m.lockOps()
	defer m.unlockOps()
	fs := m.pick(names)
	var specs []config.Forward
	for _, f := range fs {
		specs = append(specs, f.Spec)
	}
	m.stop(fs)
	m.Start(ctx, specs)
	var out []string
	for _, s := range specs {
		out = append(out, s.Name)
	}
	return out
}

// Len is how many forwards the manager runs.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.forwards)
}

// Names lists the forwards the manager runs.
func (m *Manager) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n []string
	for _, f := range m.forwards {
		n = append(n, f.Spec.Name)
	}
	return n
}

// Specs are the forwards the manager runs, in order; with live, only
// those that have not failed (a failed forward holds no port).
func (m *Manager) Specs(live bool) []config.Forward {
	m.mu.Lock()
	fs := slices.Clone(m.forwards)
	m.mu.Unlock()
	var out []config.Forward
	for _, f := range fs {
		if !live || !f.stateIs(Failed) {
			out = append(out, f.Spec)
		}
	}
	return out
}

func (m *Manager) pick(names []string) []*Forward {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(names) == 0 {
		return append([]*Forward(nil), m.forwards...)
	}
	var out []*Forward
	for _, f := range m.forwards {
		for _, n := range names {
			if f.Spec.Name == n {
				out = append(out, f)
			}
		}
	}
	return out
}

// stop cancels forwards, waits for them and removes them; a discover
// entry's forwards go with it. It returns what it stopped.
func (m *Manager) stop(fs []*Forward) []*Forward {
	m.mu.Lock()
	for _, f := range fs {
		if f.Spec.Discover == nil {
			continue
		}
		for _, o := range m.forwards {
			if o.Spec.Owner == f.Spec.Name && !slices.Contains(fs, o) {
				fs = append(fs, o)
			}
		}
	}
	m.mu.Unlock()
	for _, f := range fs {
		f.cancel()
	}
	for _, f := range fs {
		<-f.done
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forwards = slices.DeleteFunc(m.forwards, func(f *Forward) bool { return slices.Contains(fs, f) })
	return fs
}

func (f *Forward) stateIs(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == s
}

// sameSpec compares what a forward does, not where it was written.
func sameSpec(a, b config.Forward) bool {
	a.Pos, b.Pos = config.Pos{}, config.Pos{}
	return reflect.DeepEqual(a, b)
}
