// Package follow keeps a forward pointed at a live pod: it watches the pods
// behind the target, sends each new connection to the pod kubectl would
// pick (or spreads them over every ready pod with Balance), switches when
// that pod goes away or stops being ready, redials lost tunnels with
// backoff and jitter, and holds new connections while no pod is ready.
//
// It never touches connections already open: they end with their pod.
package follow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/kpf-dev/kpf/internal/tunnelpool"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Log attribute keys.
const (
	keyPod    = "pod"
	keyFrom   = "from"
	keyTo     = "to"
	keyReason = "reason"
	keyErr    = "err"
	keyWait   = "retryIn"
)

// Errors that end a forward; the CLI maps each to an exit code.
var (
	// ErrTargetGone: the pod went away and reconnecting was not allowed.
	ErrTargetGone = errors.New("lost connection to pod")
	// ErrRetriesExhausted: --max-retries reconnects in a row failed.
	ErrRetriesExhausted = errors.New("gave up reconnecting")
	// ErrNoReadyPod: a connection waited --reconnect-wait for a pod.
	ErrNoReadyPod = errors.New("no ready pod")
)

// Options configure a Follower.
type Options struct {
	Namespace string
	Ref       string // the target as the user named it, for messages
	// Exactly one of PodName (a pod target: follow that name) and Selector.
	PodName  string
	Selector labels.Selector
	// Accept, if set, must also say yes to a pod for the follower to use
	// it: a relay's follower takes only the pods kpf made (by UID), not
	// any other pod that carries their name or labels.
	Accept func(*corev1.Pod) bool

	Client kube.Interface
	// Dial opens a tunnel to the named pod.
	Dial func(ctx context.Context, pod string) (*tunnel.Conn, error)

	Balance       bool
	ReconnectWait time.Duration // how long a new connection waits for a pod
	MaxRetries    int           // consecutive failed reconnects allowed; 0: no limit
	NoReconnect   bool          // end the forward when the first pod goes away
	// Initial is the pod the target resolved to; it is used first.
	Initial *corev1.Pod
	Log     *slog.Logger
	// OnSwitch, if set, hears of every switch to another pod; it is called
	// with the follower's lock held and must not block.
	OnSwitch func(from, to, reason string)
	// Watches, if set, is the cluster's shared pod watches; without it the
	// follower watches its own pods.
	Watches *Watches
	// Liveness, if set, is the cluster's API server liveness probe: when
	// the API server goes silent, every tunnel is dropped.
	Liveness Liveness
}

// Liveness is a liveness probe of an API server, shared by the followers
// of one cluster connection. Tunnels run through the API server, and a
// silent one (paused, or a dead network path) leaves them hanging until
// TCP gives up, which takes many minutes.
type Liveness interface {
	// Subscribe calls on with silent true and how long the API server has
	// not answered, once that passes the probe's bound, and with silent
	// false once it answers again; on must not block or unsubscribe.
	// Unsubscribe stops the calls.
	Subscribe(on func(silent bool, quiet time.Duration)) (unsubscribe func())
}

// podState is what the Follower knows of one pod.
type podState struct {
	pod      *corev1.Pod
	pool     *tunnelpool.Pool[*tunnel.Conn]
	dialing  bool
	failures int       // consecutive failed dials
	retryAt  time.Time // no dial before this
	lastErr  error     // of the last failed dial
}

// Follower is a forward's backend: forward.Serve hands it connections.
type Follower struct {
	o   Options
	ctx context.Context // the follower's lifetime: its pools live as long

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	pods    map[types.UID]*podState
	current types.UID
	next    int // round robin for Balance
	retries int // consecutive failed reconnects, for MaxRetries
	// apiSilent: the liveness probe says the API server is silent (until
	// it says it answers again); no tunnel can be ready meanwhile.
	apiSilent bool
	done      chan struct{}
	doneErr   error
	doneOnce  sync.Once
	everUsed  bool
	// synced says whether the watch has delivered the pods that existed
	// when it started: until then, no pod is not yet news.
	synced func() bool

	reconnects atomic.Int64
	switches   atomic.Int64
}

