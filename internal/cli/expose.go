package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/relay"
	"github.com/kpf-dev/kpf/internal/relaypod"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// LabelExpose marks the Service of an exposure (its value is the
// exposure's id, the LabelForward of its relay pods).
const labelExpose = "kpf.dev/expose"

// exposePort is one REMOTE:LOCAL of kpf expose.
type exposePort struct {
	Remote, Local uint16
}

// parseExposePorts reads [REMOTE:]LOCAL arguments; /udp is refused.
func parseExposePorts(args []string) ([]exposePort, error) {
	var out []exposePort
	seen := map[uint16]bool{}
	for _, a := range args {
		if strings.HasSuffix(a, "/udp") {
			return nil, fmt.Errorf("port %q: kpf expose carries TCP only for now; /udp is not supported yet (expose a TCP port, or use kpf forward for UDP the other way)", a)
		}
		remote, local, ok := strings.Cut(strings.TrimSuffix(a, "/tcp"), ":")
		if !ok {
			local = remote
		}
		r, err1 := strconv.ParseUint(remote, 10, 16)
		l, err2 := strconv.ParseUint(local, 10, 16)
		if err1 != nil || err2 != nil || r == 0 || l == 0 {
			return nil, fmt.Errorf("port %q: want [REMOTE:]LOCAL, the Service's port and the local port it reaches, each 1 to 65535, such as 80:8080", a)
		}
		if seen[uint16(r)] {
			return nil, fmt.Errorf("port %q: the Service port %d is given twice", a, r)
		}
		seen[uint16(r)] = true
		out = append(out, exposePort{Remote: uint16(r), Local: uint16(l)})
	}
	return out, nil
}

func newExposeCommand(g *globals) *cobra.Command {
	settings := spec.Defaults()
	address := "127.0.0.1"
	cmd := &cobra.Command{
		Use:   "expose svc/NAME [REMOTE:]LOCAL...",
		Short: "Let the cluster reach a server on this machine, as a Service",
		Long: `Make a Service NAME (ClusterIP, the given ports) and a relay pod it
selects: a connection to the Service's REMOTE port inside the cluster reaches
LOCAL on --address of this machine, over port-forward streams kpf holds to the
relay (the cluster never dials this machine). TCP only for now.

kpf never changes a Service it did not create: if NAME exists, it refuses.
When kpf stops, the Service and the relay pod are deleted. The Service is
owned by the relay pods (owner references): deleting the relay pod deletes
it, which is what kpf relay gc does with the leftovers of a killed kpf.
The Service selects no pods by label: kpf writes its EndpointSlice, which
names only the relay pod kpf made (another pod with its labels gets nothing).
It needs create and delete on services, pods and endpointslices (kpf rbac).`,
		Example: `  # The Service laptop's port 80 in the cluster reaches 127.0.0.1:8080 here
  kpf expose svc/laptop 80:8080`,
		Args:                  cobra.MinimumNArgs(2),
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name, ok := strings.Cut(args[0], "/")
			if !ok || (kind != "svc" && kind != "service" && kind != "services") || name == "" {
				return usagef("%q: kpf expose makes a Service: give svc/NAME, such as svc/laptop", args[0])
			}
			ports, err := parseExposePorts(args[1:])
			if err != nil {
				return usageError{err}
			}
			if ip := net.ParseIP(address); ip == nil {
				return usagef("--address %q: give the IP address of this machine the exposed ports reach, such as 127.0.0.1", address)
			}
			if err := settings.Validate(); err != nil {
				return usageError{err}
			}
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			// Once: logger() sets client-go's global logger too.
			log := g.logger()
			c, err := connect(id, log)
			if err != nil {
				return err
			}
			defer c.Release()
			x := &exposure{g: g, log: log, c: c, ns: c.Namespace(), name: name, ports: ports, address: address, settings: settings}
			return x.run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&address, "address", address, "the address of this machine the exposed ports reach")
	settings.AddFlags(cmd.Flags())
	return cmd
}

// exposure is one run of kpf expose.
type exposure struct {
	g        *globals
	log      *slog.Logger
	c        *cluster.Conn
	ns, name string
	ports    []exposePort
	address  string
	settings spec.Settings
	pod      relaypod.Spec

	mu   sync.Mutex
	made map[types.UID]*corev1.Pod  // every relay pod kpf made for the exposure
	es   *discoveryv1.EndpointSlice // the Service's, as kpf last wrote it
}

