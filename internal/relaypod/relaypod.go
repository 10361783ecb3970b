// Package relaypod makes, waits for and removes the pods that run kpf's
// relay (kpf relay serve): next to a forward's target for its /udp ports,
// or as the target itself for host/ and ip/ targets: labelled with
// who started them, non-root, read-only, without a service-account token,
// small, and bounded in time; and it finds the leftovers of kpf processes
// that are gone (kpf relay gc).
package relaypod

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
)

// Port is where the relay listens in its pod.
const Port = 4090

// Labels on every relay pod.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by" // kpf
	LabelRelay     = "kpf.dev/relay"                // "udp", or "destination" (host/, ip/)
	LabelUser      = "kpf.dev/user"                 // who started it (a label-safe form)
	LabelHost      = "kpf.dev/host"
	LabelPID       = "kpf.dev/pid"
	// LabelForward names the forward a destination relay serves: the
	// pods that replace one share it, and the forward follows them by it.
	LabelForward = "kpf.dev/forward"
)

// FirstRoutePort is the relay pod's loopback port of its first --tcp
// route; the next ones follow.
const FirstRoutePort = Port + 1

// FirstExposePort is the relay pod's port (on the pod's address) of kpf
// expose's first Service port; the next ones follow. Above 1024: the
// relay runs without capabilities, and the Service maps its own port
// (80, say) to it.
const FirstExposePort = 4190

// Owner is who starts relay pods: this user, on this host, as this process.
type Owner struct {
	User, Host string
	PID        int
}

// Me is the current process's owner.
func Me() Owner {
	o := Owner{PID: os.Getpid()}
	if u, err := user.Current(); err == nil {
		o.User = u.Username
	}
	o.Host, _ = os.Hostname()
	return o
}

var unsafe = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// labelValue makes s a label value: allowed characters, at most 63, not
// starting or ending with a symbol.
func labelValue(s string) string {
	s = unsafe.ReplaceAllString(s, "_")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "._-")
}

func (o Owner) labels() map[string]string {
	return map[string]string{
		LabelManagedBy: "kpf",
		LabelRelay:     "udp",
		LabelUser:      labelValue(o.User),
		LabelHost:      labelValue(o.Host),
		LabelPID:       strconv.Itoa(o.PID),
	}
}

// Spec is a relay pod to make.
type Spec struct {
	Namespace string
	Image     string
	Target    string // the forward's target, for the pod's annotation
	// Allow is every destination (IP:PORT) the relay may send to: the
	// target pod's IP at the forward's /udp ports. It is the pod's
	// arguments, which cannot change: a relay is made for one pod, and a
	// forward that follows another makes another relay.
	Allow []string
	Owner Owner
	// TCP are the relay's --tcp routes, PORT=HOST:PORT, for a host/ or
	// ip/ target (fixed too).
	TCP []string
	// Forward, for a host/ or ip/ target, is the LabelForward value of
	// its relay pods.
	Forward string
	// Reverse are kpf expose's ports (--reverse): the relay listens on
	// them on the pod's address, where the exposure's Service sends its
	// traffic. With Forward set, the pod is an exposure's relay
	// (LabelRelay "expose") and the Service selects it by LabelForward.
	Reverse []uint16
	// Deadline bounds the pod's life (activeDeadlineSeconds): a backstop
	// should both kpf and the relay's own exit fail.
	Deadline time.Duration
	// Created, if set, hears of the pod as soon as the API server made
	// it, before it is ready: its UID is what the forward follows (any
	// other pod with its labels, or its name once it is gone, is not
	// kpf's).
	Created func(*corev1.Pod)
}

// Selector selects the relay pods of forward (Spec.Forward).
func Selector(forward string) labels.Selector {
	return labels.SelectorFromSet(map[string]string{LabelForward: forward})
}

