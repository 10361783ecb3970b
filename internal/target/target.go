// Package target turns what the user names (TYPE/NAME and ports) into a pod
// and numeric ports, exactly as kubectl port-forward does: the resource
// builder resolves TYPE/NAME with kubectl's short names, non-pod targets
// pick the first pod of sort.Reverse(ActivePods) over their selector, and
// service ports translate to container ports by kubectl's rules.
//
// It reads the API; it never opens tunnels.
package target

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/portspec"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/watch"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/kubectl/pkg/util"
	"k8s.io/kubectl/pkg/util/podutils"
)

// Target is a resolved forward destination.
type Target struct {
	Namespace string
	// Kind/Name as the user would write it again: "pod/web-0", "service/api".
	Ref    string
	Object runtime.Object
	Pod    *corev1.Pod
	Ports  []portspec.Resolved
	// Destination is set for host/ and ip/ targets: Pod is then the
	// relay pod that dials it.
	Destination *Destination
}

// Getter finds the object a TYPE/NAME names (the resource builder in
// production; a map in unit tests).
type Getter interface {
	Get(ctx context.Context, namespace, typeName string) (runtime.Object, error)
}

// Resolver resolves targets.
type Resolver struct {
	Objects Getter
	Pods    corev1client.PodsGetter
	// PodRunningTimeout bounds the wait for a running pod.
	PodRunningTimeout time.Duration
	// Waiting, if set, hears once that no pod runs yet and the wait
	// begins, and why (as the timeout's error would say it), so that a
	// forward's status can say what it waits for meanwhile.
	Waiting func(why string)
}

// Resolve finds the object, waits for a running pod behind it and
// translates the ports.
func (r *Resolver) Resolve(ctx context.Context, namespace, typeName string, ports []portspec.Port) (*Target, error) {
	obj, err := r.Objects.Get(ctx, namespace, typeName)
	if err != nil {
		return nil, err
	}
	t := New(namespace, typeName, obj)
	if svc, ok := obj.(*corev1.Service); ok {
		if err := checkUDP(servicePortProtocols(svc), ports, func(name string) (int32, error) {
			return util.LookupServicePortNumberByName(*svc, name)
		}, t.Ref); err != nil {
			return nil, err
		}
	}
	pod, err := r.runningPod(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := t.SetPod(pod, ports); err != nil {
		return nil, err
	}
	return t, nil
}

// New is the target obj, found as typeName in namespace, before a pod is
// chosen.
func New(namespace, typeName string, obj runtime.Object) *Target {
	t := &Target{Namespace: namespace, Object: obj, Ref: refOf(obj, typeName)}
	if m, err := metaNamespace(obj); err == nil && m != "" {
		t.Namespace = m
	}
	return t
}

// SetPod makes pod the target's pod and translates ports to its container
// ports, by kubectl's rules.
func (t *Target) SetPod(pod *corev1.Pod, ports []portspec.Port) error {
	t.Pod = pod
	var err error
	switch o := t.Object.(type) {
	case *corev1.Service:
		t.Ports, err = translateServicePorts(ports, o, pod)
	default:
		if err := checkUDP(podPortProtocols(pod), ports, func(name string) (int32, error) {
			return util.LookupContainerPortNumberByName(*pod, name)
		}, "pod/"+pod.Name); err != nil {
			return err
		}
		t.Ports, err = podPorts(ports, pod)
	}
	return err
}

// ErrPodNotRunning is wrapped when no pod ran within the timeout.
var ErrPodNotRunning = errors.New("no running pod")

// ErrNoPort is wrapped when the target has no port the forward names: its
// Service or pod must change first, so waiting does not help.
var ErrNoPort = errors.New("no such port")

// noPort marks err, whose text says which port, as an ErrNoPort.
func noPort(err error) error { return noPortError{err} }

type noPortError struct{ error }

func (e noPortError) Unwrap() error        { return e.error }
func (e noPortError) Is(target error) bool { return target == ErrNoPort }

// runningPod returns the pod to forward to: the pod itself, or the first
// pod of sort.Reverse(ActivePods) among the selector's pods, waiting until
// it runs.
func (r *Resolver) runningPod(ctx context.Context, t *Target) (*corev1.Pod, error) {
	var listOpts metav1.ListOptions
	only := ""
	pick := func(pods []corev1.Pod) *corev1.Pod {
		if only != "" {
			pods = slices.DeleteFunc(slices.Clone(pods), func(p corev1.Pod) bool { return p.Name != only })
		}
		return Best(pods)
	}
	if pod, ok := t.Object.(*corev1.Pod); ok {
		only = pod.Name
		if pod.Status.Phase == corev1.PodRunning {
			return pod, nil
		}
		listOpts.FieldSelector = fields.OneTermEqualSelector("metadata.name", pod.Name).String()
	} else {
		sel, err := Selector(t.Object)
		if err != nil {
			return nil, err
		}
		listOpts.LabelSelector = sel.String()
	}
	ctx, cancel := context.WithTimeout(ctx, r.PodRunningTimeout)
	defer cancel()
	pods := r.Pods.Pods(t.Namespace)
	list, err := pods.List(ctx, listOpts)
	if err != nil {
		return nil, err
	}
	if p := pick(list.Items); p != nil && p.Status.Phase == corev1.PodRunning {
		return p, nil
	}
	// Watch until one runs.
	byName := map[string]corev1.Pod{}
	for _, p := range list.Items {
		byName[p.Name] = p
	}
	if r.Waiting != nil {
		r.Waiting(fmt.Sprintf("no running pod for %s in namespace %q yet (%s); waiting up to %s", t.Ref, t.Namespace, r.notRunningWhat(t, byName), r.PodRunningTimeout))
	}
	listOpts.ResourceVersion = list.ResourceVersion
	w, err := pods.Watch(ctx, listOpts)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, r.notRunning(t, byName)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, r.notRunning(t, byName)
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(byName, p.Name)
			} else {
				byName[p.Name] = *p
			}
			all := make([]corev1.Pod, 0, len(byName))
			for _, p := range byName {
				all = append(all, p)
			}
			if best := pick(all); best != nil && best.Status.Phase == corev1.PodRunning {
				return best, nil
			}
		}
	}
}

