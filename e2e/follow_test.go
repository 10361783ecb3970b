package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/pattern"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// httpApp is a Deployment of kpf.test/http pods with a Service over them.
func httpApp(name string, replicas int) string {
	return sandboxtest.App(name, "kpf.test/http", replicas, 8080)
}

// httpAppIn runs httpApp in a namespace of the test's, waits until its
// pods are ready, and returns the namespace.
func httpAppIn(t *testing.T, sb *sandboxtest.Sandbox, name string, replicas int) string {
	t.Helper()
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp(name, replicas))
	sb.ReadyPods(t, ns, "app="+name, replicas)
	return ns
}

// httpAppInDev runs httpApp under a fresh name in the dev namespace (the
// one the dev user may forward in), waits until it is ready, deletes it
// when the test ends, and returns the name.
func httpAppInDev(t *testing.T, sb *sandboxtest.Sandbox, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%100000)
	sb.Apply(t, cluster.DevNamespace, httpApp(name, 1))
	t.Cleanup(func() {
		sb.KubectlRun(t, "delete", "-n", cluster.DevNamespace, "deployment/"+name, "svc/"+name, "--wait=false")
	})
	sb.ReadyPods(t, cluster.DevNamespace, "app="+name, 1)
	return name
}

// fetch makes one new connection, downloads n checked pattern bytes and
// returns the pod that served them.
func fetch(addr string, n int) (string, error) {
	return fetchWith(&http.Transport{DisableKeepAlives: true}, addr, n)
}

// fetchWith is fetch through a transport (a proxy's).
func fetchWith(tr *http.Transport, addr string, n int) (string, error) {
	c := &http.Client{Timeout: 60 * time.Second, Transport: tr}
	resp, err := c.Get(fmt.Sprintf("http://%s/bytes/%d", addr, n))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	var v pattern.Verifier
	got, err := io.Copy(&v, resp.Body)
	if err != nil {
		return "", fmt.Errorf("after %d bytes: %w", got, err)
	}
	if got != int64(n) {
		return "", fmt.Errorf("got %d bytes, want %d", got, n)
	}
	return resp.Header.Get("X-Pod-Name"), nil
}

// traffic runs sequential checked downloads until stopped, counting them.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	lastPod    string
	stop       chan struct{}
	done       chan struct{}
}

func startTraffic(addr string) *traffic {
	return startTrafficWith(func() (string, error) { return fetch(addr, 256<<10) })
}

// startTrafficWith runs get (one checked download, returning its pod)
// until stopped.
func startTrafficWith(get func() (string, error)) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			pod, err := get()
			tr.mu.Lock()
			if err != nil {
				tr.failed.Add(1)
				tr.errs = append(tr.errs, err.Error())
			} else {
				tr.ok.Add(1)
				tr.lastPod = pod
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *traffic) finish(t *testing.T) string {
	t.Helper()
	close(tr.stop)
	<-tr.done
	t.Logf("%d connections succeeded, %d failed", tr.ok.Load(), tr.failed.Load())
	if n := tr.failed.Load(); n > 0 {
		t.Errorf("%d connections failed during the change; first errors: %v", n, tr.errs[:min(len(tr.errs), 5)])
	}
	if tr.ok.Load() == 0 {
		t.Error("no connection succeeded")
	}
	return tr.lastPod
}

func TestRolloutLosesNoConnection(t *testing.T) {
	sb := sandboxtest.Get(t)
	for _, kind := range []string{"deployment", "svc"} {
		t.Run(kind, func(t *testing.T) {
			ns := sb.Namespace(t)
			sb.Apply(t, ns, httpApp("roll", 2))
			sb.ReadyPods(t, ns, "app=roll", 2)
			remote := map[string]string{"deployment": ":8080", "svc": ":80"}[kind]
			p, ls := kpf(sb).start(t, 2, "-v", "1", "-n", ns, kind+"/roll", remote)
			tr := startTraffic(ls[0].Addr)
			waitSuccesses(t, tr, 5)
			rollout(t, sb, ns, "deployment/roll")
			newPods := sb.ReadyPods(t, ns, "app=roll", 2)
			before := tr.ok.Load()
			waitSuccesses(t, tr, before+5)
			last := tr.finish(t)
			onNew := false
			for _, np := range newPods {
				onNew = onNew || np.Name == last
			}
			if !onNew {
				t.Errorf("the forward ended on pod %s, not on one of the new pods", last)
			}
			if t.Failed() {
				t.Logf("kpf output:\n%s", tail(p.Output(), 40))
			}
		})
	}
}

func waitSuccesses(t *testing.T, tr *traffic, n int64) {
	t.Helper()
	sandboxtest.WaitFor(t, 60*time.Second, fmt.Sprintf("%d successful connections", n), func() (bool, error) {
		return tr.ok.Load() >= n, nil
	})
}

func TestStatefulSetPodComesBack(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	// The app's Deployment, made a StatefulSet.
	sts := strings.Replace(httpApp("db", 1), "kind: Deployment", "kind: StatefulSet", 1)
	sts = strings.Replace(sts, "spec:\n  replicas", "spec:\n  serviceName: db\n  replicas", 1)
	sb.Apply(t, ns, sts)
	old := sb.ReadyPods(t, ns, "app=db", 1)[0]
	p, ls := kpf(sb).start(t, 2, "-n", ns, "pod/db-0", ":8080")
	if _, err := fetch(ls[0].Addr, 1024); err != nil {
		t.Fatal(err)
	}
	if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), "db-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A connection made while db-0 is gone waits for the new db-0.
	tr := startTraffic(ls[0].Addr)
	sandboxtest.WaitFor(t, 60*time.Second, "a new db-0", func() (bool, error) {
		pods := sb.ReadyPods(t, ns, "app=db", 1)
		return pods[0].UID != old.UID, nil
	})
	waitSuccesses(t, tr, 3)
	tr.finish(t)
	if _, exited := p.Wait(0); exited {
		t.Fatalf("kpf exited:\n%s", p.Output())
	}
}