// New starts watching the target's pods; the Follower works until ctx ends.
func New(ctx context.Context, o Options) (*Follower, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	f := &Follower{o: o, ctx: ctx, changed: make(chan struct{}), pods: map[types.UID]*podState{}, done: make(chan struct{})}
	if o.Liveness != nil {
		context.AfterFunc(ctx, o.Liveness.Subscribe(f.apiServer))
	}
	if o.Initial != nil {
		f.pods[o.Initial.UID] = &podState{pod: o.Initial}
		f.current = o.Initial.UID
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { f.seen(obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { f.seen(obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok && f.mine(p) {
				f.remove(p.UID, "deleted")
			}
		},
	}
	if o.Watches != nil {
		unsubscribe, synced, err := o.Watches.subscribe(o.Namespace, h)
		if err != nil {
			return nil, err
		}
		// No goroutine waits for the end per follower (one per idle
		// forward): the context runs it.
		context.AfterFunc(ctx, func() {
			unsubscribe()
			f.closeAll()
		})
		f.synced = synced
		return f, nil
	}
	tweak := func(lo *metav1.ListOptions) {
		if o.PodName != "" {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", o.PodName).String()
		} else {
			lo.LabelSelector = o.Selector.String()
		}
	}
	inf := podInformer(o.Client, o.Namespace, tweak)
	if _, err := inf.AddEventHandler(h); err != nil {
		return nil, err
	}
	f.synced = inf.HasSynced
	go func() {
		inf.RunWithContext(ctx)
		f.closeAll()
	}()
	return f, nil
}

// seen takes a pod from the watch: one of ours is added or updated; one
// that no longer matches (its labels changed) is as good as gone.
func (f *Follower) seen(p *corev1.Pod) {
	if f.mine(p) {
		f.upsert(p)
		return
	}
	f.mu.Lock()
	_, known := f.pods[p.UID]
	f.mu.Unlock()
	if known {
		f.remove(p.UID, "no longer matches")
	}
}

// Done is closed when the forward must end; Err says why.
func (f *Follower) Done() <-chan struct{} { return f.done }

// Err is why Done was closed.
func (f *Follower) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.doneErr
}

// broadcast wakes every waiter; f.mu must be held.
func (f *Follower) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Follower) upsert(p *corev1.Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.pods[p.UID]
	if !ok {
		st = &podState{}
		f.pods[p.UID] = st
		f.o.Log.Debug("pod appeared", keyPod, p.Name, "phase", p.Status.Phase)
	}
	wasReady := ok && usable(st.pod) && target.PodReady(st.pod)
	st.pod = p
	if p.DeletionTimestamp != nil && wasReady {
		f.o.Log.Info("pod terminating: new connections go elsewhere", keyPod, p.Name)
	}
	if f.o.NoReconnect && f.current == p.UID && p.DeletionTimestamp != nil {
		f.endLocked(fmt.Errorf("%w %s/%s: it is terminating (--no-reconnect)", ErrTargetGone, f.o.Namespace, p.Name))
	}
	f.broadcast()
}

func (f *Follower) remove(uid types.UID, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.pods[uid]
	if !ok {
		return
	}
	delete(f.pods, uid)
	st.dropPool()
	f.o.Log.Info("pod gone", keyPod, st.pod.Name, keyReason, why)
	if f.o.NoReconnect && f.current == uid {
		f.endLocked(fmt.Errorf("%w %s/%s: it was %s (--no-reconnect)", ErrTargetGone, f.o.Namespace, st.pod.Name, why))
	}
	f.broadcast()
}

// endLocked ends the forward; f.mu is held.
func (f *Follower) endLocked(err error) {
	f.doneOnce.Do(func() {
		f.doneErr = err
		close(f.done)
	})
}

func (f *Follower) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.pods {
		st.dropPool()
	}
}

