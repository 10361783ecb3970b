package relaypod

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestThePodIsLeastPrivilegeAndSaysWhoMadeIt(t *testing.T) {
	p := Spec{Namespace: "dns", Image: "ghcr.io/kpf-dev/kpf:v1", Target: "service/coredns", Allow: []string{"10.0.3.7:53", "10.0.3.7:5353"}, Owner: Owner{User: "ann@corp", Host: "laptop.local", PID: 4242}}.Pod()
	if p.Labels[LabelUser] != "ann_corp" || p.Labels[LabelHost] != "laptop.local" || p.Labels[LabelPID] != "4242" || p.Labels[LabelManagedBy] != "kpf" {
		t.Errorf("labels %v", p.Labels)
	}
	c := p.Spec.Containers[0]
	switch {
	case *p.Spec.AutomountServiceAccountToken:
		t.Error("a service-account token is mounted")
	case !*p.Spec.SecurityContext.RunAsNonRoot || *p.Spec.SecurityContext.RunAsUser == 0:
		t.Error("may run as root")
	case !*c.SecurityContext.ReadOnlyRootFilesystem || *c.SecurityContext.AllowPrivilegeEscalation || c.SecurityContext.Capabilities.Drop[0] != "ALL":
		t.Errorf("container security %+v", c.SecurityContext)
	case p.Spec.ActiveDeadlineSeconds == nil || *p.Spec.ActiveDeadlineSeconds <= 0:
		t.Error("no deadline")
	case c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero():
		t.Errorf("resources %+v", c.Resources)
	case strings.Join(c.Args, " ") != "relay serve --listen 127.0.0.1:4090 --allow 10.0.3.7:53 --allow 10.0.3.7:5353 --client-timeout 30s --idle-exit 30s":
		t.Errorf("args %v: want it on loopback, sending to the target's ports only", c.Args)
	case len(c.Ports) != 0 || c.ReadinessProbe != nil:
		t.Errorf("a port %v or a probe %+v on the pod's IP, where the relay does not listen", c.Ports, c.ReadinessProbe)
	case p.Spec.RestartPolicy != corev1.RestartPolicyNever:
		t.Error("restarts")
	}
}

func TestStartWaitsForReadyAndExplainsAnImageItCannotPull(t *testing.T) {
	c := fake.NewClientset()
	s := Spec{Namespace: "dns", Image: "example.com/kpf:v1", Owner: Owner{User: "ann", Host: "h", PID: 1}}
	c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		p.Name = "kpf-relay-x"
		return false, nil, nil
	})
	status := func(mutate func(*corev1.Pod)) {
		for {
			p, err := c.CoreV1().Pods("dns").Get(context.Background(), "kpf-relay-x", metav1.GetOptions{})
			if err == nil {
				mutate(p)
				c.CoreV1().Pods("dns").UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	go status(func(p *corev1.Pod) {
		p.Status.PodIP = "10.0.0.9"
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	})
	p, err := Start(context.Background(), c, s, 5*time.Second)
	if err != nil || p.Status.PodIP != "10.0.0.9" {
		t.Fatalf("Start: %v, %v", p, err)
	}
	c.CoreV1().Pods("dns").Delete(context.Background(), "kpf-relay-x", metav1.DeleteOptions{})
	go status(func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "not found"}}}}
	})
	_, err = Start(context.Background(), c, s, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "--relay-image") || !strings.Contains(err.Error(), "example.com/kpf:v1") {
		t.Fatalf("an image that cannot be pulled: %v", err)
	}
	if _, err := c.CoreV1().Pods("dns").Get(context.Background(), "kpf-relay-x", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the failed relay pod was left: %v", err)
	}
}

func TestForbiddenIsTyped(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no"))
	})
	_, err := Start(context.Background(), c, Spec{Namespace: "dns"}, time.Second)
	var fe *ForbiddenError
	if !errors.As(err, &fe) || fe.Verb != "create" || fe.Namespace != "dns" {
		t.Fatalf("%v", err)
	}
}

