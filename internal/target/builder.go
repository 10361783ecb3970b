package target

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/kubernetes/scheme"
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
