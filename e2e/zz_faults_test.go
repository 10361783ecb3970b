package e2e

// These tests disturb the API server and the node agent, so they run last
// (Go runs test files in name order) and alone (make e2e uses -p 1).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func fault(t *testing.T, sb *sandboxtest.Sandbox, args ...string) {
	t.Helper()
	out, err := exec.Command(sb.Bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kpf-sandbox %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// recovered waits until a new connection through addr succeeds and
// returns how long that took.
func recovered(t *testing.T, addr string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < within {
		if _, err := fetch(addr, 64<<10); err == nil {
			return time.Since(start)
		} else {
			last = err
		}
	}
	t.Fatalf("no connection succeeded within %s (last error: %v)", within, last)
	return 0
}

// forwardToApp starts an HTTP app and a kpf forward to it that works.
func forwardToApp(t *testing.T, sb *sandboxtest.Sandbox, name string) (*sandboxtest.Proc, string) {
	t.Helper()
	ns := httpAppIn(t, sb, name, 1)
	p, ls := kpf(sb).start(t, 2, "-n", ns, "deployment/"+name, ":8080")
	if _, err := fetch(ls[0].Addr, 1024); err != nil {
		t.Fatal(err)
	}
	return p, ls[0].Addr
}

func TestAPIServerRestart(t *testing.T) {
	sb := sandboxtest.Get(t)
	p, addr := forwardToApp(t, sb, "api")
	fault(t, sb, "restart", "apiserver")
	d := recovered(t, addr, 30*time.Second)
	t.Logf("first connection after the API server was back took %s", d.Round(time.Millisecond))
	if d > 10*time.Second {
		t.Errorf("kpf took %s to reconnect after the API server came back", d)
	}
	if _, exited := p.Wait(0); exited {
		t.Fatalf("kpf exited:\n%s", p.Output())
	}
}

func TestAPIServerPaused(t *testing.T) {
	sb := sandboxtest.Get(t)
	p, addr := forwardToApp(t, sb, "paused")
	fault(t, sb, "pause", "apiserver")
	paused := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			fault(t, sb, "resume", "apiserver")
		}
	}()
	// kpf doctor says so within its step timeout, not minutes later.
	start := time.Now()
	r := doctor(t, nil, sb.Kubeconfig(cluster.UserAdmin), "--step-timeout", "1s", "pod/paused", "8080")
	if c := r.step(t, "api-server"); c.Status != "fail" || !strings.Contains(c.Summary, "no answer within 1s") || r.Code != 1 {
		t.Errorf("doctor with the API server frozen: exit %d, %+v", r.Code, c)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("doctor took %s with a frozen API server and --step-timeout 1s", d)
	}
	// The bound is 15 s of silence, seen by a probe every 5 s.
	p.WaitLine(t, `the API server is silent: tunnels dropped`, 30*time.Second)
	d := time.Since(paused)
	t.Logf("kpf declared the tunnels dead %s after the API server froze", d.Round(time.Millisecond))
	if d > 25*time.Second {
		t.Errorf("took %s to notice a silent API server", d)
	}
	fault(t, sb, "resume", "apiserver")
	resumed = true
	t.Logf("first connection after SIGCONT took %s", recovered(t, addr, 40*time.Second).Round(time.Millisecond))
}

// TestNoLeaks: goroutines and file descriptors come back to where they
// were after 10,000 connections and repeated reconnects.
func TestNoLeaks(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "leak", 2)
	p, ls := kpf(sb).start(t, 2, "--debug-addr", "127.0.0.1:0", "-n", ns, "deployment/leak", ":8080")
	debug := p.WaitLine(t, `Debug server on http://(\S+)/debug/pprof/`, 10*time.Second)[1]
	pid := p.Cmd.Process.Pid
	run := func(n, workers int) {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		per := n / workers
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if _, err := fetch(ls[0].Addr, 512); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	run(200, 4) // warm up: pools and spare tunnels exist
	settle := func() (int, int) {
		var g, fds int
		// Closing goroutines finish asynchronously: take the lowest of a
		// few readings a moment apart.
		g, fds = 1<<30, 1<<30
		for range 10 {
			g, fds = min(g, goroutines(t, debug)), min(fds, countFDs(t, pid))
			time.Sleep(100 * time.Millisecond)
		}
		return g, fds
	}
	g0, fd0 := settle()
	start := time.Now()
	run(10000, 8)
	t.Logf("10,000 connections in %s", time.Since(start).Round(time.Millisecond))
	reconnects := 20
	for range reconnects {
		sb.ReadyPods(t, ns, "app=leak", 2)
		current, err := fetch(ls[0].Addr, 512)
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), current, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		recovered(t, ls[0].Addr, 30*time.Second)
	}
	sb.ReadyPods(t, ns, "app=leak", 2)
	run(200, 4)
	g1, fd1 := settle()
	t.Logf("goroutines %d -> %d, fds %d -> %d after 10,000 connections and %d pod switches", g0, g1, fd0, fd1, reconnects)
	if g1 > g0+10 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if fd1 > fd0+10 {
		t.Errorf("file descriptors grew from %d to %d", fd0, fd1)
	}
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
