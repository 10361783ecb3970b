package target

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	fakediscovery "k8s.io/client-go/discovery/fake"
	clienttesting "k8s.io/client-go/testing"
)

// concurrentDiscovery is a cached discovery client that counts how many
// callers are inside it at once, as client-go's disk cache is not safe for.
type concurrentDiscovery struct {
	*fakediscovery.FakeDiscovery
	in, most atomic.Int32
}

func (d *concurrentDiscovery) ServerGroupsAndResources() ([]*metav1.APIGroup, []*metav1.APIResourceList, error) {
	n := d.in.Add(1)
	defer d.in.Add(-1)
	for {
		m := d.most.Load()
		if n <= m || d.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(time.Millisecond) // long enough for others to come in, if they may
	return d.FakeDiscovery.ServerGroupsAndResources()
}

func (d *concurrentDiscovery) Fresh() bool { return true }
func (d *concurrentDiscovery) Invalidate() {}

type discoveryGetter struct {
	genericclioptions.RESTClientGetter
	dc discovery.CachedDiscoveryInterface
}

func (g discoveryGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return g.dc, nil
}

// A file's forwards resolve their targets at once through one connection's
// flags: its discovery client sees one caller at a time.
func TestSharedDiscoveryAnswersOneCallerAtATime(t *testing.T) {
	dc := &concurrentDiscovery{FakeDiscovery: &fakediscovery.FakeDiscovery{Fake: &clienttesting.Fake{Resources: []*metav1.APIResourceList{{
		GroupVersion: "v1",
		APIResources: []metav1.APIResource{{Name: "pods", ShortNames: []string{"po"}, Kind: "Pod", Namespaced: true, Verbs: []string{"get"}}},
	}}}}}
	g := Shared(discoveryGetter{dc: dc})
	mapper, err := g.ToRESTMapper()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := mapper.KindFor(schema.GroupVersionResource{Resource: "po"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := dc.most.Load(); m != 1 {
		t.Fatalf("%d callers were in the discovery client at once, want 1", m)
	}
	a, _ := g.ToDiscoveryClient()
	b, _ := g.ToDiscoveryClient()
	if a != b {
		t.Error("a second ToDiscoveryClient made another client")
	}
}
