package node

import (
	"reflect"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// status computes the pod status from the containers' states, the way the
// kubelet reports it.
func (w *podWorker) status() corev1.PodStatus {
	st := corev1.PodStatus{
		HostIP:    "127.0.0.1",
		HostIPs:   []corev1.HostIP{{IP: "127.0.0.1"}},
		StartTime: &w.startTime,
		QOSClass:  corev1.PodQOSBestEffort,
	}
	if w.pod.Status.QOSClass != "" {
		st.QOSClass = w.pod.Status.QOSClass
	}
	if w.hasAddr {
		ip := w.addr.Reported.String()
		st.PodIP = ip
		st.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	allReady, anyRunning, allDone, anyFailed := true, false, true, false
	mainStarted := true
	initOK := true
	for _, c := range w.ctrs {
		cs := c.status()
		if c.ephemeral {
			// Beside the pod's own: neither its phase nor its readiness.
			cs.Ready = false
			st.EphemeralContainerStatuses = append(st.EphemeralContainerStatuses, cs)
			continue
		}
		if c.init {
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
			if !c.succeeded() {
				initOK = false
			}
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		if !cs.Ready {
			allReady = false
		}
		if c.running() {
			anyRunning = true
		}
		if !c.everStarted {
			mainStarted = false // not yet, or its image cannot be pulled
		}
		if !c.terminal() {
			allDone = false
		} else if c.exitCode != 0 {
			anyFailed = true
		}
	}
	switch {
	case !initOK && !w.terminating:
		st.Phase = corev1.PodPending
		for _, c := range w.ctrs {
			if c.init && c.terminal() && c.exitCode != 0 {
				st.Phase = corev1.PodFailed
			}
		}
	case mainStarted && allDone:
		st.Phase = corev1.PodSucceeded
		if anyFailed {
			st.Phase = corev1.PodFailed
		}
	case anyRunning || (mainStarted && !allDone):
		st.Phase = corev1.PodRunning
	case w.terminating:
		// Deleted before it ran, or every container has stopped.
		st.Phase = corev1.PodFailed
		if mainStarted && !anyFailed {
			st.Phase = corev1.PodSucceeded
		}
	default:
		st.Phase = corev1.PodPending
	}
	if w.terminating && st.Phase == corev1.PodRunning && !anyRunning {
		st.Phase = corev1.PodFailed
	}
	ready := allReady && anyRunning && st.Phase == corev1.PodRunning && !w.terminating
	st.Conditions = []corev1.PodCondition{
		w.condition(corev1.PodReadyToStartContainers, w.hasAddr && !(w.terminating && !anyRunning)),
		w.condition(corev1.PodInitialized, initOK),
		w.condition(corev1.PodReady, ready),
		w.condition(corev1.ContainersReady, ready),
		w.condition(corev1.PodScheduled, true),
	}
	return st
}

// condition keeps the last transition time of an unchanged condition.
func (w *podWorker) condition(t corev1.PodConditionType, ok bool) corev1.PodCondition {
	s := corev1.ConditionFalse
	if ok {
		s = corev1.ConditionTrue
	}
	c := corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	for _, old := range w.pod.Status.Conditions {
		if old.Type == t && old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		}
	}
	for _, old := range w.lastConds {
		if old.Type == t && old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		}
	}
	if !ok && (t == corev1.PodReady || t == corev1.ContainersReady) {
		c.Reason = "ContainersNotReady"
	}
	return c
}

func statusEqual(a, b corev1.PodStatus) bool { return reflect.DeepEqual(a, b) }
