// Command bench measures kpf against kubectl port-forward on the sandbox:
// the same checked workloads through each path, paths alternated, rounds
// repeated, and the client process's own CPU and memory read from /proc.
// It prints a Markdown table and writes JSON lines. See docs/benchmarks.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/pattern"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type options struct {
	rounds     int
	size       int64
	conns      int
	idle       int
	paths      string
	jsonOut    string
	kpf        string
	workloads  string
	stallBytes int64
	breakdown  bool
	proxy      string
	forwards   int
	idleFor    time.Duration
	topology   string // the node topology measured on (set per run)
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "tls-relay" {
		fmt.Fprintln(os.Stderr, "tls-relay:", tlsRelay(os.Args[2]))
		os.Exit(1)
	}
	var o options
	flag.IntVar(&o.rounds, "rounds", 5, "rounds; paths alternate within each (the table gives each figure's median and its spread, min–max)")
	flag.Int64Var(&o.size, "size", 1<<30, "bytes for the single-connection download and upload")
	flag.IntVar(&o.conns, "latency-conns", 1000, "sequential connections for the latency test")
	flag.IntVar(&o.idle, "idle-conns", 1000, "idle connections for the memory test")
	flag.Int64Var(&o.stallBytes, "stall-bytes", 256<<20, "download next to a stalled connection")
	flag.StringVar(&o.paths, "paths", "direct,kpf-ws,kpf-spdy,kubectl-ws,kubectl-spdy,system-kubectl,kpf-proxy-socks,kpf-proxy-connect", "paths to measure (also kpf-portable-ws and kpf-portable-spdy: the build macOS and Windows run; kpf-ws-httplog and kpf-spdy-httplog: with --http-log, for http-download; kpf-proxy-socks and kpf-proxy-connect: kpf proxy over WebSocket, to the pod's service by name; tls-floor: a relay that only moves the bytes through one TLS connection per connection, with kpf's cipher, to a sink: what any userspace TLS client must spend)")
	flag.StringVar(&o.workloads, "workloads", "download,upload,latency,medium,c100,c1000,stall,idle,udp,redis,pgbench,mariadb,startup", "workloads to run (startup: kpf up -d --wait with a forward to each of -startup-forwards services, on kpf-ws and kpf-spdy: time until all are ready, pod watches added on the API server, daemon RSS per forward; redis, pgbench and mariadb: redis-benchmark GET and SET -c 50, pgbench -S -c 10 and mariadb-slap reads -c 20 against server pods, on direct, kpf-ws, kpf-spdy, kubectl-ws and kubectl-spdy, with the CPU per request of the forwarder, the API server and the node; also http-download: the download as an HTTP response, for the HTTP log's cost; udp: round trips and datagrams per second of 64- and 1,200-byte datagrams through a /udp forward, on direct, kpf-ws and kpf-spdy)")
	flag.IntVar(&o.forwards, "startup-forwards", 200, "forwards in the startup workload's kpf.yaml (one service each)")
	flag.DurationVar(&o.idleFor, "startup-idle", 60*time.Second, "how long the startup workload's daemon is left idle with its forwards up, for its idle cost (CPU % of one core, wake-ups/s, RSS per forward); 0: not measured")
	topology := flag.String("topology", "", "the sandbox node's topology to measure on: cri (a 1.36+ node), legacy, or both (one after the other); default: the one the sandbox runs")
	flag.StringVar(&o.jsonOut, "json", "bench-results.jsonl", "JSON lines output")
	flag.StringVar(&o.kpf, "kpf", "", "kpf binary (default: build ./cmd/kpf)")
	flag.BoolVar(&o.breakdown, "breakdown", false, "also record the CPU per GiB of every process on the path (bench client, API server, node agent, pod)")
	flag.StringVar(&o.proxy, "proxy", "", "a proxy URL (http://HOST:PORT or socks5://HOST:PORT) set as proxy-url in the kubeconfig of every kpf and kubectl path")
	flag.Parse()
	if err := runOn(o, *topology); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// runOn runs the benchmark on each topology asked for, switching the
