// Package node is the sandbox's node agent: it plays the kubelet (and the
// scheduler's one job on a one-node cluster, binding pods) for a single node.
// It registers a Ready node, runs each pod's containers as local processes
// with a loopback address of their own, reports their status truthfully, and
// serves the kubelet API over TLS, where port-forward is served by the
// upstream streaming server so that the wire behaviour is the real one.
//
// It is test infrastructure: it is never linked into kpf.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// KubeletVersion is what the node reports as its kubelet version.
const KubeletVersion = "v1.37.2"

// Config configures an Agent.
type Config struct {
	NodeName string
	// Node is the client with the node's own identity (system:node:NAME): it
	// registers the node, renews its lease, writes pod status and deletes
	// pods whose termination is complete.
	Node kubernetes.Interface
	// Scheduler is the client that watches all pods and binds unscheduled
	// ones to this node (system:kube-scheduler).
	Scheduler kubernetes.Interface

	Port                        int    // kubelet API port on 127.0.0.1
	CertFile, KeyFile, ClientCA string // kubelet API TLS
	StateDir                    string // container logs and the pid file
	// AddrPrefix is the first two octets of the pods' loopback addresses:
	// pod n gets 127.P.(n>>8).(n&255) to bind and dial, and reports
	// 198.18.(n>>8).(n&255) as its podIP, an address nothing connects to
	// that passes EndpointSlice validation (loopback does not).
	AddrPrefix byte
	// Self is the executable that runs the built-in kpf.test/* images.
	Self string
	Log  *slog.Logger

	// Services is the client of the node's service proxy and cluster DNS
	// (kube-proxy's and CoreDNS's own identities on a real cluster): it
	// watches Services and EndpointSlices and installs the kube-dns
	// Service. Nil, or no pod network: neither runs.
	Services kubernetes.Interface

	// Topology is the path port-forwards take through the node
	// (TopologyCRI if empty).
	Topology Topology
	// StreamIdleTimeout closes a port-forward connection idle for this
	// long (no frame either way): the kubelet's
	// --streaming-connection-idle-timeout. Since the kubelet stopped
	// serving streams itself, that flag is parsed and unused, and the
	// timeout that applies is the CRI streaming server's (containerd's
	// stream_idle_timeout); the sandbox applies it where its node serves
	// the streams: in the CRI streaming server, or in the kubelet handler
	// of the legacy topology. 0 is DefaultStreamIdleTimeout.
	StreamIdleTimeout time.Duration
}

// Agent is a running node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	addrs *addrPool
	pids  *pidFile

	kubelet   *recorder // events as the kubelet
	scheduler *recorder // events as the scheduler
	labels    map[string]string

	cri       *criStreams  // the CRI streaming server; nil on a legacy node
	tunnelled atomic.Int64 // WebSocket port-forwards the node took SPDY out of
	// clusterDNS: the node serves ClusterIPs and the cluster DNS, so
	// containers get their pod's resolv.conf.
	clusterDNS atomic.Bool

	mu      sync.Mutex
	workers map[types.UID]*podWorker
}

// New checks cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" || cfg.Node == nil || cfg.Scheduler == nil {
		return nil, errors.New("node: NodeName, Node and Scheduler are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.AddrPrefix == 0 {
		cfg.AddrPrefix = 77
	}
	if cfg.Topology == "" {
		cfg.Topology = TopologyCRI
	}
	if _, err := ParseTopology(string(cfg.Topology)); err != nil {
		return nil, err
	}
	if cfg.StreamIdleTimeout == 0 {
		cfg.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "pods"), 0o700); err != nil {
		return nil, err
	}
	pn, err := newPodNet(cfg.Log)
	if err != nil {
		cfg.Log.Info("no pod network: pods share the node's, each on a loopback address", "why", err)
		pn = nil
	}
	return &Agent{
		cfg:       cfg,
		log:       cfg.Log,
		addrs:     newAddrPool(cfg.AddrPrefix, pn),
		pids:      &pidFile{path: filepath.Join(cfg.StateDir, "container-pgids")},
		workers:   map[types.UID]*podWorker{},
		kubelet:   newRecorder(cfg.Node, "kubelet", cfg.NodeName, cfg.Log),
		scheduler: newRecorder(cfg.Scheduler, "default-scheduler", "", cfg.Log),
		labels: map[string]string{
			corev1.LabelHostname:   cfg.NodeName,
			corev1.LabelOSStable:   runtime.GOOS,
			corev1.LabelArchStable: runtime.GOARCH,
		},
	}, nil
}

