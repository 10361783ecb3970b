package target

import (
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// ErrNoSelector is wrapped when a Service selects no pods by label.
var ErrNoSelector = errors.New("service has no selector")

// Selector returns the label selector of the pods behind a workload or
// Service, for the kinds kubectl port-forward accepts.
func Selector(obj runtime.Object) (labels.Selector, error) {
	var ls *metav1.LabelSelector
	switch t := obj.(type) {
	case *appsv1.Deployment:
		ls = t.Spec.Selector
	case *appsv1.ReplicaSet:
		ls = t.Spec.Selector
	case *appsv1.StatefulSet:
		ls = t.Spec.Selector
	case *appsv1.DaemonSet:
		ls = t.Spec.Selector
	case *batchv1.Job:
		ls = t.Spec.Selector
	case *corev1.ReplicationController:
		return labels.SelectorFromSet(t.Spec.Selector), nil
	case *corev1.Service:
		if len(t.Spec.Selector) == 0 {
			return nil, fmt.Errorf("%w: service/%s is defined without a selector, so kpf cannot choose a pod for it (forward to one of its pods by name instead: pod/NAME)", ErrNoSelector, t.Name)
		}
		return labels.SelectorFromSet(t.Spec.Selector), nil
	default:
		return nil, fmt.Errorf("cannot forward to a %T: use pod, deployment, replicaset, statefulset, daemonset, job, replicationcontroller or service", obj)
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("invalid label selector: %w", err)
	}
	return sel, nil
}

// PodSpec is the spec of a pod, or of the pods a workload makes; nil for a
// Service and other kinds.
func PodSpec(obj runtime.Object) *corev1.PodSpec {
	switch t := obj.(type) {
	case *corev1.Pod:
		return &t.Spec
	case *appsv1.Deployment:
		return &t.Spec.Template.Spec
	case *appsv1.ReplicaSet:
		return &t.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &t.Spec.Template.Spec
	case *appsv1.DaemonSet:
		return &t.Spec.Template.Spec
	case *batchv1.Job:
		return &t.Spec.Template.Spec
	case *corev1.ReplicationController:
		if t.Spec.Template != nil {
			return &t.Spec.Template.Spec
		}
	}
	return nil
}