// dropPool closes the pod's tunnels; f.mu is held. The pool is unset
// before it is closed, so its watcher does not count a failure.
func (st *podState) dropPool() bool {
	if st.pool == nil {
		return false
	}
	pool := st.pool
	st.pool = nil
	pool.Close()
	return true
}

// usable: running and not being deleted.
func usable(p *corev1.Pod) bool {
	return p != nil && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning
}

// choose picks the pod for a new connection; f.mu is held. exclude holds
// pods that refused this connection already.
func (f *Follower) choose(exclude map[types.UID]bool) *podState {
	now := time.Now()
	// The common case, every connection while nothing changes: the current
	// pod is still ready. What the full choice below would return too,
	// without copying every pod.
	if cur, ok := f.pods[f.current]; ok && !f.o.Balance && !exclude[f.current] && usable(cur.pod) &&
		!cur.retryAt.After(now) && target.PodReady(cur.pod) {
		return cur
	}
	var ready, running []corev1.Pod
	for uid, st := range f.pods {
		if !usable(st.pod) || exclude[uid] || st.retryAt.After(now) {
			continue
		}
		running = append(running, *st.pod)
		if target.PodReady(st.pod) {
			ready = append(ready, *st.pod)
		}
	}
	candidates := ready
	if len(candidates) == 0 {
		candidates = running // kubectl forwards to a running pod that is not ready
	}
	if len(candidates) == 0 {
		return nil
	}
	if f.o.Balance {
		sort.Slice(candidates, func(i, j int) bool { return candidates[i].Name < candidates[j].Name })
		f.next++
		return f.pods[candidates[f.next%len(candidates)].UID]
	}
	if cur, ok := f.pods[f.current]; ok && !exclude[f.current] && usable(cur.pod) && !cur.retryAt.After(now) {
		if target.PodReady(cur.pod) || len(ready) == 0 {
			return cur
		}
	}
	best := target.Best(candidates)
	st := f.pods[best.UID]
	if f.current != best.UID {
		from := "none"
		if old, ok := f.pods[f.current]; ok {
			from = old.pod.Name
		} else if f.everUsed {
			from = "(gone)"
		}
		if f.everUsed {
			f.switches.Add(1)
			reason := f.switchReason()
			f.o.Log.Info("switching pod", keyFrom, from, keyTo, best.Name, keyReason, reason)
			if f.o.OnSwitch != nil {
				f.o.OnSwitch(from, best.Name, reason)
			}
		}
		f.current = best.UID
	}
	return st
}

func (f *Follower) switchReason() string {
	cur, ok := f.pods[f.current]
	switch {
	case !ok:
		return "the pod is gone"
	case cur.pod.DeletionTimestamp != nil:
		return "the pod is terminating"
	case !target.PodReady(cur.pod):
		return "the pod is not ready"
	case cur.retryAt.After(time.Now()):
		return "its tunnel is down"
	}
	return "a better pod is ready"
}