// created records a relay pod kpf made (relaypod.Spec.Created).
func (x *exposure) created(p *corev1.Pod) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.made[p.UID] = p
}

// ours: p is a relay pod kpf made for the exposure (follow.Options.Accept).
// Any pod may carry the exposure's kpf.dev/forward label; only these get
// kpf's control stream.
func (x *exposure) ours(p *corev1.Pod) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.made[p.UID]
	return ok
}

// ExistsError is a Service kpf expose would not change.
type serviceExistsError struct {
	Namespace, Name string
	Ours            bool
}

func (e *serviceExistsError) Error() string {
	if e.Ours {
		return fmt.Sprintf("the Service %s/%s exists: a kpf expose made it and may still hold it; if its kpf is gone, kpf relay gc -n %s removes it (with its relay pod)", e.Namespace, e.Name, e.Namespace)
	}
	return fmt.Sprintf("the Service %s/%s exists and kpf did not make it: kpf expose never changes a Service it did not create; choose another name", e.Namespace, e.Name)
}

func (x *exposure) service(owner *corev1.Pod) *corev1.Service {
	var ports []corev1.ServicePort
	for i, p := range x.ports {
		ports = append(ports, corev1.ServicePort{Name: "tcp-" + strconv.Itoa(int(p.Remote)), Protocol: corev1.ProtocolTCP, Port: int32(p.Remote), TargetPort: intstr.FromInt32(int32(relaypod.FirstExposePort + i))})
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: x.name, Namespace: x.ns,
			Labels: map[string]string{relaypod.LabelManagedBy: "kpf", labelExpose: x.pod.Forward},
			Annotations: map[string]string{
				"kpf.dev/about": "kpf expose: connections reach a kpf user's machine through the relay pod named in the EndpointSlice kpf writes (the Service's owner)",
			},
			OwnerReferences: []metav1.OwnerReference{ownerRef(owner)},
		},
		Spec: corev1.ServiceSpec{
			// No selector: a pod anyone made with the relay's labels would
			// get the Service's traffic. kpf writes the EndpointSlice.
			Type:  corev1.ServiceTypeClusterIP,
			Ports: ports,
		},
	}
}

// sliceManager is the endpointslice.kubernetes.io/managed-by label of the
// Service's EndpointSlice: kpf writes it (the endpointslice controllers
// leave the slices of other writers alone).
const sliceManager = "kpf.dev"

// slice is the Service's EndpointSlice: the relay pod at, or no endpoint
// (nil: the relay is gone and no new one is ready yet), owned like the
// Service by owners.
func (x *exposure) slice(at *corev1.Pod, owners []metav1.OwnerReference) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: x.name + "-kpf", Namespace: x.ns,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: x.name, discoveryv1.LabelManagedBy: sliceManager,
				relaypod.LabelManagedBy: "kpf", labelExpose: x.pod.Forward,
			},
			OwnerReferences: owners,
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{},
	}
	for i, p := range x.ports {
		name, port, proto := "tcp-"+strconv.Itoa(int(p.Remote)), int32(relaypod.FirstExposePort+i), corev1.ProtocolTCP
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	if at != nil {
		if ip := net.ParseIP(at.Status.PodIP); ip != nil && ip.To4() == nil {
			es.AddressType = discoveryv1.AddressTypeIPv6
		}
		ready := true
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{at.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: at.Namespace, Name: at.Name, UID: at.UID},
			NodeName:   &at.Spec.NodeName,
		})
	}
	return es
}

// point makes the Service's EndpointSlice name the relay pod at only (or
// nothing, at nil), creating it if it is missing (the garbage collector
// takes it with the last relay pod). No get or list: kpf writes only the
// slice it created (create refuses a name another took).
func (x *exposure) point(ctx context.Context, at *corev1.Pod, owners []metav1.OwnerReference) error {
	slices := x.c.Client().DiscoveryV1().EndpointSlices(x.ns)
	want := x.slice(at, owners)
	x.mu.Lock()
	last := x.es
	x.mu.Unlock()
	var es *discoveryv1.EndpointSlice
	var err error
	if last != nil {
		want.ResourceVersion = last.ResourceVersion
		es, err = slices.Update(ctx, want, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) { // changed by another: kpf's wins
			want.ResourceVersion = ""
			es, err = slices.Update(ctx, want, metav1.UpdateOptions{})
		}
	}
	if last == nil || apierrors.IsNotFound(err) {
		want.ResourceVersion = ""
		es, err = slices.Create(ctx, want, metav1.CreateOptions{})
	}
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.es = es
	x.mu.Unlock()
	return nil
}

