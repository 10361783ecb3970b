package follow

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/testnet"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

const ns = "shop"

var web = map[string]string{"app": "web"}

// newFollower follows the pods labelled app=web through the fake API
// server; it stops with the test (or with the returned cancel).
func newFollower(t *testing.T, s *fakeapi.Server, tweak func(*Options)) (*Follower, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	o := Options{
		Namespace:     ns,
		Ref:           "deployment/web",
		Selector:      labels.SelectorFromSet(web),
		Client:        s.Client,
		ReconnectWait: 5 * time.Second,
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		Watches:       NewWatches(s.Client), // as production: the cluster's shared watches
		Dial: func(ctx context.Context, pod string) (*tunnel.Conn, error) {
			return tunnel.Dial(ctx, tunnel.APIServer{Config: s.Config}, ns, pod, tunnel.SPDY, tunnel.OwnDataPath)
		},
	}
	if tweak != nil {
		tweak(&o)
	}
	f, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return f, cancel
}

// result is what one connection through the follower got.
type result struct {
	pod string // the first line the pod's echo server sent
	err error
}

// connect sends one connection through f and reads which pod answered,
// then checks the echo.
func connect(t *testing.T, ctx context.Context, f *Follower) result {
	t.Helper()
	client, server := testnet.TCPPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := f.Forward(ctx, server, 80, nil)
		server.Close()
		done <- err
	}()
	r := bufio.NewReader(client)
	line, err := r.ReadString('\n')
	if err != nil {
		client.Close()
		return result{err: errors.Join(err, <-done)}
	}
	io.WriteString(client, "ping")
	client.CloseWrite()
	rest, _ := io.ReadAll(r)
	if string(rest) != "ping" {
		t.Errorf("echo through %s: got %q, want ping", line, rest)
	}
	return result{pod: strings.TrimSpace(line), err: <-done}
}

func TestChoosesKubectlsPodAmongReady(t *testing.T) {
	s := fakeapi.New(t)
	// web-1 is older, but web-2 is the only ready one; web-3 is not ours.
	s.Pod(t, ns, "web-1", web, false, fakeapi.Echo(t, "web-1"))
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	s.Pod(t, ns, "web-3", map[string]string{"app": "other"}, true, fakeapi.Echo(t, "web-3"))
	f, _ := newFollower(t, s, nil)
	for range 3 {
		if r := connect(t, context.Background(), f); r.pod != "web-2" || r.err != nil {
			t.Fatalf("went to %q (%v), want the ready pod web-2", r.pod, r.err)
		}
	}
	if pod, state := f.State(); pod != "web-2" || state != "ready" {
		t.Fatalf("state %q %q, want web-2 ready", pod, state)
	}
}

func TestSwitchesWhenThePodGoesAway(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	var mu sync.Mutex
	var switches []string
	f, _ := newFollower(t, s, func(o *Options) {
		o.OnSwitch = func(from, to, reason string) {
			mu.Lock()
			switches = append(switches, from+">"+to+": "+reason)
			mu.Unlock()
		}
	})
	first := connect(t, context.Background(), f)
	if first.err != nil {
		t.Fatal(first.err)
	}
	s.Delete(t, ns, first.pod)
	testnet.WaitFor(t, func() bool { pod, _ := f.State(); return pod != first.pod && pod != "" })
	r := connect(t, context.Background(), f)
	mu.Lock()
	if len(switches) == 0 || !strings.HasPrefix(switches[0], first.pod+">"+r.pod) && !strings.HasPrefix(switches[0], "(gone)>"+r.pod) {
		t.Errorf("switches heard: %q, want %s to %s", switches, first.pod, r.pod)
	}
	mu.Unlock()
	if r := connect(t, context.Background(), f); r.err != nil || r.pod == first.pod {
		t.Fatalf("after deleting %s the connection went to %q (%v)", first.pod, r.pod, r.err)
	}
	// Not ready is as good as gone for new connections.
	pod, _ := f.State()
	s.Pod(t, ns, "web-3", web, true, fakeapi.Echo(t, "web-3"))
	testnet.WaitFor(t, func() bool { return f.knows("web-3", true) })
	s.SetReady(t, ns, pod, false)
	testnet.WaitFor(t, func() bool { return f.knows(pod, false) })
	if r := connect(t, context.Background(), f); r.err != nil || r.pod != "web-3" {
		t.Fatalf("with %s not ready the connection went to %q (%v), want web-3", pod, r.pod, r.err)
	}
}