func TestFindTellsGoneFromMaybeRunning(t *testing.T) {
	c := fake.NewClientset()
	me := Owner{User: "ann", Host: "h1", PID: 10}
	for _, o := range []Owner{{"ann", "h1", 10}, {"ann", "h1", 11}, {"ann", "h2", 12}, {"bob", "h1", 13}} {
		p := Spec{Namespace: "dns", Owner: o}.Pod()
		p.Name = fmt.Sprintf("relay-%s-%s-%d", o.User, o.Host, o.PID)
		p.GenerateName = ""
		c.CoreV1().Pods("dns").Create(context.Background(), p, metav1.CreateOptions{})
	}
	got, err := Find(context.Background(), c, "", me, func(pid int) bool { return pid == 10 })
	if err != nil {
		t.Fatal(err)
	}
	gone := map[string]bool{}
	for _, l := range got {
		gone[l.Pod.Labels[LabelHost]+"/"+l.Pod.Labels[LabelPID]] = l.Gone
	}
	if len(got) != 3 || gone["h1/10"] || !gone["h1/11"] || gone["h2/12"] {
		t.Fatalf("found %v", gone)
	}
}

// An ephemeral relay is added by a patch of pods/ephemeralcontainers,
// listens on the pod's loopback only, is least-privilege, and is waited
// for; without the right, the error names the subresource.
func TestEphemeralRelay(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "dns-1", Namespace: "kube-system", ResourceVersion: "1"}}
	cs := fake.NewClientset(pod.DeepCopy())
	var patched []byte
	patchedCh := make(chan string, 1)
	cs.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pa := a.(k8stesting.PatchAction)
		if pa.GetSubresource() != "ephemeralcontainers" {
			return true, nil, fmt.Errorf("patched %q, want the ephemeralcontainers subresource", pa.GetSubresource())
		}
		patched = pa.GetPatch()
		patchedCh <- string(patched)
		q := pod.DeepCopy()
		q.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "added"}}}
		return true, q, nil
	})
	e := Ephemeral{Image: "ghcr.io/kpf-dev/kpf:v1", Owner: Owner{User: "ann", Host: "laptop", PID: 7}, Port: EphemeralPort, Allow: []string{"127.0.0.1:53"}}
	c := e.Container("kpf-relay-x")
	sc := c.SecurityContext
	if strings.Join(c.Args, " ") != "relay serve --listen 127.0.0.1:47090 --allow 127.0.0.1:53 --client-timeout 30s --idle-exit 30s" || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container %+v", c)
	}
	// The pod's watch says the relay runs.
	w := newFakeWatch(cs)
	go func() {
		q := pod.DeepCopy()
		q.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{{Name: "NAME", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
		p := <-patchedCh
		name := strings.SplitN(strings.SplitN(p, `"name":"`, 2)[1], `"`, 2)[0]
		q.Status.EphemeralContainerStatuses[0].Name = name
		w.Modify(q)
	}()
	name, port, err := e.Add(context.Background(), cs, pod, 5*time.Second)
	if err != nil || !strings.HasPrefix(name, EphemeralPrefix) || !strings.Contains(string(patched), name) || port != EphemeralPort {
		t.Fatalf("Add = %q, %d, %v (patch %s)", name, port, err, patched)
	}

	denied := fake.NewClientset(pod.DeepCopy())
	denied.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods/ephemeralcontainers"}, "dns-1", errors.New("no"))
	})
	_, _, err = e.Add(context.Background(), denied, pod, time.Second)
	var fe *ForbiddenError
	if !errors.As(err, &fe) || fe.Resource != "pods/ephemeralcontainers" || fe.Verb != "patch" {
		t.Errorf("forbidden: %v", err)
	}
}

// newFakeWatch makes the clientset's pod watches this one.
func newFakeWatch(cs *fake.Clientset) *watch.FakeWatcher {
	w := watch.NewFake()
	cs.PrependWatchReactor("pods", k8stesting.DefaultWatchReactor(w, nil))
	return w
}

// TestEphemeralRelaysTakePortsOfTheirOwn: each ephemeral relay listens on
// a port picked at random (Add with no Port), among EphemeralPorts and
// none the pod's containers declare, so that the relays of two kpf
// forwards of one pod do not meet on one port.
func TestEphemeralRelaysTakePortsOfTheirOwn(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
	for p := EphemeralPort; p < EphemeralPort+EphemeralPorts-2; p++ {
		pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: int32(p)})
	}
	seen := map[int]bool{}
	for range 200 {
		p := PickEphemeralPort(pod)
		if p < EphemeralPort+EphemeralPorts-2 || p >= EphemeralPort+EphemeralPorts {
			t.Fatalf("port %d: declared by the pod, or outside [%d, %d)", p, EphemeralPort, EphemeralPort+EphemeralPorts)
		}
		seen[p] = true
	}
	if len(seen) != 2 {
		t.Errorf("ports %v, want both free ones", seen)
	}
	pod.Spec.Containers[0].Ports = nil
	for range 50 {
		seen[PickEphemeralPort(pod)] = true
	}
	if len(seen) < 10 {
		t.Errorf("%d ports in 250 picks: not at random", len(seen))
	}
}