// sandbox's node to it (kpf-sandbox up --node-topology, which restarts the
// node agent) and back to the one it ran afterwards.
func runOn(o options, topology string) error {
	var topos []string
	switch topology {
	case "":
	case "cri", "legacy":
		topos = []string{topology}
	case "both":
		topos = []string{"cri", "legacy"}
	default:
		return fmt.Errorf("-topology %q: want cri, legacy or both", topology)
	}
	if len(topos) == 0 {
		return run(o)
	}
	sb, release, err := sandboxtest.Up()
	if err != nil {
		return err
	}
	defer release()
	was := nodeTopology(sb)
	defer func() {
		if nodeTopology(sb) != was {
			setTopology(sb, was)
		}
	}()
	for _, t := range topos {
		if err := setTopology(sb, t); err != nil {
			return err
		}
		if err := run(o); err != nil {
			return fmt.Errorf("on the %s topology: %w", t, err)
		}
	}
	return nil
}

// nodeTopology is the topology the sandbox's node runs.
func nodeTopology(sb *sandboxtest.Sandbox) string {
	st, err := sb.Dir.Load()
	if err != nil {
		return "unknown"
	}
	if st.Node.Topology == "" {
		return "cri"
	}
	return st.Node.Topology
}

func setTopology(sb *sandboxtest.Sandbox, t string) error {
	fmt.Fprintf(os.Stderr, "bench: the sandbox's node on the %s topology\n", t)
	if out, err := exec.Command(sb.Bin, "up", "--node-topology", t).CombinedOutput(); err != nil {
		return fmt.Errorf("kpf-sandbox up --node-topology %s: %v\n%s", t, err, out)
	}
	return nil
}

