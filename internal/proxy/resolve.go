package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/target"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/kubectl/pkg/util"
)

// Route is where a connection to a cluster name goes: a service's pods
// (spread over the ready ones) or one pod, and the container port.
type Route struct {
	Namespace string
	Ref       string          // service/api or pod/web-0
	Selector  labels.Selector // the service's; nil for a pod
	Pod       string          // the pod's name; "" for a service
	Port      uint16          // in the pod
}

// key names the backend a route uses: every port of a service shares its
// pods' tunnels.
func (r Route) key() string { return r.Namespace + "/" + r.Ref }

// ErrOutside is wrapped when a name is not a cluster name: the proxy
// refuses it, or dials it directly with Direct.
var ErrOutside = errors.New("not a cluster name")

// NotFoundError says which service, pod or port a name does not match, and
// what exists instead.
type NotFoundError struct {
	What   string // what was asked for: service "api2" in namespace "demo"
	Exists []string
	Hint   string
}

func (e *NotFoundError) Error() string {
	s := "no " + e.What
	if len(e.Exists) > 0 {
		s += " (" + strings.Join(e.Exists, ", ") + ")"
	}
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// resolver turns host:port into a Route by reading the API, as the
// cluster's DNS and the Service would route it.
type resolver struct {
	client    kube.Interface
	namespace string // for a bare service name
	domain    string // cluster.local
	direct    bool   // names outside the cluster may pass

	mu    sync.Mutex
	cache map[string]cached
	ips   *ipIndex // ClusterIPs and pod IPs, read at most every ipTTL
}

type cached struct {
	r   Route
	exp time.Time
}

// routeTTL is how long a resolved name is kept: a connection to a known
// name costs no API call, and a changed service is seen within seconds.
const routeTTL = 5 * time.Second

// ipTTL is how long the ClusterIP and pod IP index is kept.
const ipTTL = 5 * time.Second

func (r *resolver) resolve(ctx context.Context, host string, port uint16) (Route, error) {
	key := host + ":" + strconv.Itoa(int(port))
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && time.Now().Before(c.exp) {
		r.mu.Unlock()
		return c.r, nil
	}
	r.mu.Unlock()
	rt, err := r.lookup(ctx, host, port)
	if err != nil {
		return Route{}, err
	}
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]cached{}
	}
	r.cache[key] = cached{rt, time.Now().Add(routeTTL)}
	r.mu.Unlock()
	return rt, nil
}

func (r *resolver) lookup(ctx context.Context, host string, port uint16) (Route, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return r.byIP(ctx, ip.Unmap(), port)
	}
	parts := strings.Split(host, ".")
	explicit := false // the name says it is a cluster name
	if rest, ok := strings.CutSuffix(host, ".svc."+r.domain); ok {
		parts, explicit = strings.Split(rest, "."), true
	} else if rest, ok := strings.CutSuffix(host, ".svc"); ok {
		parts, explicit = strings.Split(rest, "."), true
	}
	switch {
	case explicit && len(parts) == 2:
		return r.service(ctx, parts[1], parts[0], port, true)
	case explicit && len(parts) == 3:
		return r.headlessPod(ctx, parts[2], parts[1], parts[0], port)
	case explicit:
		return Route{}, fmt.Errorf("%s: a cluster name is SERVICE.NAMESPACE.svc[.%s], or POD.SERVICE.NAMESPACE.svc[.%[2]s] for a headless service's pod", host, r.domain)
	case len(parts) == 1:
		return r.service(ctx, r.namespace, parts[0], port, false)
	case len(parts) == 2:
		return r.service(ctx, parts[1], parts[0], port, false)
	}
	return Route{}, fmt.Errorf("%s: %w", host, ErrOutside)
}