// A host/ or ip/ target's relay pod: labelled as such and with its
// forward (which follows it by that label), its TCP routes and datagram
// destinations fixed in its arguments, and found by kpf relay gc as the
// UDP relays are.
func TestDestinationRelayPod(t *testing.T) {
	s := Spec{Namespace: "team", Image: "ghcr.io/kpf-dev/kpf:v1", Target: "host/orders.example", TCP: []string{"4091=orders.example:5432"}, Allow: []string{"orders.example:53"}, Forward: "f00d", Owner: Owner{User: "ann", Host: "h1", PID: 7}}
	p := s.Pod()
	if p.Labels[LabelRelay] != "destination" || p.Labels[LabelForward] != "f00d" || !Selector("f00d").Matches(labels.Set(p.Labels)) {
		t.Errorf("labels %v", p.Labels)
	}
	if args := strings.Join(p.Spec.Containers[0].Args, " "); args != "relay serve --listen 127.0.0.1:4090 --allow orders.example:53 --tcp 4091=orders.example:5432 --client-timeout 30s --idle-exit 30s" {
		t.Errorf("args %s", args)
	}
	c := fake.NewClientset()
	p.Name, p.GenerateName = "kpf-relay-x", ""
	c.CoreV1().Pods("team").Create(context.Background(), p, metav1.CreateOptions{})
	got, err := Find(context.Background(), c, "", Owner{User: "ann", Host: "h1", PID: 8}, func(int) bool { return false })
	if err != nil || len(got) != 1 || !got[0].Gone {
		t.Fatalf("kpf relay gc finds %+v, %v", got, err)
	}
}

// kpf expose's relay pod: labelled expose (so kpf relay gc finds it) and
// by its exposure, --reverse ports declared, and as least-privileged as
// every relay.
func TestExposeRelayPod(t *testing.T) {
	s := Spec{Namespace: "team", Image: "ghcr.io/kpf-dev/kpf:v1", Target: "svc/laptop", Reverse: []uint16{FirstExposePort, FirstExposePort + 1}, Forward: "beef", Owner: Owner{User: "ann", Host: "h1", PID: 7}}
	p := s.Pod()
	if p.Labels[LabelRelay] != "expose" || !Selector("beef").Matches(labels.Set(p.Labels)) {
		t.Errorf("labels %v", p.Labels)
	}
	ctr := p.Spec.Containers[0]
	if args := strings.Join(ctr.Args, " "); args != "relay serve --listen 127.0.0.1:4090 --client-timeout 30s --idle-exit 30s --reverse 4190 --reverse 4191" {
		t.Errorf("args %s", args)
	}
	if len(ctr.Ports) != 2 || ctr.Ports[0].ContainerPort != 4190 || ctr.Ports[1].ContainerPort != 4191 {
		t.Errorf("ports %+v", ctr.Ports)
	}
	if *p.Spec.AutomountServiceAccountToken || !*ctr.SecurityContext.ReadOnlyRootFilesystem || len(ctr.SecurityContext.Capabilities.Drop) != 1 || !*p.Spec.SecurityContext.RunAsNonRoot {
		t.Errorf("security: %+v / %+v", ctr.SecurityContext, p.Spec.SecurityContext)
	}
	c := fake.NewClientset()
	p.Name, p.GenerateName = "kpf-relay-y", ""
	c.CoreV1().Pods("team").Create(context.Background(), p, metav1.CreateOptions{})
	got, err := Find(context.Background(), c, "", Owner{User: "ann", Host: "h1", PID: 8}, func(int) bool { return false })
	if err != nil || len(got) != 1 || !got[0].Gone {
		t.Fatalf("kpf relay gc finds %+v, %v", got, err)
	}
}