func TestWaitsForAReadyPod(t *testing.T) {
	s := fakeapi.New(t)
	f, _ := newFollower(t, s, nil)
	res := make(chan result, 1)
	go func() { res <- connect(t, context.Background(), f) }()
	// The connection waits: no pod yet.
	select {
	case r := <-res:
		t.Fatalf("a connection with no pod returned %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	if r := <-res; r.err != nil || r.pod != "web-1" {
		t.Fatalf("got %+v, want web-1 once it is ready", r)
	}
}

func TestWaitingEndsAfterReconnectWait(t *testing.T) {
	s := fakeapi.New(t)
	f, _ := newFollower(t, s, func(o *Options) { o.ReconnectWait = 300 * time.Millisecond })
	start := time.Now()
	r := connect(t, context.Background(), f)
	if r.err == nil || !strings.Contains(r.err.Error(), "no ready pod for deployment/web in namespace \"shop\" within 300ms") {
		t.Fatalf("err %v", r.err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("gave up after %s, want about 300ms", d)
	}
}

// Stopping a forward (its context) ends every connection that waits for a
// pod at once, not after --reconnect-wait.
func TestStoppingEndsWaitingConnections(t *testing.T) {
	s := fakeapi.New(t)
	var waiting atomic.Int64
	f, _ := newFollower(t, s, func(o *Options) {
		o.ReconnectWait = time.Minute
		o.Log = slog.New(countingHandler{slog.NewTextHandler(io.Discard, nil), "waiting for a ready pod", &waiting})
	})
	ctx, cancel := context.WithCancel(context.Background())
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		_, server := testnet.TCPPair(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.Forward(ctx, server, 80, nil)
			errs <- err
		}()
	}
	testnet.WaitFor(t, func() bool { return waiting.Load() == n })
	start := time.Now()
	cancel()
	wg.Wait()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%d waiting connections took %s to end", n, d)
	}
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("a waiting connection ended with %v, want context.Canceled", err)
		}
	}
}

// A connection the pod refuses before answering is sent again, whole, to
// another pod.
func TestReplaysARefusedConnectionOnAnotherPod(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Closed(t)) // older: chosen first, refuses
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	f, _ := newFollower(t, s, nil)
	client, server := testnet.TCPPair(t)
	done := make(chan error, 1)
	go func() { _, err := f.Forward(context.Background(), server, 80, nil); server.Close(); done <- err }()
	// The client speaks first: what it sent must reach web-2 intact.
	io.WriteString(client, "hello")
	client.CloseWrite()
	b, err := io.ReadAll(client)
	if err != nil || string(b) != "web-2\nhello" {
		t.Fatalf("read %q (%v), want the greeting of web-2 and the replayed bytes", b, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEveryPodRefusingFailsFast(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Closed(t))
	f, _ := newFollower(t, s, nil)
	start := time.Now()
	r := connect(t, context.Background(), f)
	var remote *tunnel.RemoteError
	if !errors.As(r.err, &remote) || !strings.Contains(r.err.Error(), "via pod web-1: pod shop/web-1 refused the connection to port 80") {
		t.Fatalf("err %v", r.err)
	}
	if d := time.Since(start); d > refusedGrace+2*time.Second {
		t.Fatalf("failed after %s, want about %s", d, refusedGrace)
	}
}

// TestAFailedConnectionEndsWithAReset: a connection that fails before any
// pod answered it (every pod refused it; no pod within the reconnect
// wait) ends with a reset: its client sees an error, not a clean end that
// looks like an empty answer (issue 26). It ended with a FIN.
func TestAFailedConnectionEndsWithAReset(t *testing.T) {
	for _, tt := range []struct {
		name string
		pod  bool // a pod that refuses; none otherwise
	}{{"every pod refused", true}, {"no pod in time", false}} {
		t.Run(tt.name, func(t *testing.T) {
			s := fakeapi.New(t)
			if tt.pod {
				s.Pod(t, ns, "web-1", web, true, fakeapi.Closed(t))
			}
			f, _ := newFollower(t, s, func(o *Options) { o.ReconnectWait = 300 * time.Millisecond })
			client, server := testnet.TCPPair(t)
			done := make(chan error, 1)
			go func() { _, err := f.Forward(context.Background(), server, 80, nil); done <- err }()
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.ReadAll(client)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the client read to %v, want a reset", err)
			}
			if err := <-done; err == nil {
				t.Error("Forward returned no error")
			}
		})
	}
}

