package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestTCPCheckFailsWhenNothingListens: a forward to a port nobody listens
// on, with a tcp check, is not healthy: up --wait fails naming the
// refused port, and kpf run does not start its command.
func TestTCPCheckFailsWhenNothingListens(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	k := newKpfCmd(t, sb)
	file := k.write(t, "dead.yaml", fmt.Sprintf(`
forwards:
  - name: dead
    namespace: %s
    target: deployment/api
    ports: [":9999"]
    health: {type: tcp, interval: 1s}
`, ns))
	out, code := k.run(t, "up", "-f", file, "--wait", "--timeout", "20s")
	if code == 0 || !strings.Contains(out, "dead: ") || !strings.Contains(out, "refused the connection to port 9999") {
		t.Errorf("kpf up --wait to a port nobody listens on: exit %d, want a failure naming the refused port\n%s", code, out)
	}
	marker := filepath.Join(k.dir, "marker")
	out, code = k.run(t, "run", "-f", file, "--timeout", "5s", "--", "touch", marker)
	if code == 0 || !strings.Contains(out, "refused the connection to port 9999") {
		t.Errorf("kpf run: exit %d, want a failure naming the refused port\n%s", code, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("kpf run started its command against a dead port:\n%s", out)
	}
}

// TestForwardWaitsForItsDeploymentToScale: a forward whose deployment is
// at 0 replicas waits (status says why), and serves within a minute of a
// scale to 1, without kpf restart.
func TestForwardWaitsForItsDeploymentToScale(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("api", 0))
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: api, namespace: %s, target: deployment/api, ports: [\":8080\"]}\n", ns))
	// A short wait for a running pod, so that the first open fails soon.
	out, code := k.run(t, "up", "--wait", "--timeout", "10s", "--pod-running-timeout", "2s")
	if code == 0 || !strings.Contains(out, "api: waiting: ") || !strings.Contains(out, "no pods match it") {
		t.Errorf("kpf up --wait with 0 replicas: exit %d, want the forward waiting and why\n%s", code, out)
	}
	if f := k.status(t).Forwards[0]; f.State != "waiting" || !strings.Contains(f.LastError, "no pods match it") {
		t.Errorf("status: %+v, want waiting, with the reason", f)
	}
	if out, err := sb.KubectlRun(t, "scale", "-n", ns, "deployment/api", "--replicas=1"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	scaled := time.Now()
	sandboxtest.WaitFor(t, 90*time.Second, "the forward serving", func() (bool, error) {
		f := k.status(t).Forwards[0]
		if f.State != "ready" || len(f.Local) == 0 {
			return false, nil
		}
		_, err := fetch(f.Local[0], 1024)
		return err == nil, nil
	})
	if d := time.Since(scaled); d > time.Minute {
		t.Errorf("the forward served %s after the scale, want within a minute", d.Round(time.Second))
	}
}
