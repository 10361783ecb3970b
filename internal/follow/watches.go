package follow

import (
	"context"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/nswatch"
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
	set *nswatch.Set[struct{}]
}

// NewWatches returns the shared watches of client's cluster.
func NewWatches(client kube.Interface) *Watches {
	return &Watches{set: nswatch.New(func(namespace string) (cache.SharedIndexInformer, struct{}, error) {
		return podInformer(client, namespace, func(*metav1.ListOptions) {}), struct{}{}, nil
	}, runPodWatch)}
}

// runPodWatch runs a namespace's shared pod informer (its own name in a
// goroutine dump).
func runPodWatch(ctx context.Context, inf cache.SharedIndexInformer) { inf.RunWithContext(ctx) }

// subscribe adds h to the watch of namespace's pods, starting the watch
// for its first follower; the returned function removes h, and stops the
// watch with its last follower.
func (w *Watches) subscribe(namespace string, h cache.ResourceEventHandler) (unsubscribe func(), synced func() bool, err error) {
	_, unsubscribe, synced, err = w.join(namespace, h)
	return unsubscribe, synced, err
}

func (w *Watches) join(namespace string, h cache.ResourceEventHandler) (inf cache.SharedIndexInformer, unsubscribe func(), synced func() bool, err error) {
	inf, _, leave, err := w.set.Join(namespace)
	if err != nil {
		return nil, nil, nil, err
	}
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		leave()
		return nil, nil, nil, err
	}
	return inf, func() {
		inf.RemoveEventHandler(reg)
		leave()
	}, reg.HasSynced, nil
}

// Stop ends every watch, as when the cluster connection closes, and
// returns once they have stopped; a follower still subscribed then hears
// nothing more.
func (w *Watches) Stop() { w.set.Stop() }

// Namespaces is how many namespaces are watched now.
func (w *Watches) Namespaces() int { return w.set.Namespaces() }

// mine reports whether p is one of the follower's pods.
func (f *Follower) mine(p *corev1.Pod) bool {
	if f.o.Accept != nil && !f.o.Accept(p) {
		return false
	}
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
	inf, unsub, synced, err := w.join(namespace, cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, n any) { on(n) }, DeleteFunc: on})
	if err != nil {
		return nil, nil, nil, err
	}
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