func ownerRef(p *corev1.Pod) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: p.Name, UID: p.UID}
}

func (x *exposure) run(ctx context.Context) error {
	svcs := x.c.Client().CoreV1().Services(x.ns)
	if s, err := svcs.Get(ctx, x.name, metav1.GetOptions{}); err == nil {
		return &serviceExistsError{Namespace: x.ns, Name: x.name, Ours: s.Labels[labelExpose] != ""}
	} else if apierrors.IsForbidden(err) {
		return fmt.Errorf("read the Service %s/%s: %w (kpf rbac --expose -n %s prints the Role kpf expose needs)", x.ns, x.name, err, x.ns)
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	b := make([]byte, 6)
	rand.Read(b)
	var reverse []uint16
	for i := range x.ports {
		reverse = append(reverse, uint16(relaypod.FirstExposePort+i))
	}
	x.made = map[types.UID]*corev1.Pod{}
	x.pod = relaypod.Spec{Namespace: x.ns, Image: x.settings.RelayImage, Target: "svc/" + x.name, Owner: relaypod.Me(), Forward: hex.EncodeToString(b), Reverse: reverse, Created: x.created}
	pod, err := relaypod.Start(ctx, x.c.Client(), x.pod, 2*time.Minute)
	if err != nil {
		return err
	}
	defer x.cleanup()
	svc := x.service(pod)
	if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return &serviceExistsError{Namespace: x.ns, Name: x.name}
		}
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("create the Service %s/%s: %w (kpf rbac --expose -n %s prints the Role kpf expose needs)", x.ns, x.name, err, x.ns)
		}
		return fmt.Errorf("create the Service %s/%s: %w", x.ns, x.name, err)
	}
	if err := x.point(ctx, pod, svc.OwnerReferences); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("write the EndpointSlice of the Service %s/%s: %w (kpf rbac --expose -n %s prints the Role kpf expose needs)", x.ns, x.name, err, x.ns)
		}
		return fmt.Errorf("write the EndpointSlice of the Service %s/%s: %w", x.ns, x.name, err)
	}
	dial := func(ctx context.Context, pod string) (*tunnel.Conn, error) {
		return x.c.Dial(ctx, x.ns, pod, x.settings.Transport, x.settings.DataPath, tunnel.PingEvery(x.settings.PingInterval), tunnel.WithLog(x.log))
	}
	f, err := follow.New(ctx, follow.Options{
		Namespace: x.ns, Ref: "svc/" + x.name, Client: x.c.Client(), Dial: dial,
		Selector: relaypod.Selector(x.pod.Forward), Accept: x.ours, ReconnectWait: x.settings.ReconnectWait,
		Initial: pod, Log: x.log, Watches: x.c.Watches(), Liveness: x.c.Liveness(),
	})
	if err != nil {
		return err
	}
	if err := f.Prime(ctx); err != nil {
		return err
	}
	local := map[uint16]string{} // the relay's port → the local address
	for i, p := range x.ports {
		local[uint16(relaypod.FirstExposePort+i)] = net.JoinHostPort(x.address, strconv.Itoa(int(p.Local)))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pairs, err := newSockPairs(ctx)
	if err != nil {
		return err
	}
	up := make(chan error, 1)
	e := &relay.Exposer{
		Dial: func(ctx context.Context) (net.Conn, error) {
			a, b, err := pairs.pair(ctx)
			if err != nil {
				return nil, err
			}
			go func() {
				defer b.Close()
				f.Forward(ctx, b, relaypod.Port, nil)
			}()
			return a, nil
		},
		Local: func(port uint16) (string, bool) { a, ok := local[port]; return a, ok },
		Log:   x.log,
		OnControl: func(err error) {
			select {
			case up <- err:
			default:
			}
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); e.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.After(time.Minute)
	for ready := false; !ready; {
		select {
		case err := <-up:
			ready = err == nil
		case <-deadline:
			return fmt.Errorf("the relay pod %s/%s runs but did not answer kpf within a minute (its log: kubectl logs -n %s %s)", x.ns, pod.Name, x.ns, pod.Name)
		case <-ctx.Done():
			return nil
		}
	}
	for i, p := range x.ports {
		fmt.Fprintf(x.g.out, "Exposing svc/%s.%s:%d -> %s\n", x.name, x.ns, p.Remote, local[uint16(relaypod.FirstExposePort+i)])
	}
	x.keep(ctx, f)
	return nil
}

// keep makes a new relay pod when the one in use is gone (deleted,
// evicted, exited), and has it own the Service too (making the Service
// again if the garbage collector took it with the last pod), until ctx
// ends.
func (x *exposure) keep(ctx context.Context, f *follow.Follower) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lost time.Time
	var owners []metav1.OwnerReference // the Service's, as kpf last wrote them
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if pod, _ := f.State(); pod != "" {
			lost = time.Time{}
			continue
		}
		if lost.IsZero() {
			lost = time.Now()
			// The relay's address may be another pod's soon: the Service
			// names no endpoint until kpf's new relay is ready.
			if err := x.point(ctx, nil, owners); err != nil && ctx.Err() == nil {
				x.log.Error("the EndpointSlice of the exposure", "service", x.name, "err", err)
			}
			continue
		}
		if time.Since(lost) < time.Second {
			continue
		}
		p, err := relaypod.Start(ctx, x.c.Client(), x.pod, 2*time.Minute)
		if err != nil {
			if ctx.Err() == nil {
				x.log.Error("the relay pod is gone and a new one did not start", "service", x.name, "err", err)
			}
			lost = time.Now()
			continue
		}
		o, err := x.own(ctx, p)
		if err != nil && ctx.Err() == nil {
			x.log.Error("the Service of the exposure", "service", x.name, "err", err)
		}
		if err == nil {
			owners = o
			if err := x.point(ctx, p, owners); err != nil && ctx.Err() == nil {
				x.log.Error("the EndpointSlice of the exposure", "service", x.name, "err", err)
			}
		}
		fmt.Fprintf(x.g.errOut, "kpf: the relay pod of svc/%s is gone; a new one, %s, carries it\n", x.name, p.Name)
		lost = time.Time{}
	}
}

