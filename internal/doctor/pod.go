package doctor

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/target"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// target finds the object and the pod kubectl would pick, and says what
// state the pod is in, with the reasons its events give.
func (d *Doctor) target(ctx context.Context, fw config.Forward) (*target.Target, Check) {
	c := Check{Step: "target"}
	ctx, cancel := d.step(ctx)
	defer cancel()
	if dest, ok, err := target.ParseDestination(fw.Target); err != nil {
		c.Status, c.Summary = Fail, err.Error()
		return nil, c
	} else if ok {
		// No object to read (and ip/ is no IPAddress): the relay pod that
		// dials it is made when the forward starts.
		c.Status, c.Summary = Skip, fmt.Sprintf("%s: dialled from inside the cluster by the relay pod kpf makes when the forward starts (kpf relay serve); not made here", dest.Ref())
		return nil, c
	}
	obj, err := d.Objects.Get(ctx, fw.Namespace, fw.Target)
	if err != nil {
		msg := d.explain(ctx, err)
		if d.ExplainTarget != nil && ctx.Err() == nil {
			msg = d.ExplainTarget(err, fw.Namespace)
		}
		c.Status, c.Summary = Fail, fmt.Sprintf("%s: %s", fw.Target, msg)
		return nil, c
	}
	t := target.New(fw.Namespace, fw.Target, obj)
	var pods []corev1.Pod
	sel := ""
	if p, ok := obj.(*corev1.Pod); ok {
		pods = []corev1.Pod{*p}
	} else {
		s, err := target.Selector(obj)
		if err != nil {
			c.Status, c.Summary = Fail, fmt.Sprintf("%s: %v", t.Ref, err)
			return nil, c
		}
		sel = s.String()
		list, err := d.Client.CoreV1().Pods(t.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			c.Status, c.Summary = Fail, fmt.Sprintf("%s: listing its pods: %s", t.Ref, d.explain(ctx, err))
			return nil, c
		}
		pods = list.Items
	}
	best := target.Best(pods)
	if best == nil {
		c.Status, c.Summary = Fail, fmt.Sprintf("%s in namespace %s: no pods match its selector %s", t.Ref, t.Namespace, sel)
		c.Fix = fmt.Sprintf("is it scaled to 0, or does its selector match nothing? kubectl get pods -n %s -l '%s'", t.Namespace, sel)
		return nil, c
	}
	t.Pod = best
	c.Status, c.Summary, c.Fix = podVerdict(best)
	c.Summary = fmt.Sprintf("%s → pod %s: %s", t.Ref, best.Name, c.Summary)
	if len(pods) > 1 {
		c.Details = append(c.Details, fmt.Sprintf("%d pods match; kpf (like kubectl) picks %s", len(pods), best.Name))
	}
	if c.Status != OK {
		c.Details = append(c.Details, d.events(ctx, best)...)
	}
	return t, c
}

// podVerdict reads a pod's status as a person would: what keeps it from
// running or being ready, with the container's reason and last exit.
func podVerdict(p *corev1.Pod) (Status, string, string) {
	var restarts int32
	for _, cs := range p.Status.ContainerStatuses {
		restarts += cs.RestartCount
	}
	if p.DeletionTimestamp != nil {
		return Warn, "terminating", "kpf moves to another pod when one is ready; kubectl port-forward would end with it"
	}
	switch p.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return Fail, fmt.Sprintf("%s (it has ended: %s)", p.Status.Phase, orNone(p.Status.Reason+" "+p.Status.Message)),
			"a pod that has ended cannot be forwarded to: forward to the workload or service that makes its pods"
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse {
			return Fail, fmt.Sprintf("Pending: not scheduled (%s: %s)", cond.Reason, cond.Message),
				"no node can take it: see the scheduler's message (resources, node selectors, taints, volumes)"
		}
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		switch w.Reason {
		case "CrashLoopBackOff":
			last := ""
			if t := cs.LastTerminationState.Terminated; t != nil {
				last = fmt.Sprintf(", last exit code %d (%s) %s ago", t.ExitCode, t.Reason, since(t.FinishedAt.Time))
			}
			return Fail, fmt.Sprintf("container %s is in CrashLoopBackOff: %d restarts%s", cs.Name, cs.RestartCount, last),
				fmt.Sprintf("the container keeps exiting: kubectl logs -n %s %s -c %s --previous", p.Namespace, p.Name, cs.Name)
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull":
			return Fail, fmt.Sprintf("container %s cannot get its image %s: %s (%s)", cs.Name, imageOf(p, cs.Name), w.Reason, w.Message),
				"check the image's name and tag, and that the cluster may pull it (imagePullSecrets for a private registry)"
		case "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			return Fail, fmt.Sprintf("container %s cannot start: %s (%s)", cs.Name, w.Reason, w.Message),
				fmt.Sprintf("fix the container's spec (kubectl describe pod -n %s %s)", p.Namespace, p.Name)
		}
	}
	if p.Status.Phase != corev1.PodRunning {
		return Fail, fmt.Sprintf("%s, not running yet", p.Status.Phase), fmt.Sprintf("wait, or see why: kubectl describe pod -n %s %s", p.Namespace, p.Name)
	}
	if !target.PodReady(p) {
		return Warn, fmt.Sprintf("Running but not ready, %d restarts", restarts),
			"its readiness probe fails: the forward works, but the app may not answer (the events say why)"
	}
	return OK, fmt.Sprintf("Running, ready, %d restarts", restarts), ""
}

func imageOf(p *corev1.Pod, container string) string {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == container {
			return c.Image
		}
	}
	return "?"
}

func since(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return time.Since(t).Truncate(time.Second).String()
}

// events are the pod's most recent events, newest last: what the kubelet
// and the scheduler said of it. Events one may not read are left out.
func (d *Doctor) events(ctx context.Context, p *corev1.Pod) []string {
	list, err := d.Client.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.uid", string(p.UID)).String(),
	})
	if err != nil {
		return nil
	}
	// The warnings say what is wrong; without any, the latest events say
	// where the pod stands.
	evs := list.Items
	var warnings []corev1.Event
	for _, e := range evs {
		if e.Type == corev1.EventTypeWarning {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) > 0 {
		evs = warnings
	}
	last := func(e corev1.Event) time.Time {
		switch {
		case !e.LastTimestamp.IsZero():
			return e.LastTimestamp.Time
		case !e.EventTime.IsZero():
			return e.EventTime.Time
		}
		return e.CreationTimestamp.Time
	}
	sort.SliceStable(evs, func(i, j int) bool { return last(evs[i]).Before(last(evs[j])) })
	if len(evs) > 3 {
		evs = evs[len(evs)-3:]
	}
	var out []string
	for _, e := range evs {
		n := ""
		if e.Count > 1 {
			n = fmt.Sprintf(" (x%d)", e.Count)
		}
		out = append(out, fmt.Sprintf("event %s ago: %s %s: %s%s", since(last(e)), e.Type, e.Reason, strings.TrimSpace(e.Message), n))
	}
	return out
}