// service routes to a service's pods; a short name (explicit false) that
// names no service may be a name outside the cluster.
func (r *resolver) service(ctx context.Context, ns, name string, port uint16, explicit bool) (Route, error) {
	svc, err := r.client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		list, lerr := r.client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil && !explicit && r.direct {
			return Route{}, fmt.Errorf("%s.%s: %w (no such service)", name, ns, ErrOutside)
		}
		if lerr != nil {
			// Without list (a Role with get only) the namespace's
			// services are unknown: say what is, not "outside".
			return Route{}, &NotFoundError{What: fmt.Sprintf("service %q in namespace %q", name, ns), Hint: "listing its services to name them failed: " + lerr.Error()}
		}
		var names []string
		for _, s := range list.Items {
			names = append(names, s.Name)
		}
		slices.Sort(names)
		if !explicit && len(names) == 0 {
			// No such namespace, or nothing in it: a name like
			// example.com is not the cluster's.
			return Route{}, fmt.Errorf("%s.%s: %w (namespace %q has no services)", name, ns, ErrOutside, ns)
		}
		e := &NotFoundError{What: fmt.Sprintf("service %q in namespace %q", name, ns), Exists: names}
		if !explicit && !r.direct {
			e.Hint = "names outside the cluster pass only with --direct"
		}
		if !explicit && r.direct {
			return Route{}, fmt.Errorf("%w: %w", ErrOutside, e)
		}
		return Route{}, e
	}
	if err != nil {
		return Route{}, fmt.Errorf("service %s/%s: %w", ns, name, err)
	}
	return r.serviceRoute(ctx, svc, port)
}

func (r *resolver) serviceRoute(ctx context.Context, svc *corev1.Service, port uint16) (Route, error) {
	ref := "service/" + svc.Name
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return Route{}, fmt.Errorf("%s in namespace %q is an ExternalName (%s): it has no pods to reach; use that name with --direct", ref, svc.Namespace, svc.Spec.ExternalName)
	}
	if len(svc.Spec.Selector) == 0 {
		return Route{}, fmt.Errorf("%s in namespace %q has no selector: kpf reaches a service's pods through its selector", ref, svc.Namespace)
	}
	rt := Route{Namespace: svc.Namespace, Ref: ref, Selector: labels.SelectorFromSet(svc.Spec.Selector)}
	headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
	var sp *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Port == int32(port) && (p.Protocol == corev1.ProtocolTCP || p.Protocol == "") {
			sp = &svc.Spec.Ports[i]
		}
	}
	switch {
	case sp == nil && headless:
		rt.Port = port // the pods' addresses, any port: as DNS gives them
		return rt, nil
	case sp == nil:
		return Route{}, &NotFoundError{What: fmt.Sprintf("port %d on %s in namespace %q", port, ref, svc.Namespace), Exists: servicePorts(svc)}
	case sp.TargetPort.IntValue() != 0:
		rt.Port = uint16(sp.TargetPort.IntValue())
		return rt, nil
	case sp.TargetPort.StrVal == "":
		rt.Port = port
		return rt, nil
	}
	// A named targetPort: the number a pod declares for it, as kubectl
	// translates it (against one pod: the Service itself would look it
	// up per pod).
	pods, err := r.client.CoreV1().Pods(svc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: rt.Selector.String()})
	if err != nil {
		return Route{}, fmt.Errorf("pods of %s: %w", ref, err)
	}
	p := target.Best(pods.Items)
	if p == nil {
		return Route{}, fmt.Errorf("%s in namespace %q has no pods to look up its port %q in", ref, svc.Namespace, sp.TargetPort.StrVal)
	}
	n, err := util.LookupContainerPortNumberByServicePort(*svc, *p, int32(port))
	if err != nil {
		return Route{}, fmt.Errorf("%s: %w", ref, err)
	}
	rt.Port = uint16(n)
	return rt, nil
}

func servicePorts(svc *corev1.Service) []string {
	var out []string
	for _, p := range svc.Spec.Ports {
		s := strconv.Itoa(int(p.Port))
		if p.Name != "" {
			s += "/" + p.Name
		}
		if p.Protocol == corev1.ProtocolUDP || p.Protocol == corev1.ProtocolSCTP {
			s += " (" + string(p.Protocol) + ")"
		}
		out = append(out, s)
	}
	return out
}