func TestScaleToZeroAndBack(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "scale", 1)
	p, ls := kpf(sb).start(t, 2, "-n", ns, "deployment/scale", ":8080")
	if _, err := fetch(ls[0].Addr, 1024); err != nil {
		t.Fatal(err)
	}
	if out, err := sb.KubectlRun(t, "scale", "-n", ns, "deployment/scale", "--replicas=0"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "no pods", func() (bool, error) {
		l, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=scale"})
		return err == nil && len(l.Items) == 0, err
	})
	// This connection is made with no pod at all; it waits.
	result := make(chan error, 1)
	go func() { _, err := fetch(ls[0].Addr, 4096); result <- err }()
	p.WaitLine(t, `waiting for a ready pod`, 10*time.Second)
	if out, err := sb.KubectlRun(t, "scale", "-n", ns, "deployment/scale", "--replicas=1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	awaitWaitingConn(t, p, result, 45*time.Second)
}

// awaitWaitingConn fails the test unless the connection that waited (its
// outcome on result) completes within timeout.
func awaitWaitingConn(t *testing.T, p *sandboxtest.Proc, result <-chan error, timeout time.Duration) {
	t.Helper()
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("the waiting connection failed: %v\n%s", err, p.Output())
		}
	case <-time.After(timeout):
		t.Fatalf("the waiting connection did not complete:\n%s", p.Output())
	}
}

func TestBalanceReachesEveryPod(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("lb", 3))
	pods := sb.ReadyPods(t, ns, "app=lb", 3)
	_, ls := kpf(sb).start(t, 2, "-n", ns, "--balance", "svc/lb", ":80")
	seen := map[string]int{}
	for range 30 {
		pod, err := fetch(ls[0].Addr, 1024)
		if err != nil {
			t.Fatal(err)
		}
		seen[pod]++
	}
	for _, p := range pods {
		if seen[p.Name] == 0 {
			t.Errorf("pod %s got no connection: %v", p.Name, seen)
		}
	}
	// Without --balance, every connection goes to the one pod kubectl picks.
	_, ls = kpf(sb).start(t, 2, "-n", ns, "svc/lb", ":80")
	one := map[string]bool{}
	for range 10 {
		pod, err := fetch(ls[0].Addr, 1024)
		if err != nil {
			t.Fatal(err)
		}
		one[pod] = true
	}
	if len(one) != 1 {
		t.Errorf("without --balance connections went to %d pods", len(one))
	}
}

func TestNoReconnectExitsLikeKubectl(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("gone", 1))
	pod := sb.ReadyPods(t, ns, "app=gone", 1)[0]
	p, ls := kpf(sb).start(t, 2, "-n", ns, "--no-reconnect", "deployment/gone", ":8080")
	if _, err := fetch(ls[0].Addr, 1024); err != nil {
		t.Fatal(err)
	}
	if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err, exited := p.Wait(30 * time.Second)
	if !exited {
		t.Fatalf("kpf --no-reconnect still runs after its pod was deleted:\n%s", p.Output())
	}
	if code := exitCode(err); code != 3 || !strings.Contains(p.Output(), "error: lost connection to pod "+ns+"/"+pod.Name) {
		t.Errorf("exit code %d, output:\n%s\nwant code 3 and 'lost connection to pod'", code, p.Output())
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee interface{ ExitCode() int }
	if e, ok := err.(interface{ ExitCode() int }); ok {
		ee = e
		return ee.ExitCode()
	}
	return -1
}

func TestTimeouts(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		p, ls := kpf(sb).start(t, 2, "-n", ns, "--timeout", "2s", "pod/solo", ":8080")
		servedBy(t, ls[0].Addr)
		err, exited := p.Wait(20 * time.Second)
		if !exited || exitCode(err) != 5 {
			t.Fatalf("exited=%v code=%d, want 5:\n%s", exited, exitCode(err), p.Output())
		}
		if d := time.Since(start); d < 2*time.Second || d > 10*time.Second {
			t.Errorf("--timeout 2s stopped after %s", d)
		}
	})
	t.Run("idle-timeout", func(t *testing.T) {
		p, ls := kpf(sb).start(t, 2, "-n", ns, "--idle-timeout", "1s", "pod/solo", ":8080")
		// An open connection keeps it alive past the idle time.
		c, err := net.Dial("tcp", ls[0].Addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, exited := p.Wait(2500 * time.Millisecond); exited {
			t.Fatalf("stopped with a connection open:\n%s", p.Output())
		}
		c.Close()
		err, exited := p.Wait(20 * time.Second)
		if !exited || exitCode(err) != 6 {
			t.Fatalf("exited=%v code=%d, want 6:\n%s", exited, exitCode(err), p.Output())
		}
	})
}

var goroutinesLine = regexp.MustCompile(`goroutine profile: total (\d+)`)

// goroutines reads kpf's goroutine count from its debug server.
func goroutines(t *testing.T, debug string) int {
	t.Helper()
	resp, err := http.Get("http://" + debug + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := goroutinesLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no goroutine count in %q", b[:min(len(b), 200)])
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// rollout restarts a workload and waits until the rollout is done.
func rollout(t *testing.T, sb *sandboxtest.Sandbox, ns, workload string) {
	t.Helper()
	if out, err := sb.KubectlRun(t, "rollout", "restart", "-n", ns, workload); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := sb.KubectlRun(t, "rollout", "status", "-n", ns, workload, "--timeout=90s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
