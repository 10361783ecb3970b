package target

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/portspec"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
)

func pod(name string, phase corev1.PodPhase, ready bool, mods ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": "x"}, CreationTimestamp: metav1.NewTime(time.Unix(1000, 0))},
		Spec: corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080},
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		}}}},
		Status: corev1.PodStatus{Phase: phase},
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st, LastTransitionTime: metav1.NewTime(time.Unix(2000, 0))}}
	for _, m := range mods {
		m(&p)
	}
	return p
}

func TestBestFollowsKubectlOrder(t *testing.T) {
	older := func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(time.Unix(10, 0)) }
	restarted := func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{RestartCount: 5}}
	}
	unscheduled := func(p *corev1.Pod) { p.Spec.NodeName = "" }
	deleting := func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }
	readyLonger := func(p *corev1.Pod) { p.Status.Conditions[0].LastTransitionTime = metav1.NewTime(time.Unix(1500, 0)) }
	tests := []struct {
		name string
		pods []corev1.Pod
		want string
	}{
		{"running over pending", []corev1.Pod{pod("pending", corev1.PodPending, false), pod("running", corev1.PodRunning, false)}, "running"},
		{"ready over not ready", []corev1.Pod{pod("notready", corev1.PodRunning, false), pod("ready", corev1.PodRunning, true)}, "ready"},
		{"scheduled over unscheduled", []corev1.Pod{pod("u", corev1.PodPending, false, unscheduled), pod("s", corev1.PodPending, false)}, "s"},
		{"not deleting", []corev1.Pod{pod("del", corev1.PodRunning, true, deleting), pod("live", corev1.PodRunning, true)}, "live"},
		{"ready longer", []corev1.Pod{pod("new", corev1.PodRunning, true), pod("long", corev1.PodRunning, true, readyLonger)}, "long"},
		{"fewer restarts", []corev1.Pod{pod("flaky", corev1.PodRunning, true, restarted), pod("steady", corev1.PodRunning, true)}, "steady"},
		{"older", []corev1.Pod{pod("young", corev1.PodRunning, true), pod("old", corev1.PodRunning, true, older)}, "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Best(tt.pods); got.Name != tt.want {
				t.Errorf("Best = %s, want %s", got.Name, tt.want)
			}
		})
	}
	if Best(nil) != nil {
		t.Error("Best(nil) != nil")
	}
}

// The pod Best returns is a copy: a pointer into the list would keep every
// pod of the list alive for as long as a forward keeps its pod.
func TestBestKeepsNoListAlive(t *testing.T) {
	pods := []corev1.Pod{pod("a", corev1.PodFailed, false), pod("b", corev1.PodRunning, true), pod("c", corev1.PodFailed, false)}
	got := Best(pods)
	for i := range pods {
		if got == &pods[i] {
			t.Fatalf("Best returned &pods[%d], which keeps the list alive", i)
		}
	}
	if got.Name != "b" {
		t.Fatalf("Best = %s, want b", got.Name)
	}
}

func svc(ports []corev1.ServicePort, headless bool) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "x"}, Ports: ports, ClusterIP: "10.0.0.1"},
	}
	if headless {
		s.Spec.ClusterIP = corev1.ClusterIPNone
	}
	return s
}

func TestTranslateServicePorts(t *testing.T) {
	p := pod("p", corev1.PodRunning, true)
	ports := []corev1.ServicePort{
		{Name: "web", Port: 80, TargetPort: intstr.FromString("http")},
		{Name: "num", Port: 81, TargetPort: intstr.FromInt32(9090)},
		{Name: "same", Port: 82},
	}
	tests := []struct {
		spec     string
		headless bool
		want     portspec.Resolved
		wantErr  string
	}{
		{spec: "80", want: portspec.Resolved{Local: 80, Remote: 8080}},
		{spec: "web", want: portspec.Resolved{Local: 80, Remote: 8080}}, // local is the service port
		{spec: "9000:web", want: portspec.Resolved{Local: 9000, Remote: 8080}},
		{spec: ":81", want: portspec.Resolved{Local: 0, Remote: 9090}},
		{spec: "82", want: portspec.Resolved{Local: 82, Remote: 82}},
		{spec: "80", headless: true, want: portspec.Resolved{Local: 80, Remote: 80}},
		{spec: "99", wantErr: "does not have a service port 99"},
		{spec: "nope", wantErr: `service/s has no port named "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			ps, _ := portspec.ParsePort(tt.spec)
			got, err := translateServicePorts([]portspec.Port{ps}, svc(ports, tt.headless), &p)
			if tt.wantErr != "" {
				// ErrNoPort: waiting cannot heal it (the manager stops
				// waiting on it at once).
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrNoPort) {
					t.Fatalf("err = %v, want %q, an ErrNoPort", err, tt.wantErr)
				}
				return
			}
			if err != nil || got[0] != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

type objects map[string]runtime.Object

func (o objects) Get(_ context.Context, ns, typeName string) (runtime.Object, error) {
	if obj, ok := o[typeName]; ok {
		return obj, nil
	}
	return nil, errors.New("not found")
}

func TestResolve(t *testing.T) {
	running := pod("run", corev1.PodRunning, true)
	pending := pod("wait", corev1.PodPending, false)
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "ns"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}}}
	noSel := svc(nil, false)
	noSel.Spec.Selector = nil
	udpSvc := svc([]corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}, false)
	objs := objects{"pod/run": &running, "pod/wait": &pending, "deployment/d": dep, "svc/nosel": noSel, "svc/udp": udpSvc}
	cs := fake.NewClientset(&running, &pending)
	r := &Resolver{Objects: objs, Pods: cs.CoreV1(), PodRunningTimeout: 200 * time.Millisecond}
	ports := func(s ...string) []portspec.Port {
		p, err := portspec.ParsePorts(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tg, err := r.Resolve(context.Background(), "ns", "deployment/d", ports("http", "7:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if tg.Pod.Name != "run" || tg.Ref != "deployment/d" || tg.Ports[0] != (portspec.Resolved{Local: 8080, Remote: 8080}) || tg.Ports[1] != (portspec.Resolved{Local: 7, Remote: 8080}) {
		t.Errorf("deployment/d resolved to %s %s %+v", tg.Ref, tg.Pod.Name, tg.Ports)
	}
	_, err = r.Resolve(context.Background(), "ns", "pod/wait", ports("80"))
	if !errors.Is(err, ErrPodNotRunning) || !strings.Contains(err.Error(), "--pod-running-timeout") || !strings.Contains(err.Error(), "it is Pending") {
		t.Errorf("pending pod: %v", err)
	}
	if _, err = r.Resolve(context.Background(), "ns", "svc/nosel", ports("80")); !errors.Is(err, ErrNoSelector) {
		t.Errorf("service without selector: %v", err)
	}
	if _, err = r.Resolve(context.Background(), "ns", "pod/run", ports("dns")); !errors.Is(err, ErrUDPOnly) {
		t.Errorf("UDP port of a pod: %v", err)
	}
	if _, err = r.Resolve(context.Background(), "ns", "pod/run", ports("53")); !errors.Is(err, ErrUDPOnly) {
		t.Errorf("UDP port number of a pod: %v", err)
	}
	if _, err = r.Resolve(context.Background(), "ns", "svc/udp", ports("53")); !errors.Is(err, ErrUDPOnly) {
		t.Errorf("UDP port of a service: %v", err)
	}
}
