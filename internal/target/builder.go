package target

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/restmapper"
)

// BuilderGetter finds objects with the resource builder, as kubectl does:
// "pod/x", "po/x", "deploy/x", "deployments.apps/x", "svc/x", or a bare
// name, which means a pod.
type BuilderGetter struct {
	Flags genericclioptions.RESTClientGetter
}

// Get implements Getter.
func (g BuilderGetter) Get(_ context.Context, namespace, typeName string) (runtime.Object, error) {
	return resource.NewBuilder(g.Flags).
		WithScheme(scheme.Scheme, scheme.Scheme.PrioritizedVersionsAllGroups()...).
		ContinueOnError().
		NamespaceParam(namespace).DefaultNamespace().
		ResourceNames("pods", typeName).
		Do().Object()
}

// Shared wraps flags for the resource builders of many forwards at once
// (a file's, the daemon's): its discovery client answers one caller at a
// time, and its REST mapper is made once on that client. client-go's
// cached discovery client is not safe for concurrent use while its disk
// cache is cold, stale or not writable: callers encode one shared group
// list at the same time (a data race the race detector reported when a
// file's forwards resolved their targets together).
func Shared(flags genericclioptions.RESTClientGetter) genericclioptions.RESTClientGetter {
	return &sharedGetter{RESTClientGetter: flags}
}

type sharedGetter struct {
	genericclioptions.RESTClientGetter

	once   sync.Once
	dc     discovery.CachedDiscoveryInterface
	mapper meta.RESTMapper
	err    error
}

func (g *sharedGetter) init() {
	g.once.Do(func() {
		dc, err := g.RESTClientGetter.ToDiscoveryClient()
		if err != nil {
			g.err = err
			return
		}
		g.dc = &serialDiscovery{CachedDiscoveryInterface: dc}
		g.mapper = restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(g.dc), g.dc, func(string) {})
	})
}

func (g *sharedGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	g.init()
	return g.dc, g.err
}

func (g *sharedGetter) ToRESTMapper() (meta.RESTMapper, error) {
	g.init()
	return g.mapper, g.err
}

// serialDiscovery answers one caller at a time. It has no ...WithContext
// methods on purpose: client-go wraps a client without them so that its
// callers reach these.
type serialDiscovery struct {
	discovery.CachedDiscoveryInterface
	mu sync.Mutex
}

func (d *serialDiscovery) ServerGroups() (*metav1.APIGroupList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.ServerGroups()
}

func (d *serialDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.ServerResourcesForGroupVersion(gv)
}

func (d *serialDiscovery) ServerGroupsAndResources() ([]*metav1.APIGroup, []*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.ServerGroupsAndResources()
}

func (d *serialDiscovery) ServerPreferredResources() ([]*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.ServerPreferredResources()
}

func (d *serialDiscovery) ServerPreferredNamespacedResources() ([]*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.ServerPreferredNamespacedResources()
}

func (d *serialDiscovery) Fresh() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.CachedDiscoveryInterface.Fresh()
}

func (d *serialDiscovery) Invalidate() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.CachedDiscoveryInterface.Invalidate()
}
