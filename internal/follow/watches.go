package follow

import (
	"context"
	"errors"
	"sync"

	"github.com/kpf-dev/kpf/internal/kube"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// Watches shares one watch of a namespace's pods among the followers of
// one cluster, instead of one watch per forward: a file of 200 forwards
// in one namespace costs the API server one list and one watch, not 200.
// Each follower picks its own pods out of the shared stream.
type Watches struct {
	client kube.Interface

	mu   sync.Mutex
	byNS map[string]*nsWatch
	runs sync.WaitGroup // the informers, stopped or not
}

type nsWatch struct {
	inf    cache.SharedIndexInformer
	cancel context.CancelFunc
	users  int
}

// NewWatches returns the shared watches of client's cluster.
func NewWatches(client kube.Interface) *Watches {
	return &Watches{client: client, byNS: map[string]*nsWatch{}}
}

// subscribe adds h to the watch of namespace's pods, starting the watch
// for its first follower; the returned function removes h, and stops the
// watch with its last follower.
func (w *Watches) subscribe(namespace string, h cache.ResourceEventHandler) (unsubscribe func(), synced func() bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	nw := w.byNS[namespace]
	if nw == nil {
		ctx, cancel := context.WithCancel(context.Background())
		nw = &nsWatch{inf: podInformer(w.client, namespace, func(*metav1.ListOptions) {}), cancel: cancel}
		w.byNS[namespace] = nw
		w.runs.Go(func() { nw.inf.RunWithContext(ctx) })
	}
	reg, err := nw.inf.AddEventHandler(h)
	if err != nil {
		if nw.users == 0 {
			nw.cancel()
			delete(w.byNS, namespace)
		}
		return nil, nil, err
	}
	nw.users++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		nw.inf.RemoveEventHandler(reg)
		nw.users--
		if nw.users == 0 {
			nw.cancel()
			if w.byNS[namespace] == nw {
				delete(w.byNS, namespace)
			}
		}
	}, reg.HasSynced, nil
}

// Stop ends every watch, as when the cluster connection closes, and
// returns once they have stopped; a follower still subscribed then hears
// nothing more.
func (w *Watches) Stop() {
	w.mu.Lock()
	for ns, nw := range w.byNS {
		nw.cancel()
		delete(w.byNS, ns)
	}
	w.mu.Unlock()
	w.runs.Wait()
}

// Namespaces is how many namespaces are watched now.
func (w *Watches) Namespaces() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byNS)
}

// mine reports whether p is one of the follower's pods.
func (f *Follower) mine(p *corev1.Pod) bool {
	if f.o.PodName != "" {
		return p.Name == f.o.PodName
	}
	return f.o.Selector.Matches(labels.Set(p.Labels))
}

// Pods joins the watch of namespace's pods for a user other than a
// follower (a discover entry following a headless service's pods):
// changed is called, without waiting on it, after every change; list
// returns the namespace's pods now; stop leaves the watch (the last user
// to leave stops it).
func (w *Watches) Pods(namespace string, changed func()) (list func() []*corev1.Pod, synced func() bool, stop func(), err error) {
	on := func(any) { changed() }
	unsub, synced, err := w.subscribe(namespace, cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, n any) { on(n) }, DeleteFunc: on})
	if err != nil {
		return nil, nil, nil, err
	}
	w.mu.Lock()
	nw := w.byNS[namespace]
	w.mu.Unlock()
	if nw == nil { // Stop came between
		unsub()
		return nil, nil, nil, errors.New("the cluster connection's watches are stopped")
	}
	inf := nw.inf
	list = func() []*corev1.Pod {
		objs := inf.GetStore().List()
		out := make([]*corev1.Pod, 0, len(objs))
		for _, o := range objs {
			if p, ok := o.(*corev1.Pod); ok {
				out = append(out, p)
			}
		}
		return out
	}
	return list, synced, unsub, nil
}