// own makes p an owner of the Service, or makes the Service again; it
// returns the Service's owners.
func (x *exposure) own(ctx context.Context, p *corev1.Pod) ([]metav1.OwnerReference, error) {
	svcs := x.c.Client().CoreV1().Services(x.ns)
	s, err := svcs.Get(ctx, x.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s, err = svcs.Create(ctx, x.service(p), metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		return s.OwnerReferences, nil
	}
	if err != nil {
		return nil, err
	}
	if s.Labels[labelExpose] != x.pod.Forward {
		return nil, fmt.Errorf("the Service %s/%s is no longer this exposure's: left alone", x.ns, x.name)
	}
	s.OwnerReferences = append(s.OwnerReferences, ownerRef(p))
	if s, err = svcs.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return nil, err
	}
	return s.OwnerReferences, nil
}

// cleanup deletes the Service and its EndpointSlice (if still this
// exposure's) and the relay pods kpf made, by name and UID (no list: a
// pod kpf did not make is left alone, whatever its labels).
func (x *exposure) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := x.c.Client()
	if s, err := cl.CoreV1().Services(x.ns).Get(ctx, x.name, metav1.GetOptions{}); err == nil && s.Labels[labelExpose] == x.pod.Forward {
		if err := cl.CoreV1().Services(x.ns).Delete(ctx, x.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}}); err != nil && !apierrors.IsNotFound(err) {
			x.log.Error("delete the Service", "service", x.name, "err", err)
		}
	}
	x.mu.Lock()
	es := x.es
	x.mu.Unlock()
	if es != nil {
		err := cl.DiscoveryV1().EndpointSlices(x.ns).Delete(ctx, es.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &es.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			x.log.Error("delete the EndpointSlice", "endpointslice", es.Name, "err", err)
		}
	}
	x.mu.Lock()
	made := make([]*corev1.Pod, 0, len(x.made))
	for _, p := range x.made {
		made = append(made, p)
	}
	x.mu.Unlock()
	for _, p := range made {
		if err := relaypod.Delete(ctx, cl, p); err != nil && !errors.Is(err, context.Canceled) {
			x.log.Error("delete the relay pod", "pod", p.Name, "err", err)
		}
	}
}