// Pod is the relay pod's object.
func (s Spec) Pod() *corev1.Pod {
	no, yes := false, true
	uid := int64(65532)
	deadline := int64(s.Deadline / time.Second)
	if deadline <= 0 {
		deadline = 24 * 60 * 60
	}
	lbls, about := s.Owner.labels(), "kpf's UDP relay for a forward; it exits within a minute of losing its kpf; kpf relay gc removes leftovers"
	if s.Forward != "" {
		lbls[LabelRelay], lbls[LabelForward] = "destination", s.Forward
		about = "kpf's relay for a forward to " + s.Target + ", which it dials from inside the cluster; it exits within a minute of losing its kpf; kpf relay gc removes leftovers"
	}
	if len(s.Reverse) > 0 {
		lbls[LabelRelay] = "expose"
		about = "kpf's relay of kpf expose " + s.Target + ": connections to the Service reach the kpf that holds it, over port-forward; it exits within a minute of losing its kpf; kpf relay gc removes leftovers (and the Service, which this pod owns)"
	}
	var ports []corev1.ContainerPort
	args := serveArgs("127.0.0.1:"+strconv.Itoa(Port), s.Allow, s.TCP...)
	for _, p := range s.Reverse {
		ports = append(ports, corev1.ContainerPort{Name: "expose-" + strconv.Itoa(int(p)), ContainerPort: int32(p), Protocol: corev1.ProtocolTCP})
		args = append(args, "--reverse", strconv.Itoa(int(p)))
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "kpf-relay-",
			Namespace:    s.Namespace,
			Labels:       lbls,
			Annotations: map[string]string{
				"kpf.dev/target":     s.Target,
				"kpf.dev/started-by": fmt.Sprintf("%s@%s (kpf pid %d)", s.Owner.User, s.Owner.Host, s.Owner.PID),
				"kpf.dev/about":      about,
			},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			ActiveDeadlineSeconds:         &deadline,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			TerminationGracePeriodSeconds: new(int64),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				RunAsUser:      &uid,
				RunAsGroup:     &uid,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "relay",
				Image: s.Image,
				// On the pod's loopback only, where port-forward reaches
				// it; not on the pod's IP, where any workload could. So no
				// container port and no readiness probe (the kubelet's
				// would dial the pod's IP): kpf knows the relay is ready
				// when it answers a stream.
				Args:  args,
				Ports: ports,
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
				},
				SecurityContext: &corev1.SecurityContext{
					ReadOnlyRootFilesystem:   &yes,
					AllowPrivilegeEscalation: &no,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

// serveArgs is the relay's command line: listening on listen (a
// loopback address), sending only to allow.
func serveArgs(listen string, allow []string, tcp ...string) []string {
	args := []string{"relay", "serve", "--listen", listen}
	for _, a := range allow {
		args = append(args, "--allow", a)
	}
	for _, r := range tcp {
		args = append(args, "--tcp", r)
	}
	return append(args, "--client-timeout", "30s", "--idle-exit", "30s")
}

// ForbiddenError is a relay the user may not make (or remove): pods to
// create or delete, or pods/ephemeralcontainers to patch.
type ForbiddenError struct {
	Verb, Resource, Namespace string
	Err                       error
}

func (e *ForbiddenError) Error() string {
	return fmt.Sprintf("kpf may not %s %s in namespace %q, which the relay (of /udp ports, or of a host/ or ip/ target) needs: %v", e.Verb, e.Resource, e.Namespace, e.Err)
}
func (e *ForbiddenError) Unwrap() error { return e.Err }

// Start creates the relay pod and waits until it is ready; on failure
// (an image that cannot be pulled, say) it deletes what it made.
func Start(ctx context.Context, c kube.Interface, s Spec, timeout time.Duration) (*corev1.Pod, error) {
	pods := c.CoreV1().Pods(s.Namespace)
	p, err := pods.Create(ctx, s.Pod(), metav1.CreateOptions{})
	if apierrors.IsForbidden(err) {
		return nil, &ForbiddenError{Verb: "create", Resource: "pods", Namespace: s.Namespace, Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("create the relay pod: %w", err)
	}
	if s.Created != nil {
		s.Created(p)
	}
	ready, err := waitReady(ctx, c, p, timeout)
	if err != nil {
		Delete(context.WithoutCancel(ctx), c, p)
		return nil, err
	}
	return ready, nil
}

func waitReady(ctx context.Context, c kube.Interface, p *corev1.Pod, timeout time.Duration) (*corev1.Pod, error) {
	last := p
	err := watchPod(ctx, c, p, timeout, func(q *corev1.Pod) (bool, error) {
		last = q
		if q.Status.Phase == corev1.PodFailed || q.Status.Phase == corev1.PodSucceeded {
			return true, fmt.Errorf("the relay pod %s ended (%s)%s", q.Name, q.Status.Phase, why(q))
		}
		for _, cs := range q.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && pullFailed(w.Reason) {
				return true, fmt.Errorf("the relay pod %s cannot pull its image %q (%s: %s): give one the cluster can pull with --relay-image", q.Name, q.Spec.Containers[0].Image, w.Reason, w.Message)
			}
		}
		return ready(q) && q.Status.PodIP != "", nil
	})
	switch err {
	case nil:
		return last, nil
	case errWaitTimeout:
		return nil, fmt.Errorf("the relay pod %s was not ready within %s%s", p.Name, timeout, why(last))
	case errWatchEnded:
		return nil, fmt.Errorf("watching the relay pod %s ended%s", p.Name, why(last))
	case errPodDeleted:
		return nil, fmt.Errorf("the relay pod %s was deleted", p.Name)
	}
	return nil, err
}

// What watchPod ran into, for its callers to say in their words.
var (
	errWaitTimeout = errors.New("timed out")
	errWatchEnded  = errors.New("the watch ended")
	errPodDeleted  = errors.New("the pod was deleted")
)

// watchPod calls check with p and then with each new version of it until
// check is done (its error is watchPod's), the timeout passes
// (errWaitTimeout), the watch ends (errWatchEnded), the pod is deleted
// (errPodDeleted), or ctx ends (kpf is stopping: ctx's error).
func watchPod(ctx context.Context, c kube.Interface, p *corev1.Pod, timeout time.Duration, check func(*corev1.Pod) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if done, err := check(p); done {
		return err
	}
	w, err := c.CoreV1().Pods(p.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", p.Name).String(), ResourceVersion: p.ResourceVersion,
	})
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			if ctx.Err() != context.DeadlineExceeded {
				return ctx.Err()
			}
			return errWaitTimeout
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errWatchEnded
			}
			if ev.Type == watch.Deleted {
				return errPodDeleted
			}
			if q, ok := ev.Object.(*corev1.Pod); ok {
				if done, err := check(q); done {
					return err
				}
			}
		}
	}
}

