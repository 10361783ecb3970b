package main

// The start-up of a file of many forwards: N services in one namespace,
// a kpf.yaml with a forward to each, and kpf up -d --wait. What a team
// with a big file waits for each morning, what it asks of the API server
// (pod watches), and what the daemon keeps per forward.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// startupNamespace holds the start-up workload's deployment and services;
// it is kept between runs (making 200 services takes longer than a run).
const startupNamespace = "kpf-startup"

// startupServices makes sure the namespace has a 2-pod deployment and n
// services in front of it, s0 ... s(n-1).
func startupServices(ctx context.Context, sb *sandboxtest.Sandbox, n int) error {
	if err := ensureNamespace(ctx, sb, startupNamespace); err != nil {
		return err
	}
	var m strings.Builder
	m.WriteString(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: kpf.test/http, ports: [{containerPort: 8080}], readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}]}
`)
	for i := range n {
		fmt.Fprintf(&m, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n", i)
	}
	if err := kubectlAsAdmin(sb, m.String(), "apply", "-n", startupNamespace, "-f", "-"); err != nil {
		return err
	}
	return kubectlAsAdmin(sb, "", "rollout", "status", "-n", startupNamespace, "deploy/web", "--timeout=120s")
}

// measureStartup runs kpf up -d --wait with a forward to each of the n
// services over one transport and records how long until every forward
// was ready, the pod watches that added on the API server, and the
// daemon's RSS per forward. The daemon is stopped after.
//
// Then, with idle > 0, the daemon is left idle that long with every forward
// up, and its idle cost is recorded: CPU in % of one core, wake-ups per
// second (context switches of all its threads), and RSS per forward at the
// end.
func measureStartup(ctx context.Context, sb *sandboxtest.Sandbox, kpf, transport, pathName string, n int, idle time.Duration, round int, record func(result)) error {
	dir, err := os.MkdirTemp("", "kpf-bench-startup")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var file strings.Builder
	file.WriteString("forwards:\n")
	for i := range n {
		fmt.Fprintf(&file, "- {name: s%d, namespace: %s, target: svc/s%d, ports: [':80']}\n", i, startupNamespace, i)
	}
	kpfYAML := filepath.Join(dir, "kpf.yaml")
	if err := os.WriteFile(kpfYAML, []byte(file.String()), 0o600); err != nil {
		return err
	}
	home := filepath.Join(dir, "home")
	kpfCmd := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, kpf, append([]string{"--kubeconfig", sb.Kubeconfig(cluster.UserAdmin)}, args...)...)
		cmd.Env = append(os.Environ(), "KPF_HOME="+home)
		return cmd.CombinedOutput()
	}
	defer kpfCmd("down", "--all")
	w0, err := podWatches(ctx, sb)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if out, err := kpfCmd("up", "-d", "--wait", "--timeout", "120s", "--transport", transport, "-f", kpfYAML); err != nil {
		return fmt.Errorf("kpf up: %v\n%s", err, tailLines(string(out), 10))
	}
	ready := time.Since(t0)
	w1, err := podWatches(ctx, sb)
	if err != nil {
		return err
	}
	out, err := kpfCmd("status", "--json")
	if err != nil {
		return fmt.Errorf("kpf status: %v\n%s", err, out)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.PID == 0 {
		return fmt.Errorf("kpf status --json gave no daemon pid (%v): %s", err, tailLines(string(out), 5))
	}
	rec := func(metric string, v float64, unit string) {
		record(result{Round: round, Path: pathName, Workload: fmt.Sprintf("startup-%d", n), Metric: metric, Value: v, Unit: unit})
	}
	rec("ready", ready.Seconds(), "s")
	rec("pod-watches", float64(w1-w0), "watches")
	rec("rss-per-forward", rssMiB(st.PID)*1024/float64(n), "KiB")
	if idle <= 0 {
		return nil
	}
	cpu0, wake0, t1 := cpuSeconds(st.PID), wakeups(st.PID), time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(idle): // the idle spell measured: nothing happens in it
	}
	secs := time.Since(t1).Seconds()
	rec("idle-cpu", (cpuSeconds(st.PID)-cpu0)/secs*100, "% of a core")
	rec("idle-wakeups", float64(wakeups(st.PID)-wake0)/secs, "/s")
	rec("idle-rss-per-forward", rssMiB(st.PID)*1024/float64(n), "KiB")
	// RSS counts the pages of the binary it has mapped too (tens of MiB,
	// the same for 1 forward or 200, more where the kernel maps them as
	// huge pages): its own memory, what forwards add, is the anonymous
	// part.
	rec("idle-anon-rss-per-forward", statusMiB(st.PID, "RssAnon:")*1024/float64(n), "KiB")
	return nil
}

// wakeups is how often the process's threads have been scheduled so far:
// the sum of their voluntary and involuntary context switches.
func wakeups(pid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	total := 0
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && (f[0] == "voluntary_ctxt_switches:" || f[0] == "nonvoluntary_ctxt_switches:") {
				v, _ := strconv.Atoi(f[1])
				total += v
			}
		}
	}
	return total
}

// podWatches reads the pod watches open on the API server from its
// metrics (apiserver_longrunning_requests, resource pods, verb WATCH).
func podWatches(ctx context.Context, sb *sandboxtest.Sandbox) (int, error) {
	b, err := sb.Admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("the API server's metrics: %w", err)
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_longrunning_requests{") || !strings.Contains(line, `resource="pods"`) || !strings.Contains(line, `verb="WATCH"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("the API server's metrics: %q: %w", line, err)
		}
		total += int(v)
	}
	return total, sc.Err()
}