// acquire waits until a pod with a working tunnel pool is available, up to
// deadline or until ctx (the connection's) ends, and returns it.
func (f *Follower) acquire(ctx context.Context, deadline time.Time, exclude map[types.UID]bool) (*podState, *corev1.Pod, *tunnelpool.Pool[*tunnel.Conn], error) {
	waitedLogged := false
	for {
		f.mu.Lock()
		if f.doneErr != nil {
			err := f.doneErr
			f.mu.Unlock()
			return nil, nil, nil, err
		}
		st := f.choose(exclude)
		if st != nil && st.pool != nil {
			pool, pod := st.pool, st.pod // st.pod changes under f.mu: take it now
			f.everUsed = true
			f.mu.Unlock()
			return st, pod, pool, nil
		}
		if st != nil && !st.dialing {
			// The pool outlives this connection: it is the follower's.
			f.dialLocked(st)
			if err := f.ctx.Err(); err != nil {
				f.mu.Unlock()
				return nil, nil, nil, err
			}
			f.mu.Unlock()
			continue
		}
		changed := f.changed
		down := f.tunnelDownLocked(exclude)
		// Another connection dialling the chosen pod's tunnel is not a
		// missing pod: wait for it without a word.
		dialing := st != nil && st.dialing
		f.mu.Unlock()
		// A missing pod is news once the watch has listed the pods; a
		// pod whose tunnel is down is news at once.
		if !waitedLogged && !dialing && (down != nil || f.synced()) && ctx.Err() == nil && f.ctx.Err() == nil {
			// A ready pod whose tunnel cannot be dialled (the API server
			// or a proxy on the way is down) is not a missing pod.
			if down != nil {
				f.o.Log.Info("waiting for a tunnel", keyPod, down.pod.Name, keyErr, down.err, "for", time.Until(deadline).Round(time.Second))
			} else {
				f.o.Log.Info("waiting for a ready pod", "target", f.o.Ref, "for", time.Until(deadline).Round(time.Second))
			}
			waitedLogged = true
		}
		timer := time.NewTimer(min(time.Until(deadline), time.Second))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, nil, nil, ctx.Err()
		case <-f.done:
			timer.Stop()
		case <-changed:
			timer.Stop()
		case <-timer.C: // retryAt may have passed
		}
		if time.Now().After(deadline) {
			return nil, nil, nil, fmt.Errorf("%w for %s in namespace %q within %s (see --reconnect-wait)", ErrNoReadyPod, f.o.Ref, f.o.Namespace, f.o.ReconnectWait)
		}
	}
}

func (f *Follower) dialPool(ctx context.Context, pod *corev1.Pod) (*tunnelpool.Pool[*tunnel.Conn], error) {
	return tunnelpool.New(ctx, func(ctx context.Context) (*tunnel.Conn, error) {
		return f.o.Dial(ctx, pod.Name)
	})
}

// downPod is a ready pod whose tunnel is down, and why.
type downPod struct {
	pod *corev1.Pod
	err error
}

// tunnelDownLocked is a ready pod that only its tunnel's backoff keeps
// from being chosen, or nil; f.mu is held.
func (f *Follower) tunnelDownLocked(exclude map[types.UID]bool) *downPod {
	now := time.Now()
	for uid, st := range f.pods {
		if !exclude[uid] && usable(st.pod) && target.PodReady(st.pod) && st.retryAt.After(now) && st.lastErr != nil {
			return &downPod{pod: st.pod, err: st.lastErr}
		}
	}
	return nil
}

// failed records a failed dial and sets the backoff; f.mu is held.
func (f *Follower) failed(st *podState, err error) {
	if f.ctx.Err() != nil {
		// The follower was stopped (Ctrl-C, kpf down): the tunnel it
		// ended, or the dial it cut short, is no failure.
		return
	}
	f.reconnects.Add(1)
	prev := st.lastErr
	st.lastErr = err
	st.failures++
	f.retries++
	wait := backoff(st.failures)
	st.retryAt = time.Now().Add(wait)
	// A stack of the same failure, a line per retry, says nothing new:
	// the first failure in a row and each change of reason are news.
	if st.failures == 1 || prev == nil || prev.Error() != err.Error() {
		f.o.Log.Warn("tunnel failed", keyPod, st.pod.Name, keyErr, err, keyWait, wait.Round(time.Millisecond))
	} else {
		f.o.Log.Debug("tunnel failed again", keyPod, st.pod.Name, keyErr, err, keyWait, wait.Round(time.Millisecond), "attempt", st.failures)
	}
	if f.o.MaxRetries > 0 && f.retries > f.o.MaxRetries {
		f.endLocked(fmt.Errorf("%w after %d attempts in a row (--max-retries %d): %v", ErrRetriesExhausted, f.retries, f.o.MaxRetries, err))
	}
}

