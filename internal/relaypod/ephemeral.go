package relaypod

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/kpf-dev/kpf/internal/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// EphemeralPort is the first port an ephemeral relay may listen on, on
// the target pod's loopback: high, so as not to meet the pod's own ports.
// Each relay takes one of EphemeralPorts at random, so that the relays of
// two kpf forwards of one pod do not meet on one port (the second could
// not listen, and its kpf would reach the first's relay, which sends only
// to the first's ports).
const (
	EphemeralPort  = 47090
	EphemeralPorts = 900
)

// PickEphemeralPort is a port for a relay in pod, at random among
// EphemeralPorts, that none of the pod's containers declares.
func PickEphemeralPort(pod *corev1.Pod) int {
	taken := map[int32]bool{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			taken[p.ContainerPort] = true
		}
	}
	for {
		var b [2]byte
		rand.Read(b[:])
		if p := EphemeralPort + (int(b[0])<<8|int(b[1]))%EphemeralPorts; !taken[int32(p)] {
			return p
		}
	}
}

// EphemeralPrefix starts the name of every ephemeral relay container.
const EphemeralPrefix = "kpf-relay-"

// Ephemeral is the relay of --udp-relay ephemeral: a container added to
// the target pod itself (pods/ephemeralcontainers), sharing its network,
// so that it reaches servers bound to the pod's localhost and needs no
// right to create pods. It listens on the pod's loopback at port and
// exits within a minute of losing its kpf. An ephemeral container cannot
// be removed: it stays in the pod's spec, stopped, until the pod is
// replaced.
type Ephemeral struct {
	Image string
	Owner Owner
	// Port is where the relay listens; 0: Add picks one
	// (PickEphemeralPort).
	Port int
	// Allow is every destination (IP:PORT) the relay may send to: the
	// pod's loopback at the forward's /udp ports.
	Allow []string
}

// Container is the ephemeral container to add, named name.
func (e Ephemeral) Container(name string) corev1.EphemeralContainer {
	no, yes := false, true
	return corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name:  name,
		Image: e.Image,
		Args:  serveArgs("127.0.0.1:"+strconv.Itoa(e.Port), e.Allow),
		Env:   []corev1.EnvVar{{Name: "KPF_RELAY_STARTED_BY", Value: fmt.Sprintf("%s@%s (kpf pid %d)", e.Owner.User, e.Owner.Host, e.Owner.PID)}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			RunAsUser:                new(int64(65532)),
			ReadOnlyRootFilesystem:   &yes,
			AllowPrivilegeEscalation: &no,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}}
}

// Add adds an ephemeral relay to pod and waits until it runs; it returns
// the container's name and the port it listens on.
func (e Ephemeral) Add(ctx context.Context, c kube.Interface, pod *corev1.Pod, timeout time.Duration) (string, int, error) {
	if e.Port == 0 {
		e.Port = PickEphemeralPort(pod)
	}
	name, err := e.add(ctx, c, pod, timeout)
	return name, e.Port, err
}

func (e Ephemeral) add(ctx context.Context, c kube.Interface, pod *corev1.Pod, timeout time.Duration) (string, error) {
	name := EphemeralPrefix + randomSuffix()
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"ephemeralContainers": []corev1.EphemeralContainer{e.Container(name)}}})
	if err != nil {
		return "", err
	}
	// A strategic merge patch adds to the list (merged by name) without
	// a read first, so relays of two kpf processes do not race.
	p, err := c.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "ephemeralcontainers")
	switch {
	case apierrors.IsForbidden(err):
		return "", &ForbiddenError{Verb: "patch", Resource: "pods/ephemeralcontainers", Namespace: pod.Namespace, Err: err}
	case apierrors.IsNotFound(err):
		return "", fmt.Errorf("add the UDP relay to pod %s: %w (the cluster may not offer ephemeral containers: try --udp-relay pod)", pod.Name, err)
	case err != nil:
		return "", fmt.Errorf("add the UDP relay to pod %s: %w", pod.Name, err)
	}
	return name, waitEphemeral(ctx, c, p, name, timeout)
}

func randomSuffix() string {
	const letters = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, 5)
	rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// waitEphemeral waits until the ephemeral container name of p runs.
func waitEphemeral(ctx context.Context, c kube.Interface, p *corev1.Pod, name string, timeout time.Duration) error {
	err := watchPod(ctx, c, p, timeout, func(q *corev1.Pod) (bool, error) {
		for _, cs := range q.Status.EphemeralContainerStatuses {
			if cs.Name != name {
				continue
			}
			switch {
			case cs.State.Running != nil:
				return true, nil
			case cs.State.Terminated != nil:
				t := cs.State.Terminated
				return true, fmt.Errorf("the UDP relay %s in pod %s ended at once (exit code %d, %s %s)", name, q.Name, t.ExitCode, t.Reason, t.Message)
			case cs.State.Waiting != nil && pullFailed(cs.State.Waiting.Reason):
				w := cs.State.Waiting
				return true, fmt.Errorf("the UDP relay %s in pod %s cannot pull its image %q (%s: %s): give one the cluster can pull with --relay-image", name, q.Name, cs.Image, w.Reason, w.Message)
			}
		}
		return false, nil
	})
	switch err {
	case errWaitTimeout:
		return fmt.Errorf("the UDP relay %s in pod %s was not running within %s", name, p.Name, timeout)
	case errWatchEnded:
		return fmt.Errorf("watching pod %s for its UDP relay ended", p.Name)
	case errPodDeleted:
		return fmt.Errorf("pod %s was deleted before its UDP relay ran", p.Name)
	}
	return err
}