// headlessPod routes POD.SERVICE.NAMESPACE.svc to the pod whose hostname
// and subdomain say so (a StatefulSet's pods), at the port given.
func (r *resolver) headlessPod(ctx context.Context, ns, svcName, host string, port uint16) (Route, error) {
	svc, err := r.client.CoreV1().Services(ns).Get(ctx, svcName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Route{}, &NotFoundError{What: fmt.Sprintf("service %q in namespace %q", svcName, ns)}
	}
	if err != nil {
		return Route{}, fmt.Errorf("service %s/%s: %w", ns, svcName, err)
	}
	pods, err := r.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String()})
	if err != nil {
		return Route{}, fmt.Errorf("pods of service/%s: %w", svcName, err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.Spec.Subdomain != svcName || p.Spec.Hostname == "" {
			continue
		}
		if p.Spec.Hostname == host && p.DeletionTimestamp == nil {
			return Route{Namespace: ns, Ref: "pod/" + p.Name, Pod: p.Name, Port: port}, nil
		}
		names = append(names, p.Spec.Hostname)
	}
	slices.Sort(names)
	e := &NotFoundError{What: fmt.Sprintf("pod with hostname %q under service %q in namespace %q", host, svcName, ns), Exists: names}
	if len(names) == 0 {
		e.Hint = "pods get such names from a headless service (clusterIP: None) named in their subdomain, as a StatefulSet's do"
	}
	return Route{}, e
}

// ipIndex is every service's ClusterIPs and every pod's IPs.
type ipIndex struct {
	at       time.Time
	services map[netip.Addr]*corev1.Service
	pods     map[netip.Addr]*corev1.Pod
}

// byIP routes a ClusterIP to its service and a pod IP to its pod; both
// need list on services and pods in every namespace.
func (r *resolver) byIP(ctx context.Context, ip netip.Addr, port uint16) (Route, error) {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return Route{}, fmt.Errorf("%s: %w", ip, ErrOutside)
	}
	r.mu.Lock()
	idx := r.ips
	r.mu.Unlock()
	if idx == nil || time.Since(idx.at) > ipTTL {
		var err error
		if idx, err = r.readIPs(ctx); err != nil {
			return Route{}, err
		}
		r.mu.Lock()
		r.ips = idx
		r.mu.Unlock()
	}
	if svc, ok := idx.services[ip]; ok {
		return r.serviceRoute(ctx, svc, port)
	}
	if p, ok := idx.pods[ip]; ok {
		return Route{Namespace: p.Namespace, Ref: "pod/" + p.Name, Pod: p.Name, Port: port}, nil
	}
	return Route{}, fmt.Errorf("%s: %w (no service or pod has this address)", ip, ErrOutside)
}

func (r *resolver) readIPs(ctx context.Context) (*ipIndex, error) {
	idx := &ipIndex{at: time.Now(), services: map[netip.Addr]*corev1.Service{}, pods: map[netip.Addr]*corev1.Pod{}}
	svcs, err := r.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("finding an IP address's service needs list on services in every namespace: %w", err)
	}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		for _, a := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
			if ip, err := netip.ParseAddr(a); err == nil {
				idx.services[ip] = s
			}
		}
	}
	pods, err := r.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("status.phase", string(corev1.PodRunning)).String()})
	if err != nil {
		return nil, fmt.Errorf("finding an IP address's pod needs list on pods in every namespace: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.HostNetwork {
			continue // the node's address, not the pod's
		}
		for _, a := range p.Status.PodIPs {
			if ip, err := netip.ParseAddr(a.IP); err == nil {
				idx.pods[ip] = p
			}
		}
		if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			idx.pods[ip] = p
		}
	}
	return idx, nil
}
