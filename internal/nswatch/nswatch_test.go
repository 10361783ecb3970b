package nswatch

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// counting makes pod informers over a fake clientset and counts them.
func counting(t *testing.T) (*Set[int], *atomic.Int32) {
	cs := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "a"}})
	var made atomic.Int32
	s := New(func(ns string) (cache.SharedIndexInformer, int, error) {
		n := made.Add(1)
		pods := cs.CoreV1().Pods(ns)
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, lo metav1.ListOptions) (runtime.Object, error) {
				return pods.List(ctx, lo)
			},
			WatchFuncWithContext: func(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
				return pods.Watch(ctx, lo)
			},
		}
		return cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, cs), &corev1.Pod{}, 0, cache.Indexers{}), int(n), nil
	}, func(ctx context.Context, inf cache.SharedIndexInformer) { inf.RunWithContext(ctx) })
	t.Cleanup(s.Stop)
	return s, &made
}

func TestUsersOfANamespaceShareOneInformer(t *testing.T) {
	s, made := counting(t)
	inf1, v1, leave1, err := s.Join("a")
	if err != nil {
		t.Fatal(err)
	}
	inf2, v2, leave2, err := s.Join("a")
	if err != nil {
		t.Fatal(err)
	}
	_, _, leaveB, err := s.Join("b")
	if err != nil {
		t.Fatal(err)
	}
	if inf1 != inf2 || v1 != v2 || made.Load() != 2 || s.Namespaces() != 2 {
		t.Fatalf("two users of a and one of b: %d informers made, %d namespaces, shared %v; want 2, 2, true", made.Load(), s.Namespaces(), inf1 == inf2)
	}
	testnet.Within(t, 5*time.Second, "the informer lists its pod", func() bool { return len(inf1.GetStore().List()) == 1 })
	leave1()
	leave1() // a second leave is no user's
	if s.Namespaces() != 2 {
		t.Fatalf("a's informer stopped while a user is left (%d namespaces)", s.Namespaces())
	}
	leave2()
	leaveB()
	if s.Namespaces() != 0 {
		t.Fatalf("%d namespaces watched after every user left", s.Namespaces())
	}
	testnet.Within(t, 5*time.Second, "the last leave stops the informer", func() bool { return inf1.IsStopped() })
	if _, _, leave, err := s.Join("a"); err != nil || made.Load() != 3 {
		t.Fatalf("join after the last leave: %v, %d informers made; want a new one", err, made.Load())
	} else {
		leave()
	}
}

func TestJoinAfterStopFails(t *testing.T) {
	s, _ := counting(t)
	inf, _, _, err := s.Join("a")
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if !inf.IsStopped() {
		t.Fatal("Stop returned with an informer running")
	}
	if _, _, _, err := s.Join("a"); !errors.Is(err, ErrStopped) {
		t.Fatalf("join after Stop: %v, want ErrStopped", err)
	}
}

func TestOpenFailsNothingKept(t *testing.T) {
	boom := errors.New("boom")
	s := New(func(string) (cache.SharedIndexInformer, int, error) { return nil, 0, boom }, nil)
	if _, _, _, err := s.Join("a"); !errors.Is(err, boom) || s.Namespaces() != 0 {
		t.Fatalf("join with a failing open: %v, %d namespaces; want boom, 0", err, s.Namespaces())
	}
}