// A pod whose tunnels cannot be dialled is backed off (and counted as a
// reconnect); with MaxRetries the forward gives up.
func TestFailedDialsBackOffAndGiveUp(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	s.Refuse("web-1", errors.New("no tunnels today"))
	f, _ := newFollower(t, s, func(o *Options) { o.MaxRetries = 2; o.ReconnectWait = 20 * time.Second })
	r := connect(t, context.Background(), f)
	if !errors.Is(r.err, ErrRetriesExhausted) {
		t.Fatalf("err %v, want ErrRetriesExhausted", r.err)
	}
	select {
	case <-f.Done():
	default:
		t.Fatal("the follower did not end")
	}
	if n := f.Reconnects(); n != 3 {
		t.Fatalf("%d failed dials counted, want 3 (the first and two retries)", n)
	}
}

func TestBackoffBounds(t *testing.T) {
	for failures, want := range map[int]time.Duration{1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 5: 4 * time.Second, 7: 10 * time.Second, 50: 10 * time.Second} {
		for range 100 {
			d := backoff(failures)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("backoff(%d) = %s, want %s ±20%%", failures, d, want)
			}
		}
	}
}

// knows reports whether the follower has seen pod name as ready (or not).
func (f *Follower) knows(name string, ready bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.pods {
		if st.pod.Name == name && target.PodReady(st.pod) == ready {
			return true
		}
	}
	return false
}

// countingHandler counts log records with a message.
type countingHandler struct {
	slog.Handler
	msg string
	n   *atomic.Int64
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}

// TestMeterCountsWhileOpen: bytes are counted as they move, not when the
// connection ends (a long database session shows its traffic).
func TestMeterCountsWhileOpen(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	f, _ := newFollower(t, s, nil)
	client, server := testnet.TCPPair(t)
	var m meter.Meter
	done := make(chan error, 1)
	go func() {
		_, err := f.Forward(context.Background(), server, 80, m.Child())
		server.Close()
		done <- err
	}()
	r := bufio.NewReader(client)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(client, "ping")
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(r, b); return err }() != nil {
		t.Fatal("no echo")
	}
	testnet.WaitFor(t, func() bool { return m.In.Load() == int64(len(line))+4 && m.Out.Load() == 4 })
	if m.FirstIn().IsZero() {
		t.Error("no time for the first byte")
	}
	client.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWatchesAreSharedPerNamespace: followers of one namespace share one
// pod watch, each seeing only its own pods; the watch ends with the last.
func TestWatchesAreSharedPerNamespace(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	s.Pod(t, ns, "db-0", map[string]string{"app": "db"}, true, fakeapi.Echo(t, "db-0"))
	w := NewWatches(s.Client)
	webF, stopWeb := newFollower(t, s, func(o *Options) { o.Watches = w })
	dbF, stopDB := newFollower(t, s, func(o *Options) {
		o.Watches, o.Selector, o.Ref = w, labels.SelectorFromSet(map[string]string{"app": "db"}), "statefulset/db"
	})
	if n := w.Namespaces(); n != 1 {
		t.Fatalf("%d namespace watches for two followers of one namespace, want 1", n)
	}
	if r := connect(t, context.Background(), webF); r.err != nil || r.pod != "web-1" {
		t.Fatalf("web: %q %v", r.pod, r.err)
	}
	if r := connect(t, context.Background(), dbF); r.err != nil || r.pod != "db-0" {
		t.Fatalf("db: %q %v", r.pod, r.err)
	}
	// A new pod of web reaches web's follower only.
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	testnet.WaitFor(t, func() bool { return webF.knows("web-2", true) })
	if dbF.knows("web-2", true) || dbF.knows("web-2", false) {
		t.Error("db's follower took web's pod")
	}
	stopWeb()
	if r := connect(t, context.Background(), dbF); r.err != nil || r.pod != "db-0" {
		t.Fatalf("db after web stopped: %q %v", r.pod, r.err)
	}
	stopDB()
	testnet.WaitFor(t, func() bool { return w.Namespaces() == 0 })
}