// Run registers the node and runs pods until ctx ends; then it stops every
// container it started.
func (a *Agent) Run(ctx context.Context) error {
	// Containers of an earlier agent that died without cleaning up.
	a.pids.killAll()

	ln, err := a.listen()
	if err != nil {
		return err
	}
	if a.cfg.Topology == TopologyCRI {
		if a.cri, err = a.startCRIStreams(); err != nil {
			ln.Close()
			return fmt.Errorf("CRI streaming server: %w", err)
		}
		defer a.cri.close()
	}
	srv := a.server()
	go func() {
		if err := srv.ServeTLS(ln, a.cfg.CertFile, a.cfg.KeyFile); err != nil && !errors.Is(err, net.ErrClosed) && err.Error() != "http: Server closed" {
			a.log.Error("kubelet API server stopped", "err", err)
		}
	}()
	defer srv.Close()

	if err := a.register(ctx); err != nil {
		return err
	}
	go a.kubelet.run(ctx)
	go a.scheduler.run(ctx)
	go a.heartbeat(ctx)
	if a.addrs.net != nil && a.cfg.Services != nil {
		if stop, err := a.startServices(ctx, ServiceCIDR, dnsAddr.String()); err != nil {
			a.log.Warn("no ClusterIPs or cluster DNS for pods", "err", err)
		} else {
			defer stop()
		}
	}

	factory := informers.NewSharedInformerFactory(a.cfg.Scheduler, 0)
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.gone(p.UID)
			}
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	a.log.Info("node agent running", "node", a.cfg.NodeName, "port", a.cfg.Port, "topology", a.cfg.Topology, "streamIdleTimeout", a.cfg.StreamIdleTimeout)
	<-ctx.Done()
	factory.Shutdown()
	a.stopAll()
	return nil
}

// startServices starts the service proxy for the Service range cidr and
// the cluster DNS on dnsListen (before any pod, so that every container
// gets the cluster's resolv.conf); stop undoes what it did to the node.
func (a *Agent) startServices(ctx context.Context, cidr, dnsListen string) (stop func(), err error) {
	if err := addServiceRoute(cidr); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	svcs := newServices()
	proxy := newServiceProxy(a.log, svcs)
	svcs.notify = proxy.sync
	stop = func() {
		cancel()
		proxy.stop()
		removeServiceRoute(cidr)
	}
	d := &clusterDNS{log: a.log, svcs: svcs, upstream: hostNameservers(hostResolvConf)}
	if err := d.serve(ctx, dnsListen); err != nil {
		stop()
		return nil, err
	}
	svcs.watch(ctx, a.cfg.Services)
	go func() {
		err := retry(ctx, func(ctx context.Context) error { return ensureDNSService(ctx, a.cfg.Services, a.cfg.NodeName) })
		if err != nil && ctx.Err() == nil {
			a.log.Warn("cluster DNS Service", "err", err)
		}
	}()
	a.clusterDNS.Store(true)
	a.log.Info("service proxy and cluster DNS running", "serviceCIDR", cidr, "clusterDNS", ClusterDNS, "dnsServer", dnsListen, "upstream", d.upstream)
	return stop, nil
}

func (a *Agent) listen() (net.Listener, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(a.cfg.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kubelet API: listen %s: %w", addr, err)
	}
	return ln, nil
}

// observe routes a pod event: bind it if unscheduled, hand it to its worker
// if it is ours.
func (a *Agent) observe(ctx context.Context, pod *corev1.Pod) {
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp == nil && (pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == corev1.DefaultSchedulerName) {
			if msg := a.unfit(pod); msg != "" {
				go a.unschedulable(ctx, pod, msg)
			} else {
				go a.bind(ctx, pod)
			}
		}
		return
	}
	if pod.Spec.NodeName != a.cfg.NodeName {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.workers[pod.UID]; ok {
		w.update(pod)
		return
	}
	terminal := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if terminal && pod.DeletionTimestamp == nil {
		return // finished before this agent started; nothing to run
	}
	w := newPodWorker(a, pod)
	a.workers[pod.UID] = w
	go func() {
		w.run(ctx)
		a.mu.Lock()
		delete(a.workers, pod.UID)
		a.mu.Unlock()
	}()
}