// pullFailed: a container waits because its image cannot be pulled.
func pullFailed(reason string) bool {
	return reason == "ErrImagePull" || reason == "ImagePullBackOff" || reason == "InvalidImageName"
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// why says what a pod waits for, or why its container ended, if anything.
func why(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return fmt.Sprintf(" (%s: %s)", w.Reason, w.Message)
		}
		if t := cs.State.Terminated; t != nil {
			// A relay image older than this kpf does not know --allow:
			// it exits at once, and its message says so.
			return fmt.Sprintf(" (exit code %d, %s %s: is --relay-image this kpf's release?)", t.ExitCode, t.Reason, t.Message)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf(" (not scheduled: %s)", c.Message)
		}
	}
	return ""
}

// Delete removes a relay pod at once: the pod of p's UID, if it has one,
// and never another that took its name.
func Delete(ctx context.Context, c kube.Interface, p *corev1.Pod) error {
	zero := int64(0)
	opts := metav1.DeleteOptions{GracePeriodSeconds: &zero}
	if p.UID != "" {
		uid := p.UID
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := c.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, opts)
	switch {
	case apierrors.IsNotFound(err), apierrors.IsConflict(err): // gone, or the name is another pod's now
		return nil
	case apierrors.IsForbidden(err):
		return &ForbiddenError{Verb: "delete", Resource: "pods", Namespace: p.Namespace, Err: err}
	}
	return err
}

// Leftover is a relay pod whose kpf process is gone, or cannot be told.
type Leftover struct {
	Pod  corev1.Pod
	Gone bool // its kpf ran on this host and no longer runs
}

// Find lists the relay pods o's user started, in namespace ("" all),
// saying of each started on this host whether its kpf is gone.
func Find(ctx context.Context, c kube.Interface, namespace string, o Owner, alive func(pid int) bool) ([]Leftover, error) {
	sel := LabelRelay + "," + labels.SelectorFromSet(map[string]string{LabelUser: labelValue(o.User)}).String()
	list, err := c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, err
	}
	var out []Leftover
	for _, p := range list.Items {
		l := Leftover{Pod: p}
		if p.Labels[LabelHost] == labelValue(o.Host) {
			pid, err := strconv.Atoi(p.Labels[LabelPID])
			l.Gone = err != nil || !alive(pid)
		}
		out = append(out, l)
	}
	return out, nil
}