// backoff is exponential from 250 ms to 10 s, with ±20% jitter so that many
// forwards do not redial in step.
func backoff(failures int) time.Duration {
	d := 250 * time.Millisecond << min(failures-1, 6)
	d = min(d, 10*time.Second)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// watchPool notices a pool whose pod stopped answering.
func (f *Follower) watchPool(st *podState, pool *tunnelpool.Pool[*tunnel.Conn]) {
	healthy := time.NewTimer(10 * time.Second)
	defer healthy.Stop()
	for {
		select {
		case <-healthy.C:
			// Up long enough to count as recovered.
			f.mu.Lock()
			if st.pool == pool {
				f.retries = 0
			}
			f.mu.Unlock()
			continue
		case <-pool.Done():
		}
		break
	}
	f.mu.Lock()
	if st.pool != pool {
		f.mu.Unlock()
		return
	}
	st.pool = nil
	pool.Close()
	if f.o.NoReconnect {
		f.endLocked(fmt.Errorf("%w %s/%s (--no-reconnect)", ErrTargetGone, f.o.Namespace, st.pod.Name))
		f.mu.Unlock()
		return
	}
	f.failed(st, errors.New("tunnel lost"))
	f.broadcast()
	f.mu.Unlock()
	f.redial(st)
}

// dialLocked dials st's pod a tunnel pool, without f.mu while it dials,
// and installs it (watched) if the pod is still there and usable; a
// failed dial is counted for the backoff. f.mu is held on entry and on
// return; st.dialing must be false.
func (f *Follower) dialLocked(st *podState) {
	st.dialing = true
	pod := st.pod
	f.mu.Unlock()
	pool, err := f.dialPool(f.ctx, pod)
	f.mu.Lock()
	st.dialing = false
	switch {
	case err == nil && f.ctx.Err() != nil:
		// The follower stopped while it dialled (closeAll ran already):
		// installed, nobody would close the pool, nor end its watcher.
		pool.Close()
		return
	case err != nil:
		f.failed(st, err)
	case f.pods[pod.UID] != st || !usable(st.pod):
		pool.Close()
	default:
		st.pool = pool
		st.failures = 0
		go f.watchPool(st, pool)
	}
	f.broadcast()
}

// redial brings back the tunnel the current pod lost, after the backoff,
// as the first one was dialled before any connection: an idle forward
// whose tunnel went (an API server or node restart) is ready again by
// itself, and says so (it said "reconnecting" until a client came, while
// nothing reconnected). It gives up when the pod is no longer the one
// connections go to, or has a tunnel (a connection dialled it), or the
// follower ends; while the API server is silent it waits for its return.
func (f *Follower) redial(st *podState) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		f.mu.Lock()
		if f.ctx.Err() != nil || f.doneErr != nil || f.pods[st.pod.UID] != st || f.current != st.pod.UID || !usable(st.pod) || st.pool != nil {
			f.mu.Unlock()
			return
		}
		wait, changed := time.Until(st.retryAt), f.changed
		if wait <= 0 && !f.apiSilent && !st.dialing {
			f.dialLocked(st)
			f.mu.Unlock()
			continue
		}
		f.mu.Unlock()
		if wait <= 0 {
			wait = time.Minute // woken by the change it waits for
		}
		t.Reset(wait) // Go 1.23 timers: no stale tick to drain
		select {
		case <-f.ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// apiServer hears from the liveness probe: after silence past its bound,
// every tunnel is dropped so that new connections redial once the API
// server answers again.
func (f *Follower) apiServer(silent bool, quiet time.Duration) {
	f.mu.Lock()
	f.apiSilent = silent
	if !silent {
		// Waiters for a tunnel try again; broadcast needs f.mu.
		f.broadcast()
	}
	f.mu.Unlock()
	if !silent {
		// The probe said so, once for every forward of its cluster.
		f.o.Log.Debug("API server answers again")
		return
	}
	f.dropTunnels("the API server did not answer for "+quiet.Round(time.Second).String(), slog.LevelDebug)
}

// DropTunnels closes every tunnel, as when the API server went silent; the
// next connections redial.
func (f *Follower) DropTunnels(reason string) { f.dropTunnels(reason, slog.LevelWarn) }

// dropTunnels logs at level: the liveness probe's drop is said once by the
// probe itself for every forward of its cluster (a line per forward was a
// stack of the same news in a daemon's log).
func (f *Follower) dropTunnels(reason string, level slog.Level) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.pods {
		if st.dropPool() {
			st.retryAt = time.Now().Add(backoff(1))
		}
	}
	f.o.Log.Log(context.Background(), level, "tunnels dropped", keyReason, reason)
	f.broadcast()
}

// maxUnopened bounds the tunnels a connection tries whose streams could
// not be opened.
const maxUnopened = 3

// refusedGrace is how long a connection that every pod refused waits for
// the pods to change before it fails.
const refusedGrace = 2 * time.Second

// Forward carries a local connection to the current pod (or the next one,
// with Balance). A connection refused before the pod answered is sent
// again, whole, to another pod, so rollouts lose no connection. While it
// waits for a pod, ctx ending (the forward stopping) ends it at once.
//
// m, if set, counts the bytes as they move.
func (f *Follower) Forward(ctx context.Context, local net.Conn, port uint16, m *meter.Meter) (_ tunnel.Stats, err error) {
	rc := newReplayConn(local)
	// A connection that failed ends with a reset, also one the pod never
	// answered (refused everywhere, no pod or tunnel in time): its client
	// sees an error, not an empty answer that looks whole.
	defer func() { rc.finish(err != nil) }()
	deadline := time.Now().Add(f.o.ReconnectWait)
	exclude := map[types.UID]bool{}
	unopened := 0
	for attempt := 1; ; attempt++ {
		st, pod, pool, err := f.acquire(ctx, deadline, exclude)
		if err != nil {
			return tunnel.Stats{}, err
		}
		conn, err := pool.Acquire()
		if err != nil {
			f.poolFailed(st, pool, err)
			continue
		}
		m.SetPod(pod.Name)
		stats, err := conn.Forward(rc, port, m)
		pool.Release(conn)
		stats.Pod = pod.Name
		if err == nil {
			return stats, nil
		}
		if errors.Is(err, tunnel.ErrNotOpened) && unopened < maxUnopened && time.Now().Before(deadline) && rc.rewind() {
			// The tunnel had closed under us (a proxy cut it while kpf
			// was stopped, say) and nothing reached the pod: the pool
			// drops it, and the connection goes on another.
			unopened++
			f.o.Log.Info("the tunnel closed before the connection's streams opened; trying another tunnel", keyPod, pod.Name, "attempt", attempt, keyErr, err)
			continue
		}
		var remote *tunnel.RemoteError
		if errors.As(err, &remote) && time.Now().Before(deadline) && rc.rewind() {
			exclude[pod.UID] = true
			f.mu.Lock()
			allRefused := len(exclude) >= len(f.pods)
			changed := f.changed
			f.mu.Unlock()
			if !allRefused {
				f.o.Log.Info("pod refused a new connection; trying another", keyPod, pod.Name, "attempt", attempt, keyErr, err)
				continue
			}
			// Every pod refused. In a rollout the pods change soon (the
			// one that stopped listening is deleted, a new one is ready):
			// try again then. Otherwise nothing listens on that port, and
			// the client hears so now, not after the reconnect wait.
			select {
			case <-changed:
				f.o.Log.Info("every pod refused a new connection; the pods changed, trying again", keyPod, pod.Name, "attempt", attempt)
				clear(exclude)
				continue
			case <-ctx.Done():
			case <-time.After(min(time.Until(deadline), refusedGrace)):
			}
		}
		return stats, fmt.Errorf("via pod %s: %w", pod.Name, err)
	}
}

// poolFailed drops a pool that could not give a tunnel, and counts the
// failure.
func (f *Follower) poolFailed(st *podState, pool *tunnelpool.Pool[*tunnel.Conn], err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.pool == pool {
		st.pool = nil
		pool.Close()
		f.failed(st, err)
	}
}

// ErrCheckTunnelLost: the tunnel that carried a check's connection went
// away before the kubelet gave its verdict, which then says nothing of
// the pod.
var ErrCheckTunnelLost = errors.New("the tunnel was lost before the pod's verdict")

// Check carries one connection to the pod the forward uses now, once, and
// returns that pod and the kubelet's verdict: no replay on another pod and
// no grace for a rollout (what Forward gives a client's connection), so
// that a health check hears the pod's own answer at once. ctx bounds the
// wait for a pod and a tunnel, and the connection: when ctx ends, its
// streams are reset, so that a pod that neither answers nor closes holds
// no check's connection past its check.
func (f *Follower) Check(ctx context.Context, local net.Conn, port uint16) (string, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(f.o.ReconnectWait)
	}
	for {
		st, pod, pool, err := f.acquire(ctx, deadline, nil)
		if err != nil {
			return "", err
		}
		conn, err := pool.Acquire()
		if err != nil {
			f.poolFailed(st, pool, err)
			continue
		}
		_, err = conn.ForwardContext(ctx, local, port, nil)
		pool.Release(conn)
		if err == nil {
			select {
			case <-conn.Done():
				err = fmt.Errorf("%w (pod %s)", ErrCheckTunnelLost, pod.Name)
			default:
			}
		}
		return pod.Name, err
	}
}

