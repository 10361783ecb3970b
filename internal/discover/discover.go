// Package discover keeps the forwards of a discover: entry (kpf up --all,
// or discover: in kpf.yaml) in step with the cluster: it watches the
// services of a namespace (one shared watch per namespace and cluster
// connection, Watches) and turns the services the entry selects into the
// set of forwards that should run (Forwards), which the manager applies
// (restarting only what changed).
//
// It owns the naming of the forwards it makes and their addresses; it
// does not run forwards (internal/manager does), connect to clusters
// (internal/cluster owns the watches) or explain errors.
package discover

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Name is the name of the forward of a service's port: NAME.NAMESPACE:PORT
// (the address a client dials, with kpf hosts), and /udp after a UDP
// port. Names of kpf.yaml's forwards have no '.' or ':', so they never
// meet these.
func Name(service, namespace string, port int32, udp bool) string {
	n := service + "." + namespace + ":" + strconv.Itoa(int(port))
	if udp {
		n += "/udp"
	}
	return n
}

// Addresses gives each service of an entry with address: auto its own
// loopback address: config.AutoAddress of its target, or the next one
// when another service of the entry has that one. A service keeps its
// address while the entry runs, even when it is deleted and made again.
type Addresses struct {
	owner map[string]string // address -> the target that has it
	of    map[string]string // target -> its address
}

// Of is the address of target (svc/NAME) in namespace of context.
func (a *Addresses) Of(context, namespace, target string) string {
	if a.of == nil {
		a.owner, a.of = map[string]string{}, map[string]string{}
	}
	key := context + "\x00" + namespace + "\x00" + target
	if addr, ok := a.of[key]; ok {
		return addr
	}
	for i := 0; ; i++ {
		addr := config.AutoAddress(context, namespace, target, i).String()
		if _, taken := a.owner[addr]; !taken {
			a.owner[addr], a.of[key] = key, addr
			return addr
		}
	}
}

// PodName is the name of the forward of a headless service's pod's port:
// POD.SERVICE.NAMESPACE:PORT, the pod's name in the cluster's DNS (a
// StatefulSet's pods: db-0.db.shop), kpf hosts gives it.
func PodName(pod, service, namespace string, port int32, udp bool) string {
	return Name(pod+"."+service, namespace, port, udp)
}

// Headless reports whether svc is headless: its name leads to each of its
// pods, not to one address, so each pod is forwarded on its own.
func Headless(svc *corev1.Service) bool { return svc.Spec.ClusterIP == corev1.ClusterIPNone }

// Forwards are the forwards entry (a Forward whose Discover is set, its
// Namespace resolved) runs for svcs: one per port of each service it
// selects, and of a headless service one per port of each of its pods
// (of pods: those of the namespace), sorted by name. skipped says which
// services have no forward, and why.
func Forwards(entry config.Forward, svcs []*corev1.Service, pods []*corev1.Pod, addrs *Addresses) (fws []config.Forward, skipped []string, err error) {
	sel, err := labels.Parse(entry.Discover.Selector)
	if err != nil {
		return nil, nil, fmt.Errorf("selector %q: %w", entry.Discover.Selector, err)
	}
	svcs = slices.Clone(svcs)
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return strings.Compare(a.Name, b.Name) })
	for _, svc := range svcs {
		if svc.Namespace != entry.Namespace || !sel.Matches(labels.Set(svc.Labels)) || svc.DeletionTimestamp != nil {
			continue
		}
		switch {
		case svc.Spec.Type == corev1.ServiceTypeExternalName:
			skipped = append(skipped, svc.Name+" (ExternalName: nothing in the cluster to forward to)")
			continue
		case len(svc.Spec.Selector) == 0:
			skipped = append(skipped, svc.Name+" (no selector: no pods to forward to)")
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol == corev1.ProtocolSCTP {
				skipped = append(skipped, fmt.Sprintf("%s port %d (SCTP: kpf forwards TCP and UDP)", svc.Name, p.Port))
			}
		}
		if !Headless(svc) {
			fws = append(fws, portForwards(entry, addrs, "svc/"+svc.Name, Name, svc.Name, svc, func(p corev1.ServicePort) string { return strconv.Itoa(int(p.Port)) })...)
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		n := 0
		for _, pod := range sortedPods(pods) {
			if pod.Namespace != svc.Namespace || !sel.Matches(labels.Set(pod.Labels)) || pod.DeletionTimestamp != nil ||
				pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
				continue
			}
			n++
			name := func(_, ns string, port int32, udp bool) string { return PodName(pod.Name, svc.Name, ns, port, udp) }
			// A pod's port is the service's target port (a number, or a
			// name the pod's containers give a port).
			remote := func(p corev1.ServicePort) string {
				switch {
				case p.TargetPort.StrVal != "":
					return p.TargetPort.StrVal
				case p.TargetPort.IntVal != 0:
					return strconv.Itoa(int(p.TargetPort.IntVal))
				}
				return strconv.Itoa(int(p.Port))
			}
			fws = append(fws, portForwards(entry, addrs, "pod/"+pod.Name, name, svc.Name, svc, remote)...)
		}
		if n == 0 {
			skipped = append(skipped, svc.Name+" (headless: no pods yet)")
		}
	}
	return fws, skipped, nil
}

