package node

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// ServiceCIDR is the cluster's Service IP range (the API server's
// --service-cluster-ip-range); the node's service proxy takes every address
// in it.
const ServiceCIDR = "10.96.0.0/16"

// ClusterDNS is the cluster DNS Service's ClusterIP, the kubelet's
// --cluster-dns: the nameserver of every ClusterFirst pod.
const ClusterDNS = "10.96.0.10"

// ClusterDomain is the kubelet's --cluster-domain.
const ClusterDomain = "cluster.local"

// services is what the node knows of the cluster's Services and their
// EndpointSlices, fed by informers: the service proxy and the cluster DNS
// read it. Safe for concurrent use.
type services struct {
	mu     sync.Mutex
	svcs   map[string]*corev1.Service                       // "ns/name"
	slices map[string]map[string]*discoveryv1.EndpointSlice // "ns/service" -> slice name
	notify func(key string)                                 // a Service or its endpoints changed
}

func newServices() *services {
	return &services{svcs: map[string]*corev1.Service{}, slices: map[string]map[string]*discoveryv1.EndpointSlice{}}
}

// watch feeds s from the API until ctx ends; it returns once the caches
// have synced.
func (s *services) watch(ctx context.Context, cs kubernetes.Interface) {
	f := informers.NewSharedInformerFactory(cs, 0)
	svcInf := f.Core().V1().Services().Informer()
	sliceInf := f.Discovery().V1().EndpointSlices().Informer()
	unwrap := func(obj any) any {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			return t.Obj
		}
		return obj
	}
	svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.setService(o.(*corev1.Service), false) },
		UpdateFunc: func(_, o any) { s.setService(o.(*corev1.Service), false) },
		DeleteFunc: func(o any) {
			if svc, ok := unwrap(o).(*corev1.Service); ok {
				s.setService(svc, true)
			}
		},
	})
	sliceInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.setSlice(o.(*discoveryv1.EndpointSlice), false) },
		UpdateFunc: func(_, o any) { s.setSlice(o.(*discoveryv1.EndpointSlice), false) },
		DeleteFunc: func(o any) {
			if es, ok := unwrap(o).(*discoveryv1.EndpointSlice); ok {
				s.setSlice(es, true)
			}
		},
	})
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	go func() { <-ctx.Done(); f.Shutdown() }()
}

func (s *services) setService(svc *corev1.Service, gone bool) {
	key := svc.Namespace + "/" + svc.Name
	s.mu.Lock()
	if gone {
		delete(s.svcs, key)
	} else {
		s.svcs[key] = svc
	}
	notify := s.notify
	s.mu.Unlock()
	if notify != nil {
		notify(key)
	}
}

func (s *services) setSlice(es *discoveryv1.EndpointSlice, gone bool) {
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return
	}
	key := es.Namespace + "/" + name
	s.mu.Lock()
	m := s.slices[key]
	if gone {
		delete(m, es.Name)
		if len(m) == 0 {
			delete(s.slices, key)
		}
	} else {
		if m == nil {
			m = map[string]*discoveryv1.EndpointSlice{}
			s.slices[key] = m
		}
		m[es.Name] = es
	}
	notify := s.notify
	s.mu.Unlock()
	if notify != nil {
		notify(key)
	}
}

// service returns a Service by "ns/name", or nil.
func (s *services) service(key string) *corev1.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svcs[key]
}

// readyEndpoint is one ready endpoint of a Service.
type readyEndpoint struct {
	addr     netip.Addr
	hostname string
}

// ready lists the ready endpoints of a Service, as kube-proxy counts them
// (a missing Ready condition counts as ready), in a stable order.
func (s *services) ready(key string) []readyEndpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	var eps []readyEndpoint
	seen := map[netip.Addr]bool{}
	for _, es := range s.slices[key] {
		for _, e := range es.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || seen[ip] {
					continue
				}
				seen[ip] = true
				re := readyEndpoint{addr: ip}
				if e.Hostname != nil {
					re.hostname = *e.Hostname
				}
				eps = append(eps, re)
			}
		}
	}
	slices.SortFunc(eps, func(a, b readyEndpoint) int { return a.addr.Compare(b.addr) })
	return eps
}

// backends are the ready endpoints of a Service's port: each address with
// the port that the EndpointSlices give for the Service port's name and
// protocol.
func (s *services) backends(key string, sp corev1.ServicePort) []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, es := range s.slices[key] {
		port := -1
		for _, p := range es.Ports {
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name == sp.Name && proto == sp.Protocol && p.Port != nil {
				port = int(*p.Port)
			}
		}
		if port < 0 {
			continue
		}
		for _, e := range es.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ap := netip.AddrPortFrom(ip, uint16(port))
				if !seen[ap] {
					seen[ap] = true
					out = append(out, ap)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}
