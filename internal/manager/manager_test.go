package manager

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/proxy"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/supervise"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/testnet"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const ns = "shop"

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// podGetter finds pod/NAME targets in the fake clientset.
type podGetter struct{ c kubernetes.Interface }

func (g podGetter) Get(ctx context.Context, namespace, typeName string) (runtime.Object, error) {
	return g.c.CoreV1().Pods(namespace).Get(ctx, strings.TrimPrefix(typeName, "pod/"), metav1.GetOptions{})
}

// harness is a manager whose sessions are real, through the fake API
// server; it records the session specs it was asked to open.
type harness struct {
	s     *fakeapi.Server
	m     *Manager
	mu    sync.Mutex
	specs map[string]session.Spec
}

func newHarness(t *testing.T, settings spec.Settings) *harness {
	h := &harness{s: fakeapi.New(t), specs: map[string]session.Spec{}}
	conn, err := cluster.New(h.s.Config, h.s.Client, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	h.m = New(Options{
		Settings: settings,
		Log:      discard,
		Open: func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
			h.mu.Lock()
			h.specs[fw.Name] = sp
			h.mu.Unlock()
			// The SPDY transport: the fake API server has no WebSocket.
			sp.Transport = tunnel.SPDY
			return session.Open(ctx, sp, session.Deps{Cluster: conn, Objects: podGetter{h.s.Client},
				Out: io.Discard, ErrOut: io.Discard, Log: discard})
		},
	})
	t.Cleanup(h.m.Stop)
	return h
}

func fw(name, pod string, health *config.Health) config.Forward {
	return config.Forward{Name: name, Namespace: ns, Target: "pod/" + pod, Ports: []portspec.Port{{Remote: "80", LocalSet: true}}, Addresses: []string{"127.0.0.1"}, Health: health}
}