// gone stops a pod that disappeared from the API (force deletion).
func (a *Agent) gone(uid types.UID) {
	a.mu.Lock()
	w := a.workers[uid]
	a.mu.Unlock()
	if w != nil {
		w.removed()
	}
}

func (a *Agent) bind(ctx context.Context, pod *corev1.Pod) {
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName},
	}
	err := retry(ctx, func(ctx context.Context) error {
		err := a.cfg.Scheduler.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // bound already, or gone
		}
		return err
	})
	if err != nil {
		a.log.Warn("bind pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return
	}
	a.scheduler.event(pod.Namespace, pod.Name, pod.UID, "", corev1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, a.cfg.NodeName)
}

// unfit says why this node cannot take pod, as the scheduler would; ""
// if it can. The sandbox checks the node selector and required node
// affinity on the node's labels only.
func (a *Agent) unfit(pod *corev1.Pod) string {
	for k, v := range pod.Spec.NodeSelector {
		if a.labels[k] != v {
			return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
		}
	}
	return ""
}

// unschedulable reports, as the scheduler does, that no node fits: the
// PodScheduled condition False with reason Unschedulable, and a
// FailedScheduling event.
func (a *Agent) unschedulable(ctx context.Context, pod *corev1.Pod, msg string) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Message == msg {
			return // said already
		}
	}
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodPending
	cond := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: msg, LastTransitionTime: metav1.Now()}
	p.Status.Conditions = append(slices.DeleteFunc(p.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == corev1.PodScheduled }), cond)
	if _, err := a.cfg.Scheduler.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			a.log.Warn("report unschedulable pod", "pod", p.Namespace+"/"+p.Name, "err", err)
		}
		return
	}
	a.scheduler.event(p.Namespace, p.Name, p.UID, "", corev1.EventTypeWarning, "FailedScheduling", "%s", msg)
}

// worker finds the running worker of a pod by namespace and name.
func (a *Agent) worker(namespace, name string, uid types.UID) *podWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	var found *podWorker
	for _, w := range a.workers {
		if w.namespace == namespace && w.name == name && (uid == "" || w.uid == uid) {
			if found == nil || !w.deleting() {
				found = w
			}
		}
	}
	return found
}

func (a *Agent) workerByUID(uid types.UID) *podWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.workers[uid]
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	ws := make([]*podWorker, 0, len(a.workers))
	for _, w := range a.workers {
		ws = append(ws, w)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.shutdown() }()
	}
	wg.Wait()
}

// register creates the Node object, or refreshes the one there.
func (a *Agent) register(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   a.cfg.NodeName,
			Labels: a.labels,
		},
	}
	return retry(ctx, func(ctx context.Context) error {
		_, err := a.cfg.Node.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
		}
		return a.updateNodeStatus(ctx)
	})
}

func (a *Agent) updateNodeStatus(ctx context.Context) error {
	n, err := a.cfg.Node.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range n.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	hostname, _ := os.Hostname()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory:           resource.MustParse("16Gi"),
		corev1.ResourcePods:             resource.MustParse("250"),
		corev1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
	}
	n.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kpf-sandbox node agent is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: hostname},
		},
		DeclaredFeatures: a.cfg.Topology.declaredFeatures(),
		DaemonEndpoints:  corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(a.cfg.Port)}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID:               "kpf-sandbox",
			SystemUUID:              "kpf-sandbox",
			BootID:                  "kpf-sandbox",
			KernelVersion:           kernelVersion(),
			OSImage:                 "kpf-sandbox",
			ContainerRuntimeVersion: "kpf-sandbox://processes",
			KubeletVersion:          KubeletVersion,
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
		},
	}
	_, err = a.cfg.Node.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func kernelVersion() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// heartbeat renews the node lease every 10 s and the node status every 30 s,
// as the kubelet does, so the node lifecycle controller keeps the node Ready.
func (a *Agent) heartbeat(ctx context.Context) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for n := 0; ; n++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := a.renewLease(cctx); err != nil && ctx.Err() == nil {
			a.log.Warn("renew node lease", "err", err)
		}
		if n%3 == 2 {
			if err := a.updateNodeStatus(cctx); err != nil && ctx.Err() == nil {
				a.log.Warn("update node status", "err", err)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *Agent) renewLease(ctx context.Context) error {
	leases := a.cfg.Node.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		dur := int32(40)
		holder := a.cfg.NodeName
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// retry calls f until it succeeds or ctx ends, backing off up to 2 s.
func retry(ctx context.Context, f func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}