// portForwards are the forwards of target, one per TCP and UDP port of
// svc, at the service port, to remote's port.
func portForwards(entry config.Forward, addrs *Addresses, target string, name func(svc, ns string, port int32, udp bool) string, svcName string, svc *corev1.Service, remote func(corev1.ServicePort) string) []config.Forward {
	addresses := entry.Addresses
	if entry.AutoAddress {
		addresses = []string{addrs.Of(entry.Context, entry.Namespace, target)}
	}
	var fws []config.Forward
	for _, p := range svc.Spec.Ports {
		if p.Protocol == corev1.ProtocolSCTP {
			continue
		}
		udp := p.Protocol == corev1.ProtocolUDP
		fws = append(fws, config.Forward{
			Name:        name(svcName, svc.Namespace, p.Port, udp),
			Context:     entry.Context,
			Namespace:   svc.Namespace,
			Target:      target,
			Ports:       []portspec.Port{{Local: uint16(p.Port), Remote: remote(p), LocalSet: true, UDP: udp}},
			Addresses:   slices.Clone(addresses),
			AutoAddress: entry.AutoAddress,
			Owner:       entry.Name,
			Source:      "targetPort " + p.TargetPort.String(),
		})
	}
	return fws
}

func sortedPods(pods []*corev1.Pod) []*corev1.Pod {
	pods = slices.Clone(pods)
	slices.SortFunc(pods, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return pods
}

// PodWatches are the shared pod watches of a cluster connection
// (follow.Watches).
type PodWatches interface {
	Pods(namespace string, changed func()) (list func() []*corev1.Pod, synced func() bool, stop func(), err error)
}

// Settle is how long Run gathers changes before it applies them: 50
// services created at once are applied in a few sets, not 50.
const Settle = 200 * time.Millisecond

// Run keeps entry's forwards in step with the services of its namespace
// until ctx ends: apply is called with every new set (and a note for the
// entry's status: how many services, which were skipped, or that the
// watch fails and the set may be stale). It returns nil when ctx ends,
// and an error when the entry is wrong (a bad selector) or the services
// could not be listed a first time (Forbidden, an API server that does
// not answer).
func Run(ctx context.Context, w *Watches, pods PodWatches, entry config.Forward, apply func(fws []config.Forward, note string)) error {
	if _, err := labels.Parse(entry.Discover.Selector); err != nil {
		return fmt.Errorf("selector %q: %w", entry.Discover.Selector, err)
	}
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	var stopPods func()
	sub, err := w.Subscribe(entry.Namespace, poke)
	if err != nil {
		return err
	}
	defer sub.Close()
	kick <- struct{}{} // a namespace without services sends no event
	// The namespace's pods, once a headless service needs them: through
	// the connection's shared pod watch, which its forwards use anyway.
	var listPods func() []*corev1.Pod
	podsSynced := func() bool { return true }
	defer func() {
		if stopPods != nil {
			stopPods()
		}
	}()
	addrs := &Addresses{}
	var last []config.Forward
	lastNote := ""
	applied := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		// Gather what else arrives meanwhile.
		t := time.NewTimer(Settle)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		select {
		case <-kick:
		default:
		}
		if !sub.Synced() || !podsSynced() {
			if err := sub.Err(); err != nil && !sub.Synced() {
				// Nothing known yet: the entry is down, and its
				// supervisor says why and tries again.
				return fmt.Errorf("watch services in namespace %s: %w", entry.Namespace, err)
			}
			// Look again soon: the first list may arrive without a
			// service in it, and so without an event.
			time.AfterFunc(Settle, poke)
			continue
		}
		svcs := sub.Services()
		if listPods == nil && slices.ContainsFunc(svcs, Headless) {
			l, synced, stop, err := pods.Pods(entry.Namespace, poke)
			if err != nil {
				return err
			}
			listPods, podsSynced, stopPods = l, synced, stop
		}
		if !podsSynced() {
			time.AfterFunc(Settle, poke)
			continue
		}
		var podList []*corev1.Pod
		if listPods != nil {
			podList = listPods()
		}
		fws, skipped, err := Forwards(entry, svcs, podList, addrs)
		if err != nil {
			return err
		}
		note := fmt.Sprintf("%d forwards of services in %s", len(fws), entry.Namespace)
		if len(skipped) > 0 {
			note += "; not forwarded: " + strings.Join(skipped, ", ")
		}
		if err := sub.Err(); err != nil {
			note += "; the watch of services fails (the set may be stale): " + err.Error()
		}
		if applied && note == lastNote && slices.EqualFunc(fws, last, same) {
			continue
		}
		apply(fws, note)
		applied, last, lastNote = true, fws, note
	}
}

// same compares two forwards this package made, field by field.
func same(a, b config.Forward) bool {
	return a.Name == b.Name && a.Context == b.Context && a.Namespace == b.Namespace && a.Target == b.Target &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Addresses, b.Addresses) && a.AutoAddress == b.AutoAddress && a.Owner == b.Owner && a.Source == b.Source
}