func (h *harness) row(t *testing.T, name string) Row {
	t.Helper()
	for _, r := range h.m.Snapshot() {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no row %q in %v", name, h.m.Snapshot())
	return Row{}
}

// greeting connects to a forward's local address and reads the pod's
// first line.
func greeting(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(line)
}

func TestStartWaitAndServe(t *testing.T) {
	settings := spec.Defaults()
	settings.ReconnectWait = 7 * time.Second
	h := newHarness(t, settings)
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	tcp := &config.Health{Type: "tcp", Interval: 50 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}
	h.m.Start(context.Background(), []config.Forward{fw("api", "web-1", tcp)})
	if err := h.m.WaitGood(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r := h.row(t, "api")
	if r.State != Ready || r.Health != HealthHealthy || r.Pod != "web-1" || len(r.Local) != 1 {
		t.Fatalf("row %+v", r)
	}
	if got := greeting(t, r.Local[0]); got != "web-1" {
		t.Fatalf("the forward reached %q", got)
	}
	// The manager's settings reach the session.
	h.mu.Lock()
	sp := h.specs["api"]
	h.mu.Unlock()
	if sp.ReconnectWait != 7*time.Second || sp.PodRunningTimeout != time.Minute || sp.Transport != tunnel.Auto || sp.DataPath != tunnel.DefaultDataPath {
		t.Fatalf("session spec %+v: want the manager's settings", sp)
	}
}

// A forward that fails leaves the others running, and WaitGood says, at
// its timeout, which one is waiting and why.
func TestOneFailureLeavesTheOthers(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	h.m.Start(context.Background(), []config.Forward{fw("api", "web-1", nil), fw("ghost", "nope", nil)})
	err := h.m.WaitGood(context.Background(), 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "not every forward was healthy after 2s") ||
		!strings.Contains(err.Error(), "ghost: waiting: ") || !strings.Contains(err.Error(), `"nope" not found`) {
		t.Fatalf("err %v", err)
	}
	testnet.WaitFor(t, func() bool { return h.row(t, "api").State == Ready })
	if r := h.row(t, "ghost"); r.State != Retrying || r.LastError == "" || r.RetryAt.IsZero() {
		t.Fatalf("row %+v", r)
	}
	if got := greeting(t, h.row(t, "api").Local[0]); got != "web-1" {
		t.Fatalf("api reached %q", got)
	}
}

// Apply restarts only what changed; unchanged forwards keep their
// listener (and connections); with prune, forwards gone from the file
// stop.
func TestApplyRestartsOnlyWhatChanged(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	ctx := context.Background()
	h.m.Start(ctx, []config.Forward{fw("keep", "web-1", nil), fw("change", "web-1", nil), fw("drop", "web-1", nil)})
	if err := h.m.WaitGood(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	keepAddr := h.row(t, "keep").Local[0]
	held, err := net.Dial("tcp", keepAddr) // a connection that must survive
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	bufio.NewReader(held).ReadString('\n')
	changed := fw("change", "web-1", nil)
	changed.Balance = true
	// The line a forward stands on is not a change.
	kept := fw("keep", "web-1", nil)
	kept.Pos = config.Pos{Line: 40, Index: 3}
	started, restarted, unchanged, stopped := h.m.Apply(ctx, []config.Forward{kept, changed, fw("new", "web-1", nil)}, true)
	if !slices.Equal(started, []string{"new"}) || !slices.Equal(restarted, []string{"change"}) || !slices.Equal(unchanged, []string{"keep"}) || !slices.Equal(stopped, []string{"drop"}) {
		t.Fatalf("started %v restarted %v unchanged %v stopped %v", started, restarted, unchanged, stopped)
	}
	if err := h.m.WaitGood(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := h.row(t, "keep").Local[0]; got != keepAddr {
		t.Fatalf("unchanged forward moved from %s to %s", keepAddr, got)
	}
	if _, err := held.Write([]byte("x")); err != nil {
		t.Fatalf("the unchanged forward's connection broke: %v", err)
	}
	if !slices.Equal(sorted(h.m.Names()), []string{"change", "keep", "new"}) {
		t.Fatalf("running %v", h.m.Names())
	}
	// Without prune, forwards not named keep running.
	_, _, _, stopped = h.m.Apply(ctx, []config.Forward{kept}, false)
	if len(stopped) != 0 || h.m.Len() != 3 {
		t.Fatalf("stopped %v, running %v", stopped, h.m.Names())
	}
	if got := h.m.StopNames([]string{"new"}); !slices.Equal(got, []string{"new"}) || h.m.Len() != 2 {
		t.Fatalf("StopNames: %v, running %v", got, h.m.Names())
	}
}

// Stopping a forward whose session is still opening (waiting for a pod to
// run) is prompt.
func TestStopWhileOpening(t *testing.T) {
	settings := spec.Defaults()
	settings.PodRunningTimeout = time.Hour
	m := New(Options{Settings: settings, Log: discard, Open: func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	m.Start(context.Background(), []config.Forward{fw("a", "x", nil), fw("b", "y", nil)})
	done := make(chan struct{})
	go func() { m.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Stop did not return")
	}
	if m.Len() != 0 {
		t.Fatalf("%d forwards left", m.Len())
	}
}

// Snapshots, applies and restarts from many goroutines at once (run with
// -race): every call sees a consistent manager (each forward once, only
// the forwards applied), each Apply accounts for both forwards and stops
// none, and at the end each runs once and Stop leaves none.
func TestConcurrentUse(t *testing.T) {
	var opened atomic.Int64
	m := New(Options{Settings: spec.Defaults(), Log: discard, Open: func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
		opened.Add(1)
		return nil, errors.New("no cluster here")
	}})
	defer m.Stop()
	both := []config.Forward{fw("a", "x", nil), fw("b", "y", nil)}
	// Each name at most once, and only a or b.
	consistent := func(names []string) error {
		seen := map[string]bool{}
		for _, n := range names {
			if (n != "a" && n != "b") || seen[n] {
				return fmt.Errorf("forwards %v: want a and b at most once each", names)
			}
			seen[n] = true
		}
		return nil
	}
	errs := make(chan error, 8*20)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				switch (i + j) % 4 {
				case 0:
					started, restarted, unchanged, stopped := m.Apply(context.Background(), both, true)
					if got := sorted(slices.Concat(started, restarted, unchanged)); len(stopped) > 0 || !slices.Equal(got, []string{"a", "b"}) {
						errs <- fmt.Errorf("Apply: started %v, restarted %v, unchanged %v, stopped %v; want a and b once, none stopped", started, restarted, unchanged, stopped)
					}
				case 1:
					var names []string
					for _, r := range m.Snapshot() {
						names = append(names, r.Name)
					}
					if err := consistent(names); err != nil {
						errs <- fmt.Errorf("Snapshot: %w", err)
					}
				case 2:
					if err := consistent(m.RestartNames(context.Background(), []string{"a"})); err != nil {
						errs <- fmt.Errorf("RestartNames: %w", err)
					}
				case 3:
					m.WaitGood(context.Background(), time.Millisecond)
					if err := consistent(m.Names()); err != nil {
						errs <- fmt.Errorf("Names: %w", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := sorted(m.Names()); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("running %v after the storm, want [a b] once each", got)
	}
	if opened.Load() == 0 {
		t.Error("no forward was ever opened: the test proves nothing")
	}
	m.Stop()
	if n := m.Len(); n != 0 {
		t.Errorf("%d forwards left after Stop", n)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// TestAutoAddressFallsBackWhereTheSystemLacksIt: a forward whose own
// address the system does not have (macOS without an lo0 alias; here a
// TEST-NET address) listens on 127.0.0.1 with a free port, and serves.
func TestAutoAddressFallsBackWhereTheSystemLacksIt(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.s.Pod(t, ns, "db-0", nil, true, fakeapi.Echo(t, "db-0"))
	f := fw("db", "db-0", nil)
	f.Addresses, f.AutoAddress = []string{"192.0.2.77"}, true
	f.Ports = []portspec.Port{{Remote: "5432", Local: 5432, LocalSet: true}}
	h.m.Start(context.Background(), []config.Forward{f})
	if err := h.m.WaitGood(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r := h.row(t, "db")
	if len(r.Local) != 1 || !strings.HasPrefix(r.Local[0], "127.0.0.1:") || r.Local[0] == "127.0.0.1:5432" {
		t.Fatalf("listening on %v, want 127.0.0.1 with a free port", r.Local)
	}
	if got := greeting(t, r.Local[0]); got != "db-0" {
		t.Fatalf("greeting %q", got)
	}
}

// A live session probes the API server's liveness every 5 s; the fake
// answers, and the forward goes on serving past the first probe.
func TestLiveSessionOutlivesTheLivenessProbe(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	h.m.Start(context.Background(), []config.Forward{fw("api", "web-1", nil)})
	if err := h.m.WaitGood(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	testnet.WaitFor(t, func() bool { return h.s.Livez.Load() > 0 })
	r := h.row(t, "api")
	if r.State != Ready {
		t.Fatalf("row %+v after the first liveness probe", r)
	}
	if got := greeting(t, r.Local[0]); got != "web-1" {
		t.Fatalf("the forward reached %q", got)
	}
}

// A tcp check passes only when the pod's server accepts the connection: a
// port nothing listens on is unhealthy, and WaitGood names the refusal,
// though the kubelet's refusal would otherwise be held back by the replay
// that client connections get. A server that accepts without a word
// passes.
func TestTCPCheckNeedsAListener(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.s.Pod(t, ns, "dead-1", nil, true, fakeapi.Closed(t))
	h.s.Pod(t, ns, "mute-1", nil, true, mute(t))
	var deafConns atomic.Int64
	h.s.Pod(t, ns, "deaf-1", nil, true, deaf(t, &deafConns))
	tcp := &config.Health{Type: "tcp", Interval: 50 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}
	short := &config.Health{Type: "tcp", Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond, FailureThreshold: 1}
	get := &config.Health{Type: "http", Path: "/", StatusMin: 200, StatusMax: 399, Interval: 50 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}
	h.m.Start(context.Background(), []config.Forward{fw("dead", "dead-1", tcp), fw("mute", "mute-1", tcp), fw("deaf", "deaf-1", short), fw("deadweb", "dead-1", get)})
	err := h.m.WaitGood(context.Background(), 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "dead: unhealthy: pod shop/dead-1 refused the connection to port 80: nothing listens there") {
		t.Fatalf("WaitGood = %v, want the refused port named", err)
	}
	// An http check names the refusal too.
	if !strings.Contains(err.Error(), "deadweb: unhealthy: GET /: pod shop/dead-1 refused the connection to port 80") {
		t.Fatalf("WaitGood = %v, want the http check's refusal named", err)
	}
	// No verdict within the timeout (the kubelet here waits for the pod,
	// which neither answers nor closes) is no proof of a listener.
	if !strings.Contains(err.Error(), "deaf: unhealthy: ") || strings.Contains(err.Error(), "unhealthy: unhealthy") ||
		!strings.Contains(err.Error(), "no verdict on port 80 within 300ms") {
		t.Fatalf("WaitGood = %v, want deaf unhealthy for want of a verdict", err)
	}
	if strings.Contains(err.Error(), "mute:") {
		t.Fatalf("WaitGood = %v: a server that accepts is healthy", err)
	}
	// Each check tests the pod again: the last check's connection, which
	// the pod held open, ended with its check.
	testnet.Within(t, 5*time.Second, "three checks of the deaf pod", func() bool { return deafConns.Load() >= 3 })
	if r := h.row(t, "deaf"); strings.Contains(r.HealthNote, "still open") {
		t.Errorf("deaf: %s", r.HealthNote)
	}
	if r := h.row(t, "mute"); !r.Good() {
		t.Fatalf("row %+v", r)
	}
	// A check's connection the pod holds open does not hold Stop.
	start := time.Now()
	h.m.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %s", d)
	}
}

// deaf is a TCP server that accepts and then neither reads, writes nor
// closes until the test ends.
func deaf(t *testing.T, accepted *atomic.Int64) string {
	t.Helper()
	quiet := make(chan struct{})
	addr := fakeapi.Serve(t, func(net.Conn) { accepted.Add(1); <-quiet })
	t.Cleanup(func() { close(quiet) })
	return addr
}

// mute is a TCP server that accepts, sends nothing, and closes when its
// client is done.
func mute(t *testing.T) string {
	t.Helper()
	return fakeapi.Serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// fast retries in tests: no test waits for a real backoff.
var fast = supervise.Policy{Initial: time.Millisecond, Max: 20 * time.Millisecond, Permanent: time.Hour, Stable: time.Hour}

// A forward whose pod does not exist yet waits, says why, and serves once
// the pod runs, without a restart.
func TestForwardRetriesUntilItsPodRuns(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.m.o.Retry = fast
	h.m.Start(context.Background(), []config.Forward{fw("api", "web-1", nil)})
	testnet.WaitFor(t, func() bool {
		r := h.row(t, "api")
		return r.State == Retrying && strings.Contains(r.LastError, `"web-1" not found`) && !r.RetryAt.IsZero()
	})
	err := h.m.WaitGood(context.Background(), 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), `api: waiting: `) || !strings.Contains(err.Error(), `"web-1" not found`) {
		t.Fatalf("WaitGood = %v, want the wait and its reason", err)
	}
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	if err := h.m.WaitGood(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r := h.row(t, "api")
	if r.LastError != "" || !r.RetryAt.IsZero() {
		t.Fatalf("row %+v: a ready forward keeps no retry", r)
	}
	if got := greeting(t, r.Local[0]); got != "web-1" {
		t.Fatalf("the forward reached %q", got)
	}
}

// An error that waiting cannot heal is shown as failed, fails WaitGood at
// once, and is retried only slowly.
func TestPermanentErrorIsRetriedSlowly(t *testing.T) {
	_, noContext := clientcmd.NewNonInteractiveClientConfig(clientcmdapi.Config{}, "nope", &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	for _, tc := range []struct {
		name string
		err  error
		says string
	}{
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "pods/portforward"}, "web-1", errors.New("no RBAC")), "forbidden"},
		// As the opener gives them: explained, with the doctor command.
		{"no such port", fmt.Errorf("%w (diagnose: kpf doctor)", fmt.Errorf("service/web: %w", target.ErrNoPort)), "no such port"},
		{"a port held", fmt.Errorf("listen 127.0.0.1:8080: %w", &net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}), "address already in use"},
		{"no such context", fmt.Errorf("%w (check --kubeconfig, KUBECONFIG and --context)", noContext), "context was not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opens atomic.Int64
			m := New(Options{Settings: spec.Defaults(), Log: discard, Retry: supervise.Policy{Initial: time.Millisecond, Max: time.Millisecond, Permanent: time.Hour, Stable: time.Hour},
				Open: func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
					opens.Add(1)
					return nil, tc.err
				}})
			defer m.Stop()
			m.Start(context.Background(), []config.Forward{fw("api", "web-1", nil)})
			start := time.Now()
			err := m.WaitGood(context.Background(), time.Minute)
			if err == nil || !strings.Contains(err.Error(), "api: failed: ") || !strings.Contains(err.Error(), tc.says) || time.Since(start) > 10*time.Second {
				t.Fatalf("WaitGood = %v after %s, want the error at once", err, time.Since(start))
			}
			if r := m.Snapshot()[0]; r.State != Failed || time.Until(r.RetryAt) < 50*time.Minute {
				t.Fatalf("row %+v, want failed and retried in an hour", r)
			}
			if n := opens.Load(); n != 1 {
				t.Fatalf("opened %d times, want 1 (then an hour's wait)", n)
			}
		})
	}
}

// A proxy entry that fails to open is opened again too.
func TestProxyRetries(t *testing.T) {
	s := fakeapi.New(t)
	var opens atomic.Int64
	m := New(Options{Settings: spec.Defaults(), Log: discard, Retry: fast,
		OpenProxy: func(ctx context.Context, fw config.Forward, st spec.Settings) (*proxy.Proxy, net.Listener, error) {
			if opens.Add(1) < 3 {
				return nil, nil, errors.New("no cluster yet")
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, nil, err
			}
			return proxy.New(proxy.Options{Client: s.Client, Namespace: ns, Log: discard}), ln, nil
		}})
	defer m.Stop()
	px := config.Forward{Name: "px", Proxy: &config.Proxy{}}
	m.Start(context.Background(), []config.Forward{px})
	if err := m.WaitGood(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if r := m.Snapshot()[0]; len(r.Local) != 1 || opens.Load() != 3 {
		t.Fatalf("row %+v after %d opens", r, opens.Load())
	}
}

// Stop joins every goroutine a forward started (the supervisor, the
// session, its health and state loops, the health checks' connections),
// forwards that serve and forwards that wait alike, and is prompt.
func TestStopLeavesNoGoroutine(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.m.o.Retry = fast
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	h.s.Pod(t, ns, "mute-1", nil, true, mute(t))
	tcp := &config.Health{Type: "tcp", Interval: 10 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}
	web := &config.Health{Type: "http", Path: "/", StatusMin: 200, StatusMax: 399, Interval: 10 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}
	h.m.Start(context.Background(), []config.Forward{fw("api", "web-1", tcp), fw("mute", "mute-1", web), fw("ghost", "nope", tcp)})
	testnet.WaitFor(t, func() bool {
		return h.row(t, "api").Good() && h.row(t, "mute").State == Ready && h.row(t, "ghost").State == Retrying
	})
	start := time.Now()
	h.m.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %s", d)
	}
	// What the manager starts, Stop has joined.
	if left := goroutinesIn("internal/manager.", "internal/supervise."); left != "" {
		t.Fatalf("goroutines left after Stop:\n%s", left)
	}
	// The sessions' own (follower, tunnels) end with their context.
	testnet.WaitFor(t, func() bool {
		return goroutinesIn("internal/session.", "internal/follow.", "internal/tunnel.", "internal/forward.") == ""
	})
}

// goroutinesIn are the stacks of the goroutines with a frame in one of
// the packages (by a part of their path), but none in a test file.
func goroutinesIn(pkgs ...string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:goruntime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "_test.go") {
			continue // the test's own: its servers, and this one
		}
		for _, p := range pkgs {
			if strings.Contains(g, "kpf/"+p) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// WaitGood names the timeout as the user gave it, though the daemon
// passes what is left of it ("after 9.999999761s" for --timeout 10s).
func TestWaitGoodNamesTheTimeoutAsGiven(t *testing.T) {
	m := New(Options{Log: discard, Open: func(context.Context, config.Forward, session.Spec) (*session.Session, error) {
		return nil, errors.New("no cluster")
	}})
	m.Start(context.Background(), []config.Forward{fw("api", "web-1", nil)})
	defer m.Stop()
	err := m.WaitGood(context.Background(), 300*time.Millisecond-250*time.Nanosecond)
	if err == nil || !strings.Contains(err.Error(), "not every forward was healthy after 300ms:\n  api: waiting: no cluster") {
		t.Fatalf("WaitGood = %v", err)
	}
}

// A forward whose target has no running pod yet (a deployment at 0
// replicas, a pod still Pending) waits for one as it opens; meanwhile its
// row and --wait's summary say so and why, instead of "starting".
func TestOpeningSaysWhatItWaitsFor(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	pending := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pend-1", Namespace: ns}, Status: corev1.PodStatus{Phase: corev1.PodPending}}
	if _, err := h.s.Client.CoreV1().Pods(ns).Create(context.Background(), pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.m.Start(context.Background(), []config.Forward{fw("pend", "pend-1", nil)})
	err := h.m.WaitGood(context.Background(), time.Second)
	want := `pend: waiting for pod: no running pod for pod/pend-1 in namespace "shop" yet (it is Pending); waiting up to 1m0s`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("WaitGood = %v, want %q", err, want)
	}
	if r := h.row(t, "pend"); r.State != Waiting || !strings.Contains(r.LastError, "it is Pending") {
		t.Fatalf("row %+v: want waiting for pod, and why", r)
	}
}