// TestOwnWatchWithoutShared: with no shared watches, a follower watches
// its own pods (by label selector), and follows a deleted pod's successor.
func TestOwnWatchWithoutShared(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	f, _ := newFollower(t, s, func(o *Options) { o.Watches = nil })
	if r := connect(t, context.Background(), f); r.err != nil || r.pod != "web-1" {
		t.Fatalf("%q %v", r.pod, r.err)
	}
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	s.Delete(t, ns, "web-1")
	testnet.WaitFor(t, func() bool { pod, _ := f.State(); return pod == "web-2" })
	if r := connect(t, context.Background(), f); r.err != nil || r.pod != "web-2" {
		t.Fatalf("after web-1 went: %q %v", r.pod, r.err)
	}
}

// TestNoPodIsNewsOnlyOnceListed: a follower on the shared watch says it
// waits for a ready pod only after the watch listed the namespace's pods,
// so a proxy's first connection to a service is not logged as missing one.
func TestNoPodIsNewsOnlyOnceListed(t *testing.T) {
	s := fakeapi.New(t)
	f, _ := newFollower(t, s, nil)
	deadline := time.Now().Add(5 * time.Second)
	for !f.synced() {
		if time.Now().After(deadline) {
			t.Fatal("the follower's watch never reported the pods listed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeLiveness is a liveness probe the test speaks for.
type fakeLiveness struct {
	mu   sync.Mutex
	subs map[int]func(bool, time.Duration)
	next int
}

func (l *fakeLiveness) Subscribe(on func(bool, time.Duration)) func() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.subs == nil {
		l.subs = map[int]func(bool, time.Duration){}
	}
	id := l.next
	l.next++
	l.subs[id] = on
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.subs, id)
	}
}

func (l *fakeLiveness) tell(silent bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, on := range l.subs {
		on(silent, 15*time.Second)
	}
	return len(l.subs)
}

// A follower subscribes to its cluster's liveness probe while it lives:
// the API server's silence drops its tunnels (and Changed says so), its
// return is only logged, and the follower's end unsubscribes it.
func TestFollowerDropsTunnelsWhenTheAPIServerIsSilent(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	live := &fakeLiveness{}
	f, stop := newFollower(t, s, func(o *Options) { o.Liveness = live })
	if r := connect(t, context.Background(), f); r.err != nil {
		t.Fatal(r.err)
	}
	if _, state := f.State(); state != "ready" {
		t.Fatalf("state %q, want ready", state)
	}
	changed := f.Changed()
	if n := live.tell(true); n != 1 {
		t.Fatalf("%d subscribers, want the follower", n)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed when the tunnels were dropped")
	}
	if _, state := f.State(); state != "reconnecting" {
		t.Fatalf("after the API server's silence: state %q, want reconnecting (tunnels dropped)", state)
	}
	// Past the redial's backoff, while the API server is still silent: no
	// tunnel can be ready, and the state must not say so (a daemon said
	// "ready" through a 60 s blackhole).
	f.mu.Lock()
	for _, st := range f.pods {
		st.retryAt = time.Now().Add(-time.Second)
	}
	f.mu.Unlock()
	if _, state := f.State(); state != "reconnecting" {
		t.Fatalf("the API server still silent, past the backoff: state %q, want reconnecting", state)
	}
	changed = f.Changed()
	live.tell(false)
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed when the API server answered again")
	}
	if _, state := f.State(); state != "ready" {
		t.Fatalf("the API server answering again: state %q, want ready (the next connection dials)", state)
	}
	if r := connect(t, context.Background(), f); r.err != nil || r.pod != "web-1" {
		t.Fatalf("after the API server's return: %q, %v", r.pod, r.err)
	}
	stop()
	testnet.Within(t, 5*time.Second, "the follower to unsubscribe", func() bool { return live.tell(true) == 0 })
}

