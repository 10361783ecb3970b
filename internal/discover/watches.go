package discover

import (
	"context"
	"sync"

	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/nswatch"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Watches shares one watch of a namespace's services among the discover
// entries of one cluster connection (as follow.Watches shares pods): two
// entries of one namespace with different selectors cost one list and
// one watch; each picks its services out of the shared cache.
type Watches struct {
	set *nswatch.Set[*state]
}

// state is what the subscribers of a namespace's watch share.
type state struct {
	mu      sync.Mutex
	lastErr error          // the watch's last failure, nil once it lists again
	subs    map[int]func() // told of every change
	nextSub int
}

// tell calls every subscriber's changed.
func (st *state) tell() {
	st.mu.Lock()
	fs := make([]func(), 0, len(st.subs))
	for _, f := range st.subs {
		fs = append(fs, f)
	}
	st.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// NewWatches returns the shared service watches of client's cluster.
func NewWatches(client kube.Interface) *Watches {
	return &Watches{set: nswatch.New(func(namespace string) (cache.SharedIndexInformer, *state, error) {
		inf := serviceInformer(client, namespace)
		st := &state{subs: map[int]func(){}}
		_ = inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			st.mu.Lock()
			st.lastErr = err
			st.mu.Unlock()
			st.tell()
			cache.DefaultWatchErrorHandler(ctx, r, err)
		})
		on := func(any) {
			st.mu.Lock()
			st.lastErr = nil
			st.mu.Unlock()
			st.tell()
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, n any) { on(n) }, DeleteFunc: on}); err != nil {
			return nil, nil, err
		}
		return inf, st, nil
	}, runServiceWatch)}
}

// runServiceWatch runs a namespace's shared service informer (its own
// name in a goroutine dump).
func runServiceWatch(ctx context.Context, inf cache.SharedIndexInformer) { inf.RunWithContext(ctx) }

// Sub is one subscriber's view of a namespace's services.
type Sub struct {
	inf  cache.SharedIndexInformer
	st   *state
	stop func()
}

// Subscribe starts (or joins) the watch of namespace's services; changed
// is called, from the watch's goroutine and without waiting on it, after
// every change (and after a failure of the watch). Close unsubscribes;
// the last subscriber's close stops the watch.
func (w *Watches) Subscribe(namespace string, changed func()) (*Sub, error) {
	inf, st, leave, err := w.set.Join(namespace)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	id := st.nextSub
	st.nextSub++
	st.subs[id] = changed
	st.mu.Unlock()
	var once sync.Once
	return &Sub{inf: inf, st: st, stop: func() {
		once.Do(func() {
			st.mu.Lock()
			delete(st.subs, id)
			st.mu.Unlock()
			leave()
		})
	}}, nil
}

// Close unsubscribes.
func (s *Sub) Close() { s.stop() }

// Synced reports whether the first list has arrived.
func (s *Sub) Synced() bool { return s.inf.HasSynced() }

// Err is the watch's last failure (a Forbidden list, an API server that
// does not answer), or nil while it works.
func (s *Sub) Err() error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return s.st.lastErr
}

// Services are the namespace's services now.
func (s *Sub) Services() []*corev1.Service {
	objs := s.inf.GetStore().List()
	out := make([]*corev1.Service, 0, len(objs))
	for _, o := range objs {
		if svc, ok := o.(*corev1.Service); ok {
			out = append(out, svc)
		}
	}
	return out
}

// Stop ends every watch, as when the cluster connection closes.
func (w *Watches) Stop() { w.set.Stop() }

// Namespaces is how many namespaces' services are watched now.
func (w *Watches) Namespaces() int { return w.set.Namespaces() }

func serviceInformer(client kube.Interface, namespace string) cache.SharedIndexInformer {
	svcs := client.CoreV1().Services(namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, lo metav1.ListOptions) (runtime.Object, error) {
			return svcs.List(ctx, lo)
		},
		WatchFuncWithContext: func(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
			return svcs.Watch(ctx, lo)
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.Service{}, 0, cache.Indexers{})
	_ = inf.SetTransform(func(obj any) (any, error) {
		if s, ok := obj.(*corev1.Service); ok {
			s.ManagedFields = nil
		}
		return obj, nil
	})
	return inf
}
