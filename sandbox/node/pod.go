package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// A podWorker runs one pod from binding to deletion. Its state is owned by
// its run goroutine; everything else talks to it through events.
type podWorker struct {
	a                    *Agent
	uid                  types.UID
	namespace, name, dir string
	events               chan any
	done                 chan struct{}
	statusCh             chan corev1.PodStatus // latest status to publish; capacity 1

	// Read by port-forward under mu.
	mu          sync.Mutex
	local       podAddr // what port-forward dials, set once the pod has an address
	podRunning  bool
	isDeleting  bool
	specPorts   []corev1.ContainerPort
	podSnapshot *corev1.Pod

	// Owned by run.
	pod            *corev1.Pod
	addr           podAddr
	hasAddr        bool
	startTime      metav1.Time
	ctrs           []*ctr
	initDone       bool
	terminating    bool // deletion requested: containers are being stopped
	stopping       bool // gone from the API or agent shutting down: stop, do not report
	graceTimer     *time.Timer
	lastConds      []corev1.PodCondition
	removedFromAPI bool

	sessions sessions // port-forwards to this pod; safe for concurrent use
}

type (
	evPod  struct{ pod *corev1.Pod }
	evExit struct {
		c      *ctr
		code   int32
		reason string
		run    int
	}
	evProbe struct {
		c    *ctr
		run  int
		kind probeKind
		ok   bool
		msg  string
	}
	evPullBackOff struct {
		c   *ctr
		run int
	}
	evRestart struct {
		c   *ctr
		run int
	}
	evRemoved    struct{}
	evShutdown   struct{ ack chan struct{} }
	evGraceEnded struct{}
)

func newPodWorker(a *Agent, pod *corev1.Pod) *podWorker {
	w := &podWorker{
		a:         a,
		uid:       pod.UID,
		namespace: pod.Namespace,
		name:      pod.Name,
		dir:       filepath.Join(a.cfg.StateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		events:    make(chan any, 64),
		done:      make(chan struct{}),
		statusCh:  make(chan corev1.PodStatus, 1),
		pod:       pod,
	}
	w.podSnapshot = pod
	for i := range pod.Spec.InitContainers {
		w.ctrs = append(w.ctrs, newCtr(w, pod.Spec.InitContainers[i], true))
	}
	for i := range pod.Spec.Containers {
		c := newCtr(w, pod.Spec.Containers[i], false)
		w.ctrs = append(w.ctrs, c)
		w.specPorts = append(w.specPorts, pod.Spec.Containers[i].Ports...)
	}
	w.addEphemeral(pod)
	// A restarted agent carries on the restart counts it finds.
	for _, st := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		for _, c := range w.ctrs {
			if c.spec.Name == st.Name {
				c.restarts = st.RestartCount
				if st.State.Running != nil || st.State.Terminated != nil {
					c.restarts++
				}
			}
		}
	}
	return w
}

// send delivers an event unless the worker has finished.
func (w *podWorker) send(ev any) {
	select {
	case w.events <- ev:
	case <-w.done:
	}
}

func (w *podWorker) update(pod *corev1.Pod) { w.send(evPod{pod}) }
func (w *podWorker) removed()               { w.send(evRemoved{}) }

// shutdown stops the containers without touching the API (agent exit).
func (w *podWorker) shutdown() {
	ack := make(chan struct{})
	w.send(evShutdown{ack})
	<-w.done
}

func (w *podWorker) deleting() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.isDeleting
}

// target returns the address port-forward dials, or an error saying why the
// pod cannot take connections.
func (w *podWorker) target() (podAddr, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.podRunning {
		return podAddr{}, fmt.Errorf("pod %s/%s is not running", w.namespace, w.name)
	}
	return w.local, nil
}

// event records an event about the pod (c nil) or one of its containers,
// as the kubelet. Safe for concurrent use: it reads only what never
// changes.
func (w *podWorker) event(c *ctr, typ, reason, format string, args ...any) {
	field := ""
	if c != nil {
		field = "spec.containers{" + c.spec.Name + "}"
		if c.init {
			field = "spec.initContainers{" + c.spec.Name + "}"
		}
	}
	w.a.kubelet.event(w.namespace, w.name, w.uid, field, typ, reason, format, args...)
}

func (w *podWorker) log() *slog.Logger { return w.a.log.With("pod", w.namespace+"/"+w.name) }