// Check hears the current pod's own verdict at once: a refusal is not
// replayed on another pod nor held for the rollout grace a client's
// connection gets, and another pod that listens does not hide it.
func TestCheckHearsTheCurrentPodAtOnce(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Closed(t))
	f, _ := newFollower(t, s, nil)
	testnet.WaitFor(t, func() bool { pod, _ := f.State(); return pod == "web-1" })
	s.Pod(t, ns, "web-2", web, false, fakeapi.Echo(t, "web-2")) // not ready: web-1 stays current
	client, server := testnet.TCPPair(t)
	client.CloseWrite()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pod, err := f.Check(ctx, server, 80)
	var remote *tunnel.RemoteError
	if pod != "web-1" || !errors.As(err, &remote) || remote.Port != 80 {
		t.Fatalf("Check = %q, %v; want web-1's refusal", pod, err)
	}
	if d := time.Since(start); d >= refusedGrace {
		t.Errorf("the refusal took %s, the replay's grace", d)
	}
}

// A pool whose dial ends as the follower stops (kpf down, a restart)
// is closed, not installed after closeAll ran: its watcher would wait
// for it forever (a daemon gained a goroutine per restarted forward).
func TestPoolDialledAsTheFollowerStopsIsClosed(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	var stop context.CancelFunc
	var once sync.Once
	f, cancel := newFollower(t, s, func(o *Options) {
		o.Dial = func(ctx context.Context, pod string) (*tunnel.Conn, error) {
			once.Do(func() { stop() }) // the forward stops while its first pool is dialled
			return tunnel.Dial(context.Background(), tunnel.APIServer{Config: s.Config}, ns, pod, tunnel.SPDY, tunnel.OwnDataPath)
		}
	})
	stop = cancel
	client, server := testnet.TCPPair(t)
	defer client.Close()
	f.Forward(context.Background(), server, 80, nil)
	server.Close()
	testnet.Within(t, 3*time.Second, "no pool watcher left", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "follow.(*Follower).watchPool")
	})
}

// The API server's return wakes waiters under the follower's lock: the
// probe's goroutine replaced the channel that connections read (a race
// the race-built kpf found in TestAPIServerPaused).
func TestAPIServerReturnRacesNoWaiter(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	live := &fakeLiveness{}
	f, _ := newFollower(t, s, func(o *Options) { o.Liveness = live })
	start, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		<-start
		for range 2000 {
			live.tell(false)
		}
	}()
	close(start)
	for range 2000 {
		f.Changed()
	}
	<-done
}