// result is one measurement.
type result struct {
	Round    int     `json:"round"`
	Path     string  `json:"path"`
	Workload string  `json:"workload"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Note     string  `json:"note,omitempty"`
}

type path struct {
	name  string
	start func(ctx context.Context) (*forwarder, error)
	// udp, if set, starts the path's forward of the UDP echo pod's port.
	udp func(ctx context.Context) (*forwarder, error)
	// forward, if set, starts the path's forward of a pod's port, for
	// the real clients (direct: an empty forwarder).
	forward func(ctx context.Context, pod string, port int) (*forwarder, error)
	// transport is kpf's --transport on kpf's own paths, which run the
	// startup workload.
	transport string
}

// forwarder is a running kpf or kubectl, or nothing (direct).
type forwarder struct {
	addr string
	cmd  *exec.Cmd
}

func (f *forwarder) pid() int {
	if f.cmd == nil {
		return 0
	}
	return f.cmd.Process.Pid
}

func (f *forwarder) stop() {
	if f.cmd != nil {
		f.cmd.Process.Kill()
		f.cmd.Wait()
	}
}

var forwardingRE = regexp.MustCompile(`(?:Forwarding|Proxying) from (127\.0\.0\.1:\d+) `)

func startForwarder(ctx context.Context, argv []string, env []string) (*forwarder, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := forwardingRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case addr := <-found:
		return &forwarder{addr: addr, cmd: cmd}, nil
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s did not start forwarding", argv[0])
	}
}

func run(o options) error {
	sb, release, err := sandboxtest.Up()
	if err != nil {
		return err
	}
	defer release()
	o.topology = nodeTopology(sb)
	fmt.Fprintf(os.Stderr, "bench: node topology %s\n", o.topology)
	kpf := o.kpf
	if kpf == "" {
		kpf = filepath.Join(os.TempDir(), "kpf-bench")
		if err := buildKpf(kpf); err != nil {
			return err
		}
	}
	// The portable build (what macOS and Windows run) of the same source.
	var kpfPortable string
	if strings.Contains(o.paths, "kpf-portable") {
		kpfPortable = filepath.Join(os.TempDir(), "kpf-bench-portable")
		if err := buildKpf(kpfPortable, "-tags", "kpf_portable"); err != nil {
			return err
		}
	}
	ctx := context.Background()
	ns := "kpf-bench"
	if err := ensureNamespace(ctx, sb, ns); err != nil {
		return err
	}
	// Pods of an earlier run that ended (a node restart, a killed bench)
	// are not run again: delete them, so that apply makes new ones.
	for _, phase := range []string{"Failed", "Succeeded"} {
		exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "delete", "pods", "-n", ns, "--field-selector=status.phase="+phase, "--wait").Run()
	}
	apply := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "apply", "-n", ns, "-f", "-")
	apply.Stdin = strings.NewReader(`
apiVersion: v1
kind: Pod
metadata: {name: bulk, labels: {app: bulk}}
spec:
  containers:
  - {name: bulk, image: kpf.test/bulk, ports: [{containerPort: 9000}], readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {name: bulk}
spec: {selector: {app: bulk}, ports: [{port: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: uecho, labels: {app: uecho}}
spec:
  containers:
  - {name: echo, image: kpf.test/udp-echo, ports: [{containerPort: 5300, protocol: UDP}]}
`)
	if out, err := apply.CombinedOutput(); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	var direct string
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := sb.Admin.CoreV1().Pods(ns).Get(ctx, "bulk", metav1.GetOptions{})
		if err == nil && sandboxtest.PodReady(p) {
			a, err := sb.PodAddr(p)
			if err != nil {
				return err
			}
			direct = net.JoinHostPort(a, "9000")
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the bench pod is not ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The UDP echo pod, reached directly at its pod IP (on the sandbox's
	// pod network) or its loopback address.
	var directUDP string
	for deadline := time.Now().Add(60 * time.Second); directUDP == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if p, err := sb.Admin.CoreV1().Pods(ns).Get(ctx, "uecho", metav1.GetOptions{}); err == nil && p.Status.Phase == "Running" {
			if a, err := sb.PodAddr(p); err == nil {
				directUDP = net.JoinHostPort(a, "5300")
			}
		}
	}
	if c, err := cluster.Open(sb.Dir, sb.Bin, nil); err == nil {
		for _, name := range []string{"kube-apiserver", "node"} {
			if p, ok := c.State().Procs[name]; ok {
				sandboxPIDs[name] = p.PID
			}
		}
	}
	admin := sb.Kubeconfig(cluster.UserAdmin)
	if o.proxy != "" {
		if admin, err = kubeconfigVia(admin, o.proxy); err != nil {
			return err
		}
		defer os.Remove(admin)
	}
	kubectlTo := func(bin, ws string) func(context.Context, string, int) (*forwarder, error) {
		return func(ctx context.Context, pod string, port int) (*forwarder, error) {
			return startForwarder(ctx, []string{bin, "--kubeconfig", admin, "port-forward", "-n", ns, "pod/" + pod, ":" + strconv.Itoa(port)}, []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=" + ws})
		}
	}
	kpfTo := func(bin, transport string, extra ...string) func(context.Context, string, int) (*forwarder, error) {
		return func(ctx context.Context, pod string, port int) (*forwarder, error) {
			args := append([]string{bin, "--kubeconfig", admin, "forward", "--transport", transport, "-n", ns}, extra...)
			return startForwarder(ctx, append(args, "pod/"+pod, ":"+strconv.Itoa(port)), nil)
		}
	}
	bulk := func(to func(context.Context, string, int) (*forwarder, error)) func(context.Context) (*forwarder, error) {
		return func(ctx context.Context) (*forwarder, error) { return to(ctx, "bulk", 9000) }
	}
	kubectlPF := func(bin, ws string) func(context.Context) (*forwarder, error) { return bulk(kubectlTo(bin, ws)) }
	kpfPF := func(bin, transport string, extra ...string) func(context.Context) (*forwarder, error) {
		return bulk(kpfTo(bin, transport, extra...))
	}
	none := func(context.Context, string, int) (*forwarder, error) { return &forwarder{}, nil }
	// kpf proxy: the same pod through its service's name, over SOCKS5
	// and HTTP CONNECT (the forwarder's address says how to dial).
	kpfProxy := func(scheme string) func(context.Context) (*forwarder, error) {
		return func(ctx context.Context) (*forwarder, error) {
			f, err := startForwarder(ctx, []string{kpf, "--kubeconfig", admin, "proxy", "--listen", "127.0.0.1:0", "--transport", "websocket", "-n", ns}, nil)
			if err == nil {
				f.addr = scheme + "://" + f.addr + "/bulk:9000"
			}
			return f, err
		}
	}
	// The HTTP log's cost: the same forward with --http-log (its lines go
	// to a file that is emptied with each run), on http-download.
	httpLog := filepath.Join(os.TempDir(), fmt.Sprintf("kpf-bench-http-%d.log", os.Getpid()))
	defer os.Remove(httpLog)
	kpfUDP := func(transport string) func(context.Context) (*forwarder, error) {
		return func(ctx context.Context) (*forwarder, error) {
			if out, err := exec.Command(kpf, "relay", "image").Output(); err == nil {
				exec.Command(sb.Bin, "image", "add", strings.TrimSpace(string(out)), kpf).Run()
			}
			return startForwarder(ctx, []string{kpf, "--kubeconfig", admin, "forward", "--transport", transport, "-n", ns, "pod/uecho", ":5300/udp"}, nil)
		}
	}
	// The TLS floor: a relay process that only moves the bytes through
	// TLS, to a sink here that passes them to the bench pod.
	tlsFloor := func(ctx context.Context) (*forwarder, error) {
		sink, err := startTLSSink(direct)
		if err != nil {
			return nil, err
		}
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		return startForwarder(ctx, []string{self, "tls-relay", sink}, nil)
	}
	all := map[string]path{
		"tls-floor": {name: "tls-floor", start: tlsFloor},
		"direct": {name: "direct", start: func(context.Context) (*forwarder, error) { return &forwarder{addr: direct}, nil },
			udp:     func(context.Context) (*forwarder, error) { return &forwarder{addr: directUDP}, nil },
			forward: none},
		"kpf-ws":            {name: "kpf-ws", start: kpfPF(kpf, "websocket"), udp: kpfUDP("websocket"), forward: kpfTo(kpf, "websocket"), transport: "websocket"},
		"kpf-spdy":          {name: "kpf-spdy", start: kpfPF(kpf, "spdy"), udp: kpfUDP("spdy"), forward: kpfTo(kpf, "spdy"), transport: "spdy"},
		"kpf-ws-httplog":    {name: "kpf-ws-httplog", start: kpfPF(kpf, "websocket", "--http-log", httpLog)},
		"kpf-spdy-httplog":  {name: "kpf-spdy-httplog", start: kpfPF(kpf, "spdy", "--http-log", httpLog)},
		"kpf-portable-ws":   {name: "kpf-portable-ws", start: kpfPF(kpfPortable, "websocket")},
		"kpf-proxy-socks":   {name: "kpf-proxy-socks", start: kpfProxy("socks5h")},
		"kpf-proxy-connect": {name: "kpf-proxy-connect", start: kpfProxy("connect")},
		"kpf-portable-spdy": {name: "kpf-portable-spdy", start: kpfPF(kpfPortable, "spdy")},
		"kubectl-ws":        {name: "kubectl-ws", start: kubectlPF(sb.Kubectl, "true"), forward: kubectlTo(sb.Kubectl, "true")},
		"kubectl-spdy":      {name: "kubectl-spdy", start: kubectlPF(sb.Kubectl, "false"), forward: kubectlTo(sb.Kubectl, "false")},
		"system-kubectl":    {name: "system-kubectl", start: kubectlPF("/usr/bin/kubectl", "true")},
	}
	var paths []path
	for _, n := range strings.Split(o.paths, ",") {
		p, ok := all[n]
		if !ok {
			return fmt.Errorf("unknown path %q", n)
		}
		if n == "system-kubectl" {
			if _, err := os.Stat("/usr/bin/kubectl"); err != nil {
				continue
			}
		}
		paths = append(paths, p)
	}
	jf, err := os.Create(o.jsonOut)
	if err != nil {
		return err
	}
	defer jf.Close()
	enc := json.NewEncoder(jf)
	var results []result
	record := func(r result) {
		results = append(results, r)
		enc.Encode(r)
		fmt.Fprintf(os.Stderr, "  round %d %-14s %-9s %-16s %10.3f %s %s\n", r.Round, r.Path, r.Workload, r.Metric, r.Value, r.Unit, r.Note)
	}
	workloads := map[string]bool{}
	for _, w := range strings.Split(o.workloads, ",") {
		workloads[w] = true
	}
	servers, err := startClientServers(ctx, sb, ns, workloads)
	if err != nil {
		return err
	}
	defer stopClientServers(sb, ns, servers)
	if workloads["startup"] {
		if err := startupServices(ctx, sb, o.forwards); err != nil {
			return fmt.Errorf("startup: %w", err)
		}
	}
	for round := 1; round <= o.rounds; round++ {
		order := append([]path(nil), paths...)
		if round%2 == 0 { // alternate so no path always runs first
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, p := range order {
			if len(servers) > 0 && p.forward != nil {
				if err := measureClients(ctx, p, round, servers, record); err != nil {
					record(result{Round: round, Path: p.name, Workload: "error", Metric: "error", Note: err.Error()})
				}
			}
			if workloads["startup"] && p.transport != "" {
				if err := measureStartup(ctx, sb, kpf, p.transport, p.name, o.forwards, o.idleFor, round, record); err != nil {
					record(result{Round: round, Path: p.name, Workload: "error", Metric: "error", Note: "startup: " + err.Error()})
				}
			}
			if !onlyClients(workloads) {
				if err := measure(ctx, o, p, round, workloads, record); err != nil {
					record(result{Round: round, Path: p.name, Workload: "error", Metric: "error", Note: err.Error()})
				}
			}
		}
	}
	fmt.Print(markdown(results, paths, o))
	return nil
}

// kubectlAsAdmin runs the sandbox's kubectl as its admin, with stdin.
func kubectlAsAdmin(sb *sandboxtest.Sandbox, stdin string, args ...string) error {
	cmd := exec.Command(sb.Kubectl, append([]string{"--kubeconfig", sb.Kubeconfig(cluster.UserAdmin)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// ensureNamespace makes the namespace if it is not there, and waits for its
// default service account: a pod is refused until it exists (made by the
// controller-manager, a moment after a start).
func ensureNamespace(ctx context.Context, sb *sandboxtest.Sandbox, ns string) error {
	exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "create", "namespace", ns).Run()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := sb.Admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s has no default service account after 60s", ns)
		}
	}
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// sandboxPIDs are the API server's and the node agent's processes.
var sandboxPIDs = map[string]int{}

// machineCPU is the CPU time the whole machine spent busy (/proc/stat:
// user, nice, system, irq and softirq of every CPU; not idle, iowait or
// steal), processes and kernel alike.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	busy := 0.0
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / 100 // USER_HZ
}

// pathCPU is the CPU time of every process on a path other than the
// forwarder: the bench process itself (the client), the API server, the
// node agent and the pod (the node agent's children); and the machine's
// in all.
func pathCPU() map[string]float64 {
	out := map[string]float64{"client": cpuSeconds(os.Getpid()), "machine": machineCPU()}
	if pid := sandboxPIDs["kube-apiserver"]; pid != 0 {
		out["apiserver"] = cpuSeconds(pid)
	}
	node := sandboxPIDs["node"]
	if node == 0 {
		return out
	}
	out["node"] = cpuSeconds(node)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if ppid, _ := strconv.Atoi(f[1]); ppid == node {
			out["pod"] += cpuSeconds(pid)
		}
	}
	return out
}

// rssMiB is the process's resident memory now.
func rssMiB(pid int) float64 { return statusMiB(pid, "VmRSS:") }

// peakRSSMiB is the most the process has held resident so far.
func peakRSSMiB(pid int) float64 { return statusMiB(pid, "VmHWM:") }

func statusMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func measure(ctx context.Context, o options, p path, round int, w map[string]bool, record func(result)) error {
	if w["udp"] && p.udp != nil {
		if err := measureUDP(ctx, p, round, record); err != nil {
			return fmt.Errorf("udp: %w", err)
		}
	}
	f, err := p.start(ctx)
	if err != nil {
		return err
	}
	defer f.stop()
	mib := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	rec := func(workload, metric string, v float64, unit string) {
		record(result{Round: round, Path: p.name, Workload: workload, Metric: metric, Value: v, Unit: unit})
	}
	// Warm up: a first connection (tunnel dialled, caches hot).
	if err := workload.BulkDownload(f.addr, 1<<20, 60*time.Second); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	// Idle connections first, while the process is fresh, so the
	// per-connection figure is not muddled by what later workloads leave.
	if w["idle"] && f.pid() != 0 {
		base := rssMiB(f.pid())
		var conns []net.Conn
		for i := 0; i < o.idle; i++ {
			c, err := workload.Dial(f.addr, 30*time.Second)
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		// An idle connection costs once its tunnel or streams exist: wait
		// until the RSS settles.
		prev := -1.0
		for i := 0; i < 50; i++ {
			time.Sleep(200 * time.Millisecond)
			r := rssMiB(f.pid())
			if r == prev {
				break
			}
			prev = r
		}
		rec("idle", "rss", rssMiB(f.pid()), "MiB")
		rec("idle", "per-conn", (rssMiB(f.pid())-base)*1024/float64(len(conns)), "KiB/conn")
		for _, c := range conns {
			c.Close()
		}
	}
	if w["http-download"] {
		cpu0, t0 := cpuSeconds(f.pid()), time.Now()
		if err := workload.HTTPDownload(f.addr, uint64(o.size), 10*time.Minute); err != nil {
			return fmt.Errorf("http-download: %w", err)
		}
		d := time.Since(t0)
		rec("http-download", "throughput", mib(o.size, d), "MiB/s")
		if f.pid() != 0 {
			rec("http-download", "cpu", (cpuSeconds(f.pid())-cpu0)/(float64(o.size)/(1<<30)), "CPU s/GiB")
		}
	}
	if w["download"] {
		path0 := pathCPU()
		cpu0, t0 := cpuSeconds(f.pid()), time.Now()
		if err := workload.BulkDownload(f.addr, uint64(o.size), 10*time.Minute); err != nil {
			return fmt.Errorf("download: %w", err)
		}
		d := time.Since(t0)
		rec("download", "throughput", mib(o.size, d), "MiB/s")
		if f.pid() != 0 {
			rec("download", "cpu", (cpuSeconds(f.pid())-cpu0)/(float64(o.size)/(1<<30)), "CPU s/GiB")
		}
		if o.breakdown {
			for name, v := range pathCPU() {
				rec("download", "cpu-"+name, (v-path0[name])/(float64(o.size)/(1<<30)), "CPU s/GiB")
			}
		}
	}
	if w["upload"] {
		path0 := pathCPU()
		cpu0, t0 := cpuSeconds(f.pid()), time.Now()
		if err := workload.BulkUpload(f.addr, uint64(o.size), 10*time.Minute); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		d := time.Since(t0)
		rec("upload", "throughput", mib(o.size, d), "MiB/s")
		if f.pid() != 0 {
			rec("upload", "cpu", (cpuSeconds(f.pid())-cpu0)/(float64(o.size)/(1<<30)), "CPU s/GiB")
		}
		if o.breakdown {
			for name, v := range pathCPU() {
				rec("upload", "cpu-"+name, (v-path0[name])/(float64(o.size)/(1<<30)), "CPU s/GiB")
			}
		}
	}
	if w["latency"] {
		lat, err := latencies(f.addr, o.conns)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		rec("latency", "p50", ms(lat, 0.50), "ms")
		rec("latency", "p90", ms(lat, 0.90), "ms")
		rec("latency", "p99", ms(lat, 0.99), "ms")
	}
	if w["medium"] {
		// Medium responses, one after another, each on a new connection:
		// what an API client or a test suite does, and where a tunnel's
		// per-response costs (setup, the tail of a paced read) show.
		const n, each = 200, 256 << 10
		var ds []time.Duration
		t0 := time.Now()
		for i := 0; i < n; i++ {
			t := time.Now()
			if err := workload.BulkDownload(f.addr, each, 30*time.Second); err != nil {
				return fmt.Errorf("medium: %w", err)
			}
			ds = append(ds, time.Since(t))
		}
		rec("medium", "throughput", mib(n*each, time.Since(t0)), "MiB/s")
		rec("medium", "p50", ms(ds, 0.50), "ms")
	}
	for _, n := range []int{100, 1000} {
		if !w[fmt.Sprintf("c%d", n)] {
			continue
		}
		per := int64(256 << 20 / n)
		if per < 64<<10 {
			per = 64 << 10
		}
		t0 := time.Now()
		errs := concurrent(f.addr, n, per)
		d := time.Since(t0)
		rec(fmt.Sprintf("c%d", n), "throughput", mib(per*int64(n-errs), d), "MiB/s")
		rec(fmt.Sprintf("c%d", n), "errors", float64(errs), "conns")
		if f.pid() != 0 {
			// The process's high-water mark so far: what the heaviest
			// load made it hold.
			rec(fmt.Sprintf("c%d", n), "peak rss", peakRSSMiB(f.pid()), "MiB")
		}
	}
	if w["stall"] {
		alone0 := time.Now()
		if err := workload.BulkDownload(f.addr, uint64(o.stallBytes), 2*time.Minute); err != nil {
			return fmt.Errorf("stall baseline: %w", err)
		}
		alone := time.Since(alone0)
		before := 0.0
		if f.pid() != 0 {
			before = rssMiB(f.pid())
		}
		c, err := workload.Dial(f.addr, 30*time.Second)
		if err != nil {
			return err
		}
		fmt.Fprintf(c, "SEND %d\n", int64(1)<<40)
		io.CopyN(io.Discard, c, 1<<20)
		t0 := time.Now()
		err = workload.BulkDownload(f.addr, uint64(o.stallBytes), 30*time.Second)
		d := time.Since(t0)
		if err != nil {
			record(result{Round: round, Path: p.name, Workload: "stall", Metric: "neighbour", Value: 0, Unit: "x alone", Note: "did not finish in 30 s: " + err.Error()})
		} else {
			rec("stall", "neighbour", alone.Seconds()/d.Seconds(), "x alone")
		}
		if f.pid() != 0 {
			// What the stalled connection (and the download next to it)
			// added, and where the process stands after every workload.
			rec("stall", "rss growth", rssMiB(f.pid())-before, "MiB")
			rec("stall", "rss", rssMiB(f.pid()), "MiB")
		}
		c.Close()
	}
	return nil
}

func latencies(addr string, n int) ([]time.Duration, error) {
	payload := make([]byte, 64)
	pattern.Fill(payload, 0)
	buf := make([]byte, 64)
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		c, err := workload.Dial(addr, 30*time.Second)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write(append([]byte("ECHO\n"), payload...))
		if _, err := io.ReadFull(c, buf); err != nil {
			c.Close()
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		out = append(out, time.Since(t0))
		c.Close()
	}
	return out, nil
}

func ms(d []time.Duration, q float64) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(q*float64(len(s)-1))].Microseconds()) / 1000
}

func concurrent(addr string, n int, per int64) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := workload.BulkDownload(addr, uint64(per), 5*time.Minute); err != nil {
				mu.Lock()
				errs++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// buildKpf builds ./cmd/kpf into out, with extra go build arguments.
func buildKpf(out string, extra ...string) error {
	build := exec.Command("go", append(append([]string{"build"}, extra...), "-o", out, "./cmd/kpf")...)
	build.Dir = ".."
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build kpf %s: %v\n%s", strings.Join(extra, " "), err, b)
	}
	return nil
}

// topologyNotes say what each node topology is, in the table's title.
var topologyNotes = map[string]string{
	"cri":    "a 1.36+ node: WebSockets proxied to the kubelet as they are, streams served by a CRI streaming server behind it",
	"legacy": "WebSockets translated by the API server, streams served in the kubelet handler",
}

func markdown(rs []result, paths []path, o options) string {
	type key struct{ path, workload, metric string }
	vals := map[key][]float64{}
	units := map[key]string{}
	var rows []key
	seen := map[key]bool{}
	for _, r := range rs {
		k := key{r.Path, r.Workload, r.Metric}
		vals[k] = append(vals[k], r.Value)
		units[k] = r.Unit
		rk := key{"", r.Workload, r.Metric}
		if !seen[rk] && r.Workload != "error" {
			seen[rk] = true
			rows = append(rows, rk)
		}
	}
	var b strings.Builder
	via := ""
	if o.proxy != "" {
		if u, err := url.Parse(o.proxy); err == nil {
			via = "; tunnels through the proxy " + u.Redacted()
		}
	}
	fmt.Fprintf(&b, "\nkpf benchmark, %s, %d cores, %s; node topology %s (%s); %d rounds, paths alternated%s; median (min–max)\n\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, o.topology, topologyNotes[o.topology], o.rounds, via)
	b.WriteString("| workload | metric |")
	for _, p := range paths {
		b.WriteString(" " + p.name + " |")
	}
	pairs := [][2]string{{"kpf-ws", "kubectl-ws"}, {"kpf-spdy", "kubectl-spdy"}}
	for _, p := range paths {
		if p.name == "tls-floor" {
			pairs = append(pairs, [2]string{"kpf-spdy", "tls-floor"}, [2]string{"kpf-ws", "tls-floor"})
		}
		if strings.HasPrefix(p.name, "kpf-proxy-") {
			pairs = append(pairs, [2]string{p.name, "kpf-ws"}) // a proxy against the forward it builds on
		}
	}
	for _, pair := range pairs {
		b.WriteString(" " + pair[0] + " / " + pair[1] + " |")
	}
	b.WriteString("\n|---|---|")
	for range paths {
		b.WriteString("---|")
	}
	for range pairs {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		switch {
		case len(s) == 0:
			return 0
		case len(s)%2 == 0:
			return (s[len(s)/2-1] + s[len(s)/2]) / 2
		}
		return s[len(s)/2]
	}
	for _, r := range rows {
		unit := ""
		for _, p := range paths {
			if u := units[key{p.name, r.workload, r.metric}]; u != "" {
				unit = u
			}
		}
		fmt.Fprintf(&b, "| %s | %s (%s) |", r.workload, r.metric, unit)
		for _, p := range paths {
			v := vals[key{p.name, r.workload, r.metric}]
			if len(v) == 0 {
				b.WriteString(" – |")
				continue
			}
			s := append([]float64(nil), v...)
			sort.Float64s(s)
			fmt.Fprintf(&b, " %.3g (%.3g–%.3g) |", med(v), s[0], s[len(s)-1])
		}
		for _, pair := range pairs {
			a, c := vals[key{pair[0], r.workload, r.metric}], vals[key{pair[1], r.workload, r.metric}]
			// A growth is a difference of two readings: no ratio of those.
			if len(a) == 0 || len(c) == 0 || med(c) <= 0 || med(a) < 0 || r.metric == "rss growth" {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(&b, " %.2f× |", med(a)/med(c))
		}
		b.WriteString("\n")
	}
	for _, r := range rs {
		if r.Workload == "error" {
			fmt.Fprintf(&b, "\nround %d %s: %s\n", r.Round, r.Path, r.Note)
		}
	}
	return b.String()
}

// kubeconfigVia writes a copy of the kubeconfig at path with proxy-url set
// on its clusters, and returns the copy's path.
func kubeconfigVia(path, proxy string) (string, error) {
	if _, err := url.Parse(proxy); err != nil {
		return "", fmt.Errorf("-proxy %q: %v", proxy, err)
	}
	f, err := os.CreateTemp("", "kpf-bench-kubeconfig-")
	if err != nil {
		return "", err
	}
	f.Close()
	return f.Name(), sandboxtest.WriteKubeconfigVia(path, proxy, f.Name())
}

// measureUDP runs the UDP workloads through a path's /udp forward of the
// echo pod: for 64- and 1,200-byte datagrams, the round-trip time of 2,000
// sequential echoes (p50, p99) and the datagrams per second a client
// keeping 32 in flight gets back.
func measureUDP(ctx context.Context, p path, round int, record func(result)) error {
	f, err := p.udp(ctx)
	if err != nil {
		return err
	}
	defer f.stop()
	c, err := net.Dial("udp", f.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.UDPConn).SetReadBuffer(4 << 20)
	rec := func(workload, metric string, v float64, unit, note string) {
		record(result{Round: round, Path: p.name, Workload: workload, Metric: metric, Value: v, Unit: unit, Note: note})
	}
	buf := make([]byte, 65536)
	for _, size := range []int{64, 1200} {
		msg := make([]byte, size)
		pattern.Fill(msg, 0)
		// Warm up: the relay's streams and flows, and the tunnel.
		for i := 0; i < 20; i++ {
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			c.Read(buf)
		}
		var rtts []time.Duration
		lost := 0
		for i := 0; i < 2000; i++ {
			t0 := time.Now()
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Read(buf); err != nil {
				lost++
				continue
			}
			rtts = append(rtts, time.Since(t0))
		}
		if len(rtts) == 0 {
			return fmt.Errorf("no echo of %d-byte datagrams came back", size)
		}
		w := fmt.Sprintf("udp-%d", size)
		note := ""
		if lost > 0 {
			note = fmt.Sprintf("%d of 2000 lost", lost)
		}
		rec(w, "rtt p50", ms(rtts, 0.50), "ms", note)
		rec(w, "rtt p99", ms(rtts, 0.99), "ms", note)
		// Rate: 32 in flight; each answer lets another go.
		const window = 32
		got, sent := 0, 0
		t0 := time.Now()
		for ; sent < window; sent++ {
			c.Write(msg)
		}
		for time.Since(t0) < 3*time.Second {
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Read(buf); err != nil {
				// The window was lost: send it again.
				for i := 0; i < window; i++ {
					c.Write(msg)
				}
				sent = got + window
				continue
			}
			got++
			c.Write(msg)
			sent++
		}
		d := time.Since(t0)
		// Drain what is still on its way before the next size.
		for {
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		rec(w, "datagrams/s", float64(got)/d.Seconds(), "1/s", "")
	}
	return nil
}