func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	defer w.sessions.closeAll()
	w.startTime = metav1.Now()
	// The pod's network first, as a kubelet creates a pod sandbox before
	// any container: while that fails, the pod waits (ContainerCreating,
	// FailedCreatePodSandBox events) and the agent tries again.
	var retry <-chan time.Time
	backoff := time.Second
	sandbox := func() {
		addr, err := w.a.addrs.get()
		if err != nil {
			w.event(nil, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
			retry = time.After(backoff)
			backoff = min(2*backoff, 10*time.Second)
			return
		}
		retry = nil
		w.addr, w.hasAddr = addr, true
		w.mu.Lock()
		w.local = addr
		w.mu.Unlock()
	}
	defer func() {
		if w.hasAddr {
			w.a.addrs.put(w.addr)
		}
	}()
	sandbox()
	pushCtx, stopPush := context.WithCancel(ctx)
	defer stopPush()
	go w.pushStatus(pushCtx)

	w.handle(evPod{w.pod})
	for !w.finished() {
		select {
		case ev := <-w.events:
			w.handle(ev)
		case <-retry:
			if !w.terminating && !w.stopping {
				sandbox()
			}
			w.handle(evPod{w.pod})
		case <-ctx.Done():
			w.handle(evShutdown{})
		}
	}
	if w.terminating && !w.stopping {
		w.finalize(ctx)
	}
	if w.terminating && (!w.stopping || w.removedFromAPI) {
		os.RemoveAll(w.dir) // the pod is gone, and its logs with it
	}
}

// finished: nothing runs and nothing more will.
func (w *podWorker) finished() bool {
	if !w.terminating && !w.stopping {
		return false
	}
	for _, c := range w.ctrs {
		if c.running() {
			return false
		}
	}
	return true
}

func (w *podWorker) handle(ev any) {
	switch ev := ev.(type) {
	case evPod:
		w.pod = ev.pod
		w.addEphemeral(ev.pod)
		w.mu.Lock()
		w.podSnapshot = ev.pod
		w.mu.Unlock()
		if ev.pod.DeletionTimestamp != nil && !w.terminating {
			w.beginTermination(ev.pod)
		}
	case evExit:
		ev.c.exited(ev)
		if !w.terminating && !w.stopping {
			w.afterExit(ev.c)
		}
	case evProbe:
		ev.c.probed(ev)
	case evPullBackOff:
		ev.c.pullBackOff(ev)
	case evRestart:
		if ev.run == ev.c.run && !w.terminating && !w.stopping {
			w.startCtr(ev.c)
		}
	case evGraceEnded:
		for _, c := range w.ctrs {
			c.signal(sigKill)
		}
	case evRemoved, evShutdown:
		_, w.removedFromAPI = ev.(evRemoved)
		w.stopping = true
		w.terminating = true
		for _, c := range w.ctrs {
			c.cancelRestart()
			c.signal(sigKill)
		}
	}
	if !w.terminating && !w.stopping && w.hasAddr {
		w.advance()
	}
	w.publish()
}

// advance starts what should run next: the next init container, or all the
// app containers once the init containers are done.
func (w *podWorker) advance() {
	if !w.initDone {
		for _, c := range w.ctrs {
			if !c.init {
				continue
			}
			switch {
			case c.succeeded():
				continue
			case c.neverStarted():
				w.startCtr(c)
			}
			return // this init container is running, restarting or failed
		}
		w.initDone = true
	}
	for _, c := range w.ctrs {
		if !c.init && !c.ephemeral && c.neverStarted() {
			w.startCtr(c)
		}
	}
	for _, c := range w.ctrs {
		if c.ephemeral && c.neverStarted() && w.mainRunning() {
			w.startCtr(c)
		}
	}
}

// mainRunning: one of the pod's own containers runs.
func (w *podWorker) mainRunning() bool {
	for _, c := range w.ctrs {
		if !c.init && !c.ephemeral && c.running() {
			return true
		}
	}
	return false
}

func (w *podWorker) startCtr(c *ctr) {
	if err := c.start(); err != nil {
		w.log().Warn("start container", "container", c.spec.Name, "err", err)
		w.afterExit(c)
	}
}

// addEphemeral takes on the ephemeral containers added to the pod's spec
// (kubectl debug, kpf's UDP relay): each runs once, in the pod's network,
// once the pod's own containers have started. One that already has a
// status (an agent that restarted) is not run again, as a kubelet does
// not restart ephemeral containers.
func (w *podWorker) addEphemeral(pod *corev1.Pod) {
	for _, e := range pod.Spec.EphemeralContainers {
		known := false
		for _, c := range w.ctrs {
			known = known || (c.ephemeral && c.spec.Name == e.Name)
		}
		if known {
			continue
		}
		c := newCtr(w, corev1.Container(e.EphemeralContainerCommon), false)
		c.ephemeral = true
		for _, st := range pod.Status.EphemeralContainerStatuses {
			if st.Name == e.Name && (st.State.Running != nil || st.State.Terminated != nil) {
				c.everStarted, c.exitCode, c.termReason = true, 137, "Error" // it went with the old agent
			}
		}
		w.ctrs = append(w.ctrs, c)
	}
}