// An idle forward whose tunnel is lost (an API server or node restart)
// dials a new one by itself after the backoff, and its state is ready
// again: it said "reconnecting" until a client came, while nothing
// reconnected (53 of 55 idle daemon forwards stayed "reconnecting" for
// minutes after an API server restart, and worked at the first curl).
func TestLostTunnelIsRedialledWhileIdle(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	var mu sync.Mutex
	var conns []*tunnel.Conn
	f, _ := newFollower(t, s, func(o *Options) {
		dial := o.Dial
		o.Dial = func(ctx context.Context, pod string) (*tunnel.Conn, error) {
			c, err := dial(ctx, pod)
			if err == nil {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
			return c, err
		}
	})
	if r := connect(t, context.Background(), f); r.err != nil {
		t.Fatal(r.err)
	}
	// The tunnels close while the API server refuses (it restarts): the
	// pool's own redial of its sentinel fails, and the pool is lost.
	s.Refuse("web-1", errors.New("the API server is restarting"))
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	testnet.Within(t, 5*time.Second, "the tunnel lost", func() bool {
		_, state := f.State()
		return state == "reconnecting"
	})
	dials := s.Dials.Load()
	s.Refuse("web-1", nil)
	testnet.Within(t, 5*time.Second, "a new tunnel dialled with no connection asking", func() bool {
		return s.Dials.Load() > dials
	})
	testnet.Within(t, 5*time.Second, "the state ready again", func() bool {
		_, state := f.State()
		return state == "ready"
	})
	f.mu.Lock()
	var pooled bool
	for _, st := range f.pods {
		pooled = pooled || st.pool != nil
	}
	f.mu.Unlock()
	if !pooled {
		t.Fatal("ready with no tunnel: the redial did not install its pool")
	}
	if r := connect(t, context.Background(), f); r.err != nil || r.pod != "web-1" {
		t.Fatalf("after the redial: %q, %v", r.pod, r.err)
	}
}

// A relay's follower takes only the pods kpf made (Accept), never
// another pod that carries their labels: it would get the forward's
// traffic.
func TestAcceptRefusesPodsKpfDidNotMake(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	var mu sync.Mutex
	made := map[string]bool{"web-1": true}
	f, _ := newFollower(t, s, func(o *Options) {
		o.ReconnectWait = 300 * time.Millisecond
		o.Accept = func(p *corev1.Pod) bool {
			mu.Lock()
			defer mu.Unlock()
			return made[p.Name]
		}
	})
	if r := connect(t, context.Background(), f); r.pod != "web-1" || r.err != nil {
		t.Fatalf("went to %q (%v), want web-1", r.pod, r.err)
	}
	s.Pod(t, ns, "evil", web, true, fakeapi.Echo(t, "evil"))
	s.Delete(t, ns, "web-1")
	testnet.WaitFor(t, func() bool { pod, _ := f.State(); return pod == "" })
	if r := connect(t, context.Background(), f); r.pod == "evil" || !errors.Is(r.err, ErrNoReadyPod) {
		t.Fatalf("with web-1 gone the connection went to %q (%v), want no pod (ErrNoReadyPod)", r.pod, r.err)
	}
	if f.knows("evil", true) {
		t.Fatal("the follower knows evil, a pod it does not accept")
	}
	mu.Lock()
	made["web-2"] = true
	mu.Unlock()
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	testnet.WaitFor(t, func() bool { return f.knows("web-2", true) })
	if r := connect(t, context.Background(), f); r.pod != "web-2" || r.err != nil {
		t.Fatalf("went to %q (%v), want web-2, the pod kpf made", r.pod, r.err)
	}
}

// warnHandler counts the records of level Warn and above.
type warnHandler struct {
	slog.Handler
	n *atomic.Int64
}

func (h warnHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.n.Add(1)
	}
	return nil
}

// A follower stopped (Ctrl-C, kpf down, the end of kpf run) while a
// tunnel is dialled, and while one is up, warns of nothing: a stop kpf
// asked for is no failure (every clean stop printed "WARN tunnel failed
// ... operation was canceled").
func TestStoppingWarnsOfNothing(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, ns, "web-1", web, true, fakeapi.Echo(t, "web-1"))
	s.Pod(t, ns, "web-2", web, true, fakeapi.Echo(t, "web-2"))
	var warns atomic.Int64
	dialling := make(chan struct{}, 1)
	f, cancel := newFollower(t, s, func(o *Options) {
		o.Log = slog.New(warnHandler{slog.NewTextHandler(io.Discard, nil), &warns})
	})
	// A tunnel up (a connection carried), then one being dialled.
	if r := connect(t, context.Background(), f); r.err != nil {
		t.Fatal(r.err)
	}
	f2, cancel2 := newFollower(t, s, func(o *Options) {
		o.Log = slog.New(warnHandler{slog.NewTextHandler(io.Discard, nil), &warns})
		o.Dial = func(ctx context.Context, pod string) (*tunnel.Conn, error) {
			dialling <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
	})
	_, server := testnet.TCPPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := f2.Forward(context.Background(), server, 80, nil)
		done <- err
	}()
	select {
	case <-dialling:
	case <-time.After(10 * time.Second):
		t.Fatal("no tunnel dialled")
	}
	cancel()
	cancel2()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end with the follower")
	}
	testnet.Within(t, 3*time.Second, "no pool watcher left", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "follow.(*Follower).watchPool")
	})
	if n := warns.Load(); n != 0 {
		t.Fatalf("%d warnings at a stop asked for", n)
	}
}
