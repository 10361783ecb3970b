package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
)

// zoo has one of every target kind kubectl port-forward accepts, all
// serving kpf.test/http (GET / names the pod), and a bulk pod.
const zoo = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: kpf.test/http
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: alt, port: 81, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nosel}
spec:
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: sts}
spec:
  serviceName: sts
  replicas: 1
  selector: {matchLabels: {app: sts}}
  template:
    metadata: {labels: {app: sts}}
    spec:
      containers: [{name: web, image: kpf.test/http, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      containers: [{name: web, image: kpf.test/http, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  replicas: 2
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec:
      containers: [{name: web, image: kpf.test/http, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: ReplicationController
metadata: {name: rc}
spec:
  replicas: 1
  selector: {app: rc}
  template:
    metadata: {labels: {app: rc}}
    spec:
      containers: [{name: web, image: kpf.test/http, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  template:
    metadata: {labels: {app: job}}
    spec:
      restartPolicy: OnFailure
      containers: [{name: web, image: kpf.test/http, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec:
  containers:
  - name: web
    image: kpf.test/http
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5300, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: bulk, labels: {app: bulk}}
spec:
  containers:
  - name: bulk
    image: kpf.test/bulk
    ports: [{name: bulk, containerPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: stuck}
spec:
  schedulerName: no-such-scheduler # never bound, so Pending for ever
  containers: [{name: web, image: kpf.test/http}]
`

var (
	zooOnce sync.Once
	zooNS   string
)

// zooNamespace applies the zoo once per test binary.
func zooNamespace(t *testing.T, sb *sandboxtest.Sandbox) string {
	zooOnce.Do(func() {
		zooNS = fmt.Sprintf("zoo-%d", time.Now().UnixNano()%1000000)
		if out, err := sb.KubectlRun(t, "create", "namespace", zooNS); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		sandboxtest.AfterAll(func(sb *sandboxtest.Sandbox) {
			exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "delete", "namespace", zooNS, "--wait=false").Run()
		})
		sb.NamespaceReady(t, zooNS)
		sb.Apply(t, zooNS, zoo)
		for sel, n := range map[string]int{"app=web": 3, "app=sts": 1, "app=ds": 1, "app=rs": 2, "app=rc": 1, "app=job": 1, "app=solo": 1, "app=bulk": 1} {
			sb.ReadyPods(t, zooNS, sel, n)
		}
	})
	if zooNS == "" {
		t.Fatal("the zoo failed to start in an earlier test")
	}
	return zooNS
}

// TestTargetsMatchKubectl: every kind and short name resolves to the same
// pod and remote port in kpf and kubectl.
func TestTargetsMatchKubectl(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	targets := map[string]string{
		"pod/solo": "8080", "solo": "8080", "po/solo": "8080",
		"deployment/web": "8080", "deploy/web": "8080", "deployments.apps/web": "8080",
		"replicaset/rs": "8080", "rs/rs": "8080",
		"statefulset/sts": "8080", "sts/sts": "8080",
		"daemonset/ds": "8080", "ds/ds": "8080",
		"job/job": "8080", "jobs.batch/job": "8080",
		"replicationcontroller/rc": "8080", "rc/rc": "8080",
		"service/web": "80", "svc/web": "80", "svc/web-headless": "8080",
	}
	for target, port := range targets {
		t.Run(strings.ReplaceAll(target, "/", "_"), func(t *testing.T) {
			var pods, remotes []string
			for _, f := range []forwarder{kpf(sb), kubectl(sb)} {
				p, ls := f.start(t, 2, "-n", ns, target, ":"+port)
				pods = append(pods, servedBy(t, ls[0].Addr))
				remotes = append(remotes, ls[0].Remote)
				p.Stop()
			}
			if pods[0] != pods[1] {
				t.Errorf("kpf forwarded to pod %s, kubectl to %s", pods[0], pods[1])
			}
			if remotes[0] != remotes[1] {
				t.Errorf("kpf forwards to remote port %s, kubectl to %s", remotes[0], remotes[1])
			}
		})
	}
}

// TestPortSpecsMatchKubectl: every port form listens where kubectl listens
// and forwards to the same remote port.
func TestPortSpecsMatchKubectl(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	local := strconv.Itoa(freePort(t))
	cases := []struct {
		target string
		ports  []string
	}{
		{"svc/web", []string{local + ":80"}},
		{"svc/web", []string{":80"}},
		{"svc/web", []string{"0:80"}},
		{"svc/web", []string{":http"}},
		{"svc/web", []string{":alt"}},
		{"svc/web", []string{local + ":http"}},
		{"svc/web", []string{":80", ":81"}},
		{"pod/solo", []string{":http"}},
		{"pod/solo", []string{local + ":8080"}},
		{"deployment/web", []string{"8080"}},
		{"deployment/web", []string{"http"}},
		{"svc/web", []string{"http"}},
	}
	for _, c := range cases {
		t.Run(c.target+"_"+strings.Join(c.ports, "_"), func(t *testing.T) {
			var got [2][]string
			for i, f := range []forwarder{kpf(sb), kubectl(sb)} {
				args := append([]string{"-n", ns, c.target}, c.ports...)
				p, ls := f.start(t, 2*len(c.ports), args...)
				for _, l := range ls {
					host, port, _ := net.SplitHostPort(l.Addr)
					if strings.HasPrefix(c.ports[0], ":") || strings.HasPrefix(c.ports[0], "0:") {
						port = "random"
					}
					got[i] = append(got[i], host+" "+port+" -> "+l.Remote)
				}
				// It really forwards.
				servedBy(t, ls[0].Addr)
				p.Stop()
			}
			if strings.Join(got[0], "\n") != strings.Join(got[1], "\n") {
				t.Errorf("kpf listens on\n%s\nkubectl on\n%s", strings.Join(got[0], "\n"), strings.Join(got[1], "\n"))
			}
		})
	}
}

func TestAddressFlag(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for _, c := range []struct {
		address string
		lines   int
		warn    bool
	}{
		{"localhost", 2, false},
		{"127.0.0.1", 1, false},
		{"127.0.0.1,::1", 2, false},
		{"0.0.0.0", 1, true},
	} {
		t.Run(c.address, func(t *testing.T) {
			var got [2][]string
			for i, f := range []forwarder{kpf(sb), kubectl(sb)} {
				p, ls := f.start(t, c.lines, "-n", ns, "--address", c.address, "pod/solo", ":8080")
				for _, l := range ls {
					host, _, _ := net.SplitHostPort(l.Addr)
					got[i] = append(got[i], host)
				}
				addr := ls[0].Addr
				if strings.HasPrefix(addr, "0.0.0.0:") {
					addr = "127.0.0.1:" + strings.TrimPrefix(addr, "0.0.0.0:")
				}
				servedBy(t, addr)
				if i == 0 {
					warned := strings.Contains(p.Output(), "reachable from the network")
					if warned != c.warn {
						t.Errorf("--address %s: warning printed = %v, want %v:\n%s", c.address, warned, c.warn, p.Output())
					}
				}
				p.Stop()
			}
			if strings.Join(got[0], " ") != strings.Join(got[1], " ") {
				t.Errorf("kpf listens on %v, kubectl on %v", got[0], got[1])
			}
		})
	}
}

func TestTransports(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for transport, verb := range map[string]string{"websocket": sandboxtest.WebSocketVerb, "spdy": sandboxtest.SPDYVerb, "auto": sandboxtest.WebSocketVerb} {
		t.Run(transport, func(t *testing.T) {
			from := sb.AuditOffset()
			p, ls := kpf(sb).start(t, 2, "-n", ns, "--transport", transport, "pod/bulk", ":9000")
			if err := workload.BulkDownload(ls[0].Addr, 4<<20, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := workload.BulkUpload(ls[0].Addr, 4<<20, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			p.Stop()
			sandboxtest.WaitFor(t, 10*time.Second, "the port-forward in the audit log with verb "+verb, func() (bool, error) {
				for _, e := range sb.AuditEvents(t, from) {
					if e.ObjectRef.Namespace == ns && e.ObjectRef.Subresource == "portforward" && e.Verb == verb && strings.HasPrefix(e.UserAgent, "kpf") {
						return true, nil
					}
				}
				return false, nil
			})
		})
	}
}

// TestOneBadConnectionDoesNotKillTheForward: a refused remote port ends
// that connection only (kubectl tears the whole forward down), with a
// reset: its client sees an error, not an empty answer that looks whole
// (issue 26; kubectl's client reads a clean end, see below and
// docs/reliability.md).
func TestOneBadConnectionDoesNotKillTheForward(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	p, ls := kpf(sb).start(t, 4, "-n", ns, "--address", "127.0.0.1,::1", "pod/bulk", ":9000", ":9999")
	var good, bad string
	for _, l := range ls {
		if strings.HasPrefix(l.Addr, "127.0.0.1:") {
			if l.Remote == "9000" {
				good = l.Addr
			} else {
				bad = l.Addr
			}
		}
	}
	for i := range 3 {
		c, err := net.Dial("tcp", bad)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 {
			t.Fatal("a refused port delivered data")
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("round %d: the refused connection's client read %v, want a reset", i, err)
		}
		c.Close()
		if err := workload.BulkDownload(good, 1<<20, 20*time.Second); err != nil {
			t.Fatalf("round %d: the good port broke after a refused connection: %v\n%s", i, err, p.Output())
		}
	}
	p.WaitLine(t, `refused the connection to port 9999: nothing listens there`, 10*time.Second)

	// kubectl, for the record: since 1.23 one error ends its whole forward.
	kp, kls := kubectl(sb).start(t, 4, "-n", ns, "--address", "127.0.0.1,::1", "pod/bulk", ":9000", ":9999")
	for _, l := range kls {
		if strings.HasPrefix(l.Addr, "127.0.0.1:") && l.Remote == "9999" {
			if c, err := net.Dial("tcp", l.Addr); err == nil {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := io.Copy(io.Discard, c)
				c.Close()
				t.Logf("kubectl's client of the refused port read to: %v (nil: a clean end)", err)
			}
		}
	}
	if err, exited := kp.Wait(5 * time.Second); exited {
		t.Logf("kubectl exited after one refused connection (%v), as expected of it", err)
	}
}

// TestHalfClose: a client that shuts its write side still gets the whole
// answer, with a real nc -N and with a Go client.
func TestHalfClose(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for _, transport := range []string{"websocket", "spdy"} {
		t.Run(transport, func(t *testing.T) {
			_, ls := kpf(sb).start(t, 2, "-n", ns, "--transport", transport, "pod/bulk", ":9000")
			host, port, _ := net.SplitHostPort(ls[0].Addr)
			if _, err := exec.LookPath("nc"); err == nil {
				cmd := exec.Command("nc", "-N", host, port)
				cmd.Stdin = strings.NewReader("ECHO\nhalf-close works\n")
				out, err := cmd.Output()
				if err != nil || string(out) != "half-close works\n" {
					t.Errorf("nc -N through kpf: %q, %v", out, err)
				}
			} else {
				t.Log("no nc (netcat-openbsd): checking with the Go client only")
			}
			payload := make([]byte, 3<<20)
			rand.Read(payload)
			if err := workload.BulkEcho(ls[0].Addr, payload, 30*time.Second); err != nil {
				t.Fatalf("echo after half-close: %v", err)
			}
		})
	}
}

// TestUpstreamScenarios are the Kubernetes e2e port-forward cases, over both
// transports; after each the forward must still work.
func TestUpstreamScenarios(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for _, transport := range []string{"websocket", "spdy"} {
		t.Run(transport, func(t *testing.T) {
			p, ls := kpf(sb).start(t, 2, "-n", ns, "--transport", transport, "pod/bulk", ":9000")
			addr := ls[0].Addr
			stillWorks := func(t *testing.T) {
				t.Helper()
				if err := workload.BulkDownload(addr, 1<<20, 20*time.Second); err != nil {
					t.Fatalf("forward broken afterwards: %v\n%s", err, p.Output())
				}
			}
			t.Run("connect, send nothing, disconnect", func(t *testing.T) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				stillWorks(t)
			})
			t.Run("send data and disconnect", func(t *testing.T) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte("RECV 100\nabc"))
				c.Close()
				stillWorks(t)
			})
			t.Run("server sends chunks without reading", func(t *testing.T) {
				if err := workload.BulkDownload(addr, 32<<20, 30*time.Second); err != nil {
					t.Fatal(err)
				}
				stillWorks(t)
			})
			t.Run("client closes while the pod writes", func(t *testing.T) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(c, "SEND %d\n", 1<<30)
				io.CopyN(io.Discard, c, 1<<20)
				c.Close()
				stillWorks(t)
			})
		})
	}
}

// TestConcurrentConnections: 500 connections at once, each echoing its own
// random payload, with no errors and no cross-talk.
func TestConcurrentConnections(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	p, ls := kpf(sb).start(t, 2, "-n", ns, "pod/bulk", ":9000")
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			payload := make([]byte, 64<<10)
			rand.Read(payload)
			if err := workload.BulkEcho(ls[0].Addr, payload, 120*time.Second); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed < 10 {
			t.Error(err)
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections failed; kpf output:\n%s", failed, n, tail(p.Output(), 30))
	}
}

// TestSlowReaderStallsNobody: a connection that never reads a 1 GiB stream
// does not hold back a 64 MiB download next to it, and kpf's memory stays
// bounded meanwhile.
func TestSlowReaderStallsNobody(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	p, ls := kpf(sb).start(t, 2, "-n", ns, "pod/bulk", ":9000")
	stalled, err := net.Dial("tcp", ls[0].Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	fmt.Fprintf(stalled, "SEND %d\n", 1<<30)
	// Take the first MiB so the stream surely flows, then stop reading: the
	// rest fills every buffer on its way in milliseconds.
	stalled.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, stalled, 1<<20); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := workload.BulkDownload(ls[0].Addr, 64<<20, 30*time.Second); err != nil {
		t.Fatalf("download next to a stalled connection: %v", err)
	}
	t.Logf("64 MiB next to a stalled connection in %s", time.Since(start).Round(time.Millisecond))
	rss := rssKiB(t, p.Cmd.Process.Pid)
	t.Logf("kpf RSS with a stalled 1 GiB stream: %d MiB", rss/1024)
	if rss > 256*1024 {
		t.Errorf("kpf RSS %d MiB with one stalled reader: memory is not bounded", rss/1024)
	}
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestErrorsSayWhatToDo checks the exact text of the important errors.
func TestErrorsSayWhatToDo(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	k := kpf(sb)
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)
	cases := []struct {
		name string
		args []string
		want []string
		code int
	}{
		{"pod not found", []string{"-n", ns, "pod/sol", ":80"},
			[]string{`error: pod "sol" not found in namespace "` + ns + `"`, "close names here: solo"}, 1},
		{"not found elsewhere", []string{"-n", "default", "deployment/web", ":80"},
			[]string{`error: deployment "web" not found in namespace "default"; it exists in namespace `, ns}, 1},
		{"address in use", []string{"-n", ns, "--address", "127.0.0.1", "pod/solo", busyPort + ":8080"},
			[]string{"address already in use (another process holds port " + busyPort + "; pick another local port, or use :8080 for a free one)", "error: unable to listen on any of the requested ports"}, 1},
		{"no running pod", []string{"-n", ns, "--pod-running-timeout", "2s", "pod/stuck", ":8080"},
			[]string{`error: no running pod for pod/stuck in namespace "` + ns + `" after 2s (it is Pending); wait longer with --pod-running-timeout`}, 1},
		{"UDP only", []string{"-n", ns, "pod/solo", "dns"},
			[]string{"port dns of pod/solo is UDP only; forward it as dns/udp"}, 1},
		{"service without selector", []string{"-n", ns, "svc/nosel", "80"},
			[]string{"service/nosel is defined without a selector"}, 1},
		{"bad port", []string{"-n", ns, "pod/solo", "99999:80"},
			[]string{`error: invalid port "99999:80": the local port "99999" is not a number from 0 to 65535 (use :80 for a free one)`, "See 'kpf forward -h'"}, 2},
		{"bad address", []string{"-n", ns, "--address", "nowhere", "pod/solo", "80"},
			[]string{`error: --address "nowhere": nowhere is not a valid IP`}, 2},
		{"bad transport", []string{"-n", ns, "--transport", "carrier-pigeon", "pod/solo", "80"},
			[]string{`error: --transport "carrier-pigeon": want auto, websocket or spdy`}, 2},
		{"unreachable API server", []string{"--server", "https://127.0.0.1:1", "-n", ns, "pod/solo", "80"},
			[]string{"error: cannot reach the API server at https://127.0.0.1:1: connection refused"}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := k.run(t, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d", code, c.code)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestRBAC: dev forwards in its namespace; viewer is told which permission
// is missing.
func TestRBAC(t *testing.T) {
	sb := sandboxtest.Get(t)
	name := fmt.Sprintf("rbac-%d", time.Now().UnixNano()%100000)
	sb.Apply(t, cluster.DevNamespace, strings.ReplaceAll(`
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: NAME}}
spec:
  containers: [{name: bulk, image: kpf.test/bulk, ports: [{containerPort: 9000}]}]
`, "NAME", name))
	t.Cleanup(func() { sb.KubectlRun(t, "delete", "-n", cluster.DevNamespace, "pod", name, "--wait=false") })
	sb.ReadyPods(t, cluster.DevNamespace, "app="+name, 1)
	as := func(user string) forwarder {
		return forwarder{name: "kpf as " + user, argv: func(args ...string) []string {
			return append([]string{kpfBin, "--kubeconfig", sb.Kubeconfig(user), "forward"}, args...)
		}}
	}
	for _, transport := range []string{"auto", "websocket", "spdy"} {
		p, ls := as(cluster.UserDev).start(t, 2, "--transport", transport, "pod/"+name, ":9000")
		if err := workload.BulkDownload(ls[0].Addr, 1<<20, 20*time.Second); err != nil {
			t.Errorf("dev over %s: %v", transport, err)
		}
		p.Stop()
	}
	out, code := as(cluster.UserViewer).run(t, "pod/"+name, ":9000")
	want := `error: forbidden: you may not create pods/portforward in namespace "dev"`
	if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, `User "viewer" cannot create resource "pods/portforward"`) {
		t.Errorf("viewer: exit %d, output:\n%s\nwant %q", code, out, want)
	}
}

// TestVerboseNeverPrintsSecrets: the highest verbosity prints no token and
// no client key.
func TestVerboseNeverPrintsSecrets(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	const token = "kpf-test-secret-token-0123456789"
	f := forwarder{name: "kpf -v 10", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "-v", "10", "--token", token, "forward"}, args...)
	}}
	p, ls := f.start(t, 2, "-n", ns, "pod/solo", ":8080")
	servedBy(t, ls[0].Addr)
	p.Stop()
	key, err := os.ReadFile(sb.Dir.Kubeconfig(cluster.UserAdmin))
	if err != nil {
		t.Fatal(err)
	}
	out := p.Output()
	if strings.Contains(out, token) {
		t.Errorf("-v 10 printed the bearer token:\n%s", out)
	}
	for _, line := range strings.Split(string(key), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "client-key-data: "); ok && strings.Contains(out, v[:32]) {
			t.Errorf("-v 10 printed the client key")
		}
	}
}

// createOnlyRole is a service account, creator, that may read pods and
// create pods/portforward (SPDY's verb) but not get it (WebSocket's).
const createOnlyRole = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: creator}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: creator}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [pods/portforward], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: creator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: creator}
subjects: [{kind: ServiceAccount, name: creator}]
`

// TestCreateOnlyRBACFallsBackToSPDY: a user allowed only create on
// pods/portforward (SPDY's verb, not WebSocket's get) still forwards with
// --transport auto, as with kubectl; forcing WebSocket is refused with the
// missing verb named. The user is a service account with a bearer token.
func TestCreateOnlyRBACFallsBackToSPDY(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, createOnlyRole+`---
apiVersion: v1
kind: Pod
metadata: {name: bulk, labels: {app: bulk}}
spec:
  containers: [{name: bulk, image: kpf.test/bulk, ports: [{containerPort: 9000}]}]
`)
	sb.ReadyPods(t, ns, "app=bulk", 1)
	token, err := sb.KubectlRun(t, "create", "token", "-n", ns, "creator")
	if err != nil {
		t.Fatalf("kubectl create token: %v\n%s", err, token)
	}
	token = strings.TrimSpace(token)
	// A kubeconfig with the cluster only; the identity is the token flag.
	cfg := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {server: %q, certificate-authority: %q}\ncontexts:\n- name: s\n  context: {cluster: s, user: u}\ncurrent-context: s\nusers:\n- name: u\n  user: {}\n",
		sb.APIServer, filepath.Join(string(sb.Dir), "pki", "ca.crt"))
	if err := os.WriteFile(cfg, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	as := forwarder{name: "kpf as creator", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", cfg, "--token", token, "forward"}, args...)
	}}
	from := sb.AuditOffset()
	p, ls := as.start(t, 2, "-n", ns, "pod/bulk", ":9000")
	if err := workload.BulkDownload(ls[0].Addr, 1<<20, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	sandboxtest.WaitFor(t, 10*time.Second, "an SPDY (create) port-forward by the service account", func() (bool, error) {
		for _, e := range sb.AuditEvents(t, from) {
			if e.ObjectRef.Subresource == "portforward" && e.Verb == sandboxtest.SPDYVerb && e.ResponseStatus.Code == 101 &&
				e.User.Username == "system:serviceaccount:"+ns+":creator" {
				return true, nil
			}
		}
		return false, nil
	})
	out, code := as.run(t, "-n", ns, "--transport", "websocket", "pod/bulk", ":9000")
	if code != 1 || !strings.Contains(out, `cannot get resource "pods/portforward"`) {
		t.Errorf("websocket without get: exit %d:\n%s", code, out)
	}
	if strings.Contains(out, token) {
		t.Error("the token was printed")
	}
}

// TestClientGoDataPath: the escape hatch to client-go's SPDY (kubectl's
// data path) still forwards byte-exact over both transports.
func TestClientGoDataPath(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for _, transport := range []string{"websocket", "spdy"} {
		p, ls := kpf(sb).start(t, 2, "-n", ns, "--data-path", "client-go", "--transport", transport, "pod/bulk", ":9000")
		if err := workload.BulkDownload(ls[0].Addr, 8<<20, 30*time.Second); err != nil {
			t.Fatalf("%s: %v", transport, err)
		}
		if err := workload.BulkUpload(ls[0].Addr, 8<<20, 30*time.Second); err != nil {
			t.Fatalf("%s: %v", transport, err)
		}
		p.Stop()
	}
}