// afterExit applies the restart policy to a container that stopped.
func (w *podWorker) afterExit(c *ctr) {
	if c.ephemeral {
		return // never restarted
	}
	policy := w.pod.Spec.RestartPolicy
	restart := policy == corev1.RestartPolicyAlways || policy == "" ||
		(policy == corev1.RestartPolicyOnFailure && c.exitCode != 0)
	if c.init && c.exitCode == 0 {
		restart = false // init containers run to completion once
	}
	if c.init && c.exitCode != 0 && policy == corev1.RestartPolicyAlways {
		restart = true
	}
	if restart {
		c.scheduleRestart()
	}
}

func (w *podWorker) beginTermination(pod *corev1.Pod) {
	w.terminating = true
	w.mu.Lock()
	w.isDeleting = true
	w.mu.Unlock()
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	w.log().Info("terminating pod", "grace", grace)
	for _, c := range w.ctrs {
		c.cancelRestart()
		if grace == 0 {
			c.signal(sigKill)
		} else {
			c.signal(sigTerm)
		}
	}
	w.graceTimer = time.AfterFunc(time.Duration(grace)*time.Second, func() { w.send(evGraceEnded{}) })
}

// finalize reports the final status and deletes the pod object with grace 0,
// as the kubelet does once a pod's containers have all stopped.
func (w *podWorker) finalize(ctx context.Context) {
	if w.graceTimer != nil {
		w.graceTimer.Stop()
	}
	st := w.status()
	pods := w.a.cfg.Node.CoreV1().Pods(w.namespace)
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := retry(fctx, func(ctx context.Context) error {
		err := w.writeStatus(ctx, st)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		w.log().Warn("final pod status", "err", err)
	}
	zero := int64(0)
	err = retry(fctx, func(ctx context.Context) error {
		err := pods.Delete(ctx, w.name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &w.uid},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	})
	if err != nil {
		w.log().Warn("delete terminated pod", "err", err)
	}
	w.log().Info("pod terminated and deleted")
}

// publish computes the status and leaves it for the pusher.
func (w *podWorker) publish() {
	if w.stopping {
		return
	}
	st := w.status()
	w.lastConds = st.Conditions
	w.mu.Lock()
	w.podRunning = st.Phase == corev1.PodRunning && w.hasAddr
	w.mu.Unlock()
	select {
	case <-w.statusCh:
	default:
	}
	w.statusCh <- st
}

// pushStatus writes the latest status to the API, retrying until it lands
// or a newer one replaces it.
func (w *podWorker) pushStatus(ctx context.Context) {
	var last *corev1.PodStatus
	for {
		var st corev1.PodStatus
		select {
		case <-ctx.Done():
			return
		case st = <-w.statusCh:
		}
		if last != nil && statusEqual(*last, st) {
			continue
		}
		delay := 50 * time.Millisecond
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := w.writeStatus(cctx, st)
			cancel()
			if err == nil || apierrors.IsNotFound(err) {
				last = &st
				break
			}
			if ctx.Err() != nil {
				return
			}
			w.log().Debug("write pod status", "err", err)
			select {
			case <-ctx.Done():
				return
			case newer := <-w.statusCh:
				st = newer
			case <-time.After(delay):
			}
			delay = min(2*delay, 2*time.Second)
		}
	}
}

func (w *podWorker) writeStatus(ctx context.Context, st corev1.PodStatus) error {
	pods := w.a.cfg.Node.CoreV1().Pods(w.namespace)
	cur, err := pods.Get(ctx, w.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if cur.UID != w.uid {
		return apierrors.NewNotFound(corev1.Resource("pods"), w.name)
	}
	// Keep the conditions that others own (scheduler, disruption controllers).
	for _, c := range cur.Status.Conditions {
		if !ownCondition(c.Type) {
			st.Conditions = append(st.Conditions, c)
		}
	}
	cur.Status = st
	_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	return err
}

func ownCondition(t corev1.PodConditionType) bool {
	switch t {
	case corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady, corev1.PodReadyToStartContainers:
		return true
	}
	return false
}
