package discover

import (
	"context"
	"sync"

	"github.com/kpf-dev/kpf/internal/kube"
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
	client kube.Interface

	mu   sync.Mutex
	byNS map[string]*nsWatch
	runs sync.WaitGroup
}

type nsWatch struct {
	inf    cache.SharedIndexInformer
	cancel context.CancelFunc
	users  int

	mu      sync.Mutex
	lastErr error          // the watch's last failure, nil once it lists again
	subs    map[int]func() // told of every change
	nextSub int
}

// NewWatches returns the shared service watches of client's cluster.
func NewWatches(client kube.Interface) *Watches {
	return &Watches{client: client, byNS: map[string]*nsWatch{}}
}

// Sub is one subscriber's view of a namespace's services.
type Sub struct {
	nw   *nsWatch
	stop func()
}

// Subscribe starts (or joins) the watch of namespace's services; changed
// is called, from the watch's goroutine and without waiting on it, after
// every change (and after a failure of the watch). Close unsubscribes;
// the last subscriber's close stops the watch.
func (w *Watches) Subscribe(namespace string, changed func()) (*Sub, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	nw := w.byNS[namespace]
	if nw == nil {
		ctx, cancel := context.WithCancel(context.Background())
		nw = &nsWatch{inf: serviceInformer(w.client, namespace), cancel: cancel, subs: map[int]func(){}}
		tell := func() {
			nw.mu.Lock()
			fs := make([]func(), 0, len(nw.subs))
			for _, f := range nw.subs {
				fs = append(fs, f)
			}
			nw.mu.Unlock()
			for _, f := range fs {
				f()
			}
		}
		_ = nw.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			nw.mu.Lock()
			nw.lastErr = err
			nw.mu.Unlock()
			tell()
			cache.DefaultWatchErrorHandler(ctx, r, err)
		})
		on := func(any) {
			nw.mu.Lock()
			nw.lastErr = nil
			nw.mu.Unlock()
			tell()
		}
		if _, err := nw.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, n any) { on(n) }, DeleteFunc: on}); err != nil {
			cancel()
			return nil, err
		}
		w.byNS[namespace] = nw
		w.runs.Go(func() { nw.inf.RunWithContext(ctx) })
	}
	nw.mu.Lock()
	id := nw.nextSub
	nw.nextSub++
	nw.subs[id] = changed
	nw.mu.Unlock()
	nw.users++
	var once sync.Once
	return &Sub{nw: nw, stop: func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			nw.mu.Lock()
			delete(nw.subs, id)
			nw.mu.Unlock()
			nw.users--
			if nw.users == 0 {
				nw.cancel()
				if w.byNS[namespace] == nw {
					delete(w.byNS, namespace)
				}
			}
		})
	}}, nil
}

// Close unsubscribes.
func (s *Sub) Close() { s.stop() }

// Synced reports whether the first list has arrived.
func (s *Sub) Synced() bool { return s.nw.inf.HasSynced() }

// Err is the watch's last failure (a Forbidden list, an API server that
// does not answer), or nil while it works.
func (s *Sub) Err() error {
	s.nw.mu.Lock()
	defer s.nw.mu.Unlock()
	return s.nw.lastErr
}

// Services are the namespace's services now.
func (s *Sub) Services() []*corev1.Service {
	objs := s.nw.inf.GetStore().List()
	out := make([]*corev1.Service, 0, len(objs))
	for _, o := range objs {
		if svc, ok := o.(*corev1.Service); ok {
			out = append(out, svc)
		}
	}
	return out
}

// Stop ends every watch, as when the cluster connection closes.
func (w *Watches) Stop() {
	w.mu.Lock()
	for ns, nw := range w.byNS {
		nw.cancel()
		delete(w.byNS, ns)
	}
	w.mu.Unlock()
	w.runs.Wait()
}

// Namespaces is how many namespaces' services are watched now.
func (w *Watches) Namespaces() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byNS)
}

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