func (r *Resolver) notRunning(t *Target, seen map[string]corev1.Pod) error {
	return fmt.Errorf("%w for %s in namespace %q after %s (%s); wait longer with --pod-running-timeout", ErrPodNotRunning, t.Ref, t.Namespace, r.PodRunningTimeout, r.notRunningWhat(t, seen))
}

// notRunningWhat says what the pods seen are doing instead of running.
func (r *Resolver) notRunningWhat(t *Target, seen map[string]corev1.Pod) string {
	what := "no pods match it"
	if len(seen) > 0 {
		var states []string
		for _, p := range seen {
			states = append(states, fmt.Sprintf("%s is %s", p.Name, p.Status.Phase))
		}
		sort.Strings(states)
		what = fmt.Sprintf("%v", states)
	}
	if _, isPod := t.Object.(*corev1.Pod); isPod {
		what = fmt.Sprintf("it is %s", seen[podName(t.Object)].Status.Phase)
		if _, ok := seen[podName(t.Object)]; !ok {
			what = "it was deleted"
		}
	}
	return what
}

func podName(o runtime.Object) string {
	if p, ok := o.(*corev1.Pod); ok {
		return p.Name
	}
	return ""
}

// Best returns the pod kubectl would pick: the first of
// sort.Reverse(ActivePods), which prefers scheduled, Running, Ready, not
// deleting, longer Ready, fewer restarts, older. Nil for no pods.
func Best(pods []corev1.Pod) *corev1.Pod {
	if len(pods) == 0 {
		return nil
	}
	ptrs := make([]*corev1.Pod, len(pods))
	for i := range pods {
		ptrs[i] = &pods[i]
	}
	sort.Sort(sort.Reverse(podutils.ActivePods(ptrs)))
	// A copy: a pointer into pods would keep the whole list, every pod of
	// the selector with its spec and managed fields, alive for as long as
	// the forward keeps its pod (~440 KiB a forward in a namespace with 50
	// failed pods of the same selector).
	best := *ptrs[0]
	return &best
}

