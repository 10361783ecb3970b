package doctor

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodVerdict(t *testing.T) {
	running := func(mods ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}}
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "shop/web:1"}}
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true, RestartCount: 2}}
		for _, m := range mods {
			m(p)
		}
		return p
	}
	notReady := func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }
	waiting := func(reason, msg string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Status.ContainerStatuses[0].State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
		}
	}
	for _, tc := range []struct {
		name   string
		pod    *corev1.Pod
		status Status
		says   []string
	}{
		{"ready", running(), OK, []string{"Running, ready, 2 restarts"}},
		{"not ready", running(notReady), Warn, []string{"not ready", "readiness probe"}},
		{"crash loop", running(notReady, waiting("CrashLoopBackOff", "back-off"), func(p *corev1.Pod) {
			p.Status.ContainerStatuses[0].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled", FinishedAt: metav1.NewTime(time.Now())}
		}), Fail, []string{"CrashLoopBackOff: 2 restarts", "last exit code 137 (OOMKilled)", "kubectl logs -n shop web -c app --previous"}},
		{"image", running(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }, waiting("ImagePullBackOff", "not found")), Fail, []string{"cannot get its image shop/web:1: ImagePullBackOff (not found)", "imagePullSecrets"}},
		{"unschedulable", running(func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodPending
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/3 nodes are available: 3 Insufficient memory."}}
		}), Fail, []string{"not scheduled (Unschedulable: 0/3 nodes are available: 3 Insufficient memory.)"}},
		{"ended", running(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), Fail, []string{"Succeeded", "has ended"}},
		{"terminating", running(func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }), Warn, []string{"terminating"}},
	} {
		st, summary, fix := podVerdict(tc.pod)
		if st != tc.status {
			t.Errorf("%s: %s, want %s (%s)", tc.name, st, tc.status, summary)
		}
		for _, w := range tc.says {
			if !strings.Contains(summary+" | "+fix, w) {
				t.Errorf("%s: %q does not say %q", tc.name, summary+" | "+fix, w)
			}
		}
	}
}

func TestGrouped(t *testing.T) {
	got := grouped([]string{"get pods", "list pods", "get services", "create pods/portforward", "get pods/portforward"})
	if want := "get, list pods; get services; create, get pods/portforward"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

func TestLocalNamesTakenPortAndHolder(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	d := &Doctor{}
	fw := config.Forward{Ports: []portspec.Port{{Local: port, Remote: "80"}}, Addresses: []string{"127.0.0.1"}}
	c := d.local(fw)
	if c.Status != Fail || !strings.Contains(c.Summary, "127.0.0.1:"+strconv.Itoa(int(port))) || c.Fix == "" {
		t.Fatalf("%+v", c)
	}
	// This process holds it: Linux names it by its command line.
	if pid, _ := holder(port); pid != 0 && !strings.Contains(c.Summary, "(pid ") {
		t.Errorf("holder %d not named: %s", pid, c.Summary)
	}
	fw.Addresses = []string{"0.0.0.0"}
	fw.Ports[0].Local = 0
	if c := d.local(fw); c.Status != Warn || !strings.Contains(strings.Join(c.Details, " "), "reachable from other machines") {
		t.Errorf("0.0.0.0: %+v", c)
	}
}