// Prime opens the tunnel pool to the initial pod, so that an error
// (Forbidden, say) shows before the forward starts listening, as kubectl's
// does.
func (f *Follower) Prime(ctx context.Context) error {
	if f.o.Initial == nil {
		return nil
	}
	pool, err := f.dialPool(ctx, f.o.Initial)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.pods[f.o.Initial.UID]
	if !ok || st.pool != nil || f.ctx.Err() != nil {
		pool.Close()
		return nil
	}
	st.pool = pool
	go f.watchPool(st, pool)
	return nil
}

// State names the follower's condition for status: the pod connections go
// to, and ready, reconnecting or waiting for pod.
func (f *Follower) State() (pod, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.doneErr != nil {
		return "", "failed"
	}
	if st, ok := f.pods[f.current]; ok && usable(st.pod) {
		switch {
		case st.pool != nil:
			return st.pod.Name, "ready"
		case st.retryAt.After(time.Now()) || st.failures > 0 || f.apiSilent:
			return st.pod.Name, "reconnecting"
		}
		return st.pod.Name, "ready"
	}
	for _, st := range f.pods {
		if usable(st.pod) {
			return st.pod.Name, "ready"
		}
	}
	return "", "waiting for pod"
}

// Changed is closed at the follower's next change (a pod seen, a tunnel
// dialled or lost, the end), so that State can be watched without
// polling; a change that only time makes (a retry's wait running out)
// closes nothing.
func (f *Follower) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Pod is the follower's latest copy of one of its pods, from its watch;
// nil if it has none by that name.
func (f *Follower) Pod(name string) *corev1.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.pods {
		if st.pod.Name == name {
			return st.pod
		}
	}
	return nil
}

// Reconnects counts the tunnels redialled after a loss or failure.
func (f *Follower) Reconnects() int64 { return f.reconnects.Load() }

// podInformer watches the pods of namespace that tweak selects. It is
// client-go's pod informer without its informer factory, which would link
// every API group's informers.
func podInformer(client kube.Interface, namespace string, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	pods := client.CoreV1().Pods(namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, lo metav1.ListOptions) (runtime.Object, error) {
			tweak(&lo)
			return pods.List(ctx, lo)
		},
		WatchFuncWithContext: func(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
			tweak(&lo)
			return pods.Watch(ctx, lo)
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.Pod{}, 0, cache.Indexers{})
	// Managed fields are a third or more of a pod's size and nothing here
	// reads them: the cache keeps every pod of the namespace.
	inf.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
		}
		return obj, nil
	})
	return inf
}

// Switches counts moves to another pod since the forward started.
func (f *Follower) Switches() int64 { return f.switches.Load() }