// podPorts resolves named container ports.
func podPorts(ports []portspec.Port, pod *corev1.Pod) ([]portspec.Resolved, error) {
	out := make([]portspec.Resolved, 0, len(ports))
	for _, p := range ports {
		r, err := p.Resolve(func(name string) (uint16, error) {
			n, err := util.LookupContainerPortNumberByName(*pod, name)
			if err != nil {
				return 0, noPort(fmt.Errorf("pod/%s has no container port named %q (%w)", pod.Name, name, err))
			}
			return uint16(n), nil
		})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// translateServicePorts maps service ports (numbers or names) to the chosen
// pod's container ports as kubectl does: a named service port listens
// locally on the service port's number unless a local port is given; a
// headless service's ports are taken as they are.
func translateServicePorts(ports []portspec.Port, svc *corev1.Service, pod *corev1.Pod) ([]portspec.Resolved, error) {
	out := make([]portspec.Resolved, 0, len(ports))
	for _, p := range ports {
		svcPort, err := strconv.Atoi(p.Remote)
		if err != nil {
			n, err := util.LookupServicePortNumberByName(*svc, p.Remote)
			if err != nil {
				return nil, noPort(fmt.Errorf("service/%s has no port named %q", svc.Name, p.Remote))
			}
			svcPort = int(n)
		}
		local := p.Local
		if !p.LocalSet {
			local = uint16(svcPort)
		}
		if p.UDP {
			container, err := udpServicePort(svc, pod, int32(svcPort))
			if err != nil {
				return nil, err
			}
			out = append(out, portspec.Resolved{Local: local, Remote: uint16(container), UDP: true})
			continue
		}
		container, err := util.LookupContainerPortNumberByServicePort(*svc, *pod, int32(svcPort))
		if err != nil {
			return nil, noPort(fmt.Errorf("service/%s: %w", svc.Name, err))
		}
		out = append(out, portspec.Resolved{Local: local, Remote: uint16(container)})
	}
	return out, nil
}

// udpServicePort is the container port of a service's UDP port, as the
// Service routes it: the targetPort of the UDP entry (a name looked up
// among the pod's UDP container ports). A headless service's port is the
// pod's.
func udpServicePort(svc *corev1.Service, pod *corev1.Pod, port int32) (int32, error) {
	for _, sp := range svc.Spec.Ports {
		if sp.Port != port || sp.Protocol != corev1.ProtocolUDP {
			continue
		}
		switch {
		case sp.TargetPort.IntValue() != 0:
			return int32(sp.TargetPort.IntValue()), nil
		case sp.TargetPort.StrVal == "":
			return port, nil
		}
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == sp.TargetPort.StrVal && cp.Protocol == corev1.ProtocolUDP {
					return cp.ContainerPort, nil
				}
			}
		}
		return 0, noPort(fmt.Errorf("service/%s: pod %s declares no UDP port named %q (the targetPort of %d/udp)", svc.Name, pod.Name, sp.TargetPort.StrVal, port))
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return port, nil
	}
	return 0, noPort(fmt.Errorf("service/%s has no UDP port %d (its ports: %s)", svc.Name, port, describeServicePorts(svc)))
}

func describeServicePorts(svc *corev1.Service) string {
	var out []string
	for _, sp := range svc.Spec.Ports {
		proto := strings.ToLower(string(sp.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, fmt.Sprintf("%d/%s", sp.Port, proto))
	}
	return strings.Join(out, ", ")
}

type protocols struct{ udp, tcp sets.Set[int] }

func podPortProtocols(pod *corev1.Pod) protocols {
	p := protocols{sets.New[int](), sets.New[int]()}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			p.add(int(cp.ContainerPort), cp.Protocol)
		}
	}
	return p
}

func servicePortProtocols(svc *corev1.Service) protocols {
	p := protocols{sets.New[int](), sets.New[int]()}
	for _, sp := range svc.Spec.Ports {
		p.add(int(sp.Port), sp.Protocol)
	}
	return p
}

func (p protocols) add(n int, proto corev1.Protocol) {
	switch proto {
	case corev1.ProtocolUDP:
		p.udp.Insert(n)
	case corev1.ProtocolTCP, "":
		p.tcp.Insert(n)
	}
}

// ErrUDPOnly is wrapped when a requested port speaks UDP only.
var ErrUDPOnly = errors.New("UDP-only port")

func checkUDP(p protocols, ports []portspec.Port, byName func(string) (int32, error), ref string) error {
	udpOnly := p.udp.Difference(p.tcp)
	for _, port := range ports {
		if port.UDP {
			continue
		}
		n, err := strconv.Atoi(port.Remote)
		if err != nil {
			m, err := byName(port.Remote)
			if err != nil {
				continue // reported when ports are resolved
			}
			n = int(m)
		}
		if udpOnly.Has(n) {
			return fmt.Errorf("%w: port %s of %s is UDP only; forward it as %s/udp", ErrUDPOnly, port.Remote, ref, port.String())
		}
	}
	return nil
}

func metaNamespace(o runtime.Object) (string, error) {
	if m, ok := o.(metav1.Object); ok {
		return m.GetNamespace(), nil
	}
	return "", fmt.Errorf("%T has no metadata", o)
}

// refOf names the object as kind/name.
func refOf(o runtime.Object, typed string) string {
	m, ok := o.(metav1.Object)
	if !ok {
		return typed
	}
	var kind string
	switch o.(type) {
	case *corev1.Pod:
		kind = "pod"
	case *corev1.Service:
		kind = "service"
	case *corev1.ReplicationController:
		kind = "replicationcontroller"
	case *appsv1.Deployment:
		kind = "deployment"
	case *appsv1.ReplicaSet:
		kind = "replicaset"
	case *appsv1.StatefulSet:
		kind = "statefulset"
	case *appsv1.DaemonSet:
		kind = "daemonset"
	case *batchv1.Job:
		kind = "job"
	default:
		kind = strings.ToLower(o.GetObjectKind().GroupVersionKind().Kind)
		if kind == "" {
			kind = strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", o), "*v1."))
		}
	}
	return kind + "/" + m.GetName()
}

// PodReady reports a pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
