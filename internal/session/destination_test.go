package session

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/relaypod"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
)

// TestDestRelayCloseDeletesWhatItMade: when the forward stops, kpf
// deletes the relay pods it made, by name and UID, without listing pods
// (a Role may allow create and delete but not list), and never another
// pod with the forward's label.
func TestDestRelayCloseDeletesWhatItMade(t *testing.T) {
	s := fakeapi.New(t)
	s.Client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", nil)
	})
	spec := relaypod.Spec{Namespace: "shop", Image: "relay", Target: "ip/10.1.2.3", Forward: "f1", Owner: relaypod.Me()}
	r := &destRelay{spec: spec, made: map[types.UID]*corev1.Pod{}}
	pods := s.Client.CoreV1().Pods("shop")
	for _, name := range []string{"kpf-relay-a", "kpf-relay-b", "evil"} {
		p := spec.Pod()
		p.GenerateName, p.Name, p.UID = "", name, types.UID("uid-"+name)
		created, err := pods.Create(context.Background(), p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if name != "evil" {
			r.created(created)
		}
	}
	if !r.ours(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "uid-kpf-relay-a"}}) || r.ours(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "uid-evil"}}) {
		t.Fatal("ours: want the pods kpf made only")
	}
	r.close(s.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, name := range []string{"kpf-relay-a", "kpf-relay-b"} {
		if _, err := pods.Get(context.Background(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s after close: %v, want deleted", name, err)
		}
	}
	if _, err := pods.Get(context.Background(), "evil", metav1.GetOptions{}); err != nil {
		t.Errorf("evil, a pod kpf did not make, after close: %v", err)
	}
}
