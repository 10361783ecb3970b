package main

// Real clients that nobody here wrote, through each path: redis-benchmark,
// pgbench and mariadb-slap against Debian's servers running as sandbox
// pods, and the same clients straight at the pods' addresses (direct).
// What they report is what a user of a database or a cache would see; the
// CPU that the forwarder, the API server and the node spend per request
// says where a path's cost goes.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// clientServer is a server pod that a real client measures.
type clientServer struct {
	workload string                   // the workload's name in -workloads
	pod      string                   // the pod (label app=pod)
	port     int                      // its port
	programs []string                 // what the machine needs: the client and the server
	manifest func(data string) string // the pod, its data in the folder data
	direct   string                   // where the pod is reached without a forward
}

var clientServers = []*clientServer{
	{
		workload: "redis", pod: "redis", port: 6379,
		programs: []string{"redis-benchmark", "redis-server"},
		manifest: func(string) string { return sandboxtest.RedisPod },
	},
	{
		workload: "pgbench", pod: "postgres", port: 5432,
		programs: []string{"pgbench", "initdb"},
		manifest: sandboxtest.PostgresPod,
	},
	{
		workload: "mariadb", pod: "mariadb", port: 3306,
		programs: []string{"mariadb-slap", "mariadbd", "mariadb-install-db"},
		manifest: func(data string) string {
			return strings.ReplaceAll(`
apiVersion: v1
kind: Pod
metadata: {name: mariadb, labels: {app: mariadb}}
spec:
  containers:
  - name: mariadb
    image: mariadb
    command: [sh, -c, 'mariadb-install-db --datadir=DATA/db --user=root --skip-test-db >/dev/null 2>&1 && exec mariadbd --no-defaults --datadir=DATA/db --user=root --bind-address=$KPF_POD_ADDR --port=3306 --socket=DATA/sock --pid-file=DATA/pid --skip-grant-tables --skip-name-resolve --skip-log-bin --max-connections=200']
    readinessProbe: {tcpSocket: {port: 3306}, periodSeconds: 1}
`, "DATA", data)
		},
	},
}

// findProgram finds a program on PATH, in PostgreSQL's folder or in
// /usr/sbin.
func findProgram(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name); len(m) > 0 {
		return m[len(m)-1], nil
	}
	if _, err := os.Stat("/usr/sbin/" + name); err == nil {
		return "/usr/sbin/" + name, nil
	}
	return "", fmt.Errorf("%s is not installed (run scripts/deps.sh bench)", name)
}

// startClientServers runs the server pods of the selected client
// workloads, each in a fresh data folder, and returns the selected ones
// with their direct addresses once they are ready.
func startClientServers(ctx context.Context, sb *sandboxtest.Sandbox, ns string, workloads map[string]bool) ([]*clientServer, error) {
	var out []*clientServer
	for _, s := range clientServers {
		if !workloads[s.workload] {
			continue
		}
		for _, p := range s.programs {
			if _, err := findProgram(p); err != nil {
				return nil, fmt.Errorf("workload %s: %w", s.workload, err)
			}
		}
		out = append(out, s)
	}
	kubectl := func(stdin string, args ...string) error {
		return kubectlAsAdmin(sb, stdin, append([]string{"-n", ns}, args...)...)
	}
	for _, s := range out {
		// A pod of an earlier run may hold its data folder: delete it
		// first, then start from an empty folder.
		if err := kubectl("", "delete", "pod", s.pod, "--ignore-not-found", "--wait", "--timeout=60s"); err != nil {
			return nil, err
		}
		dir := filepath.Join(os.TempDir(), "kpf-bench-"+s.pod)
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, err
		}
		os.Chmod(dir, 0o777) // PostgreSQL runs as its own user
		if err := kubectl(s.manifest(dir), "apply", "-f", "-"); err != nil {
			return nil, err
		}
	}
	for _, s := range out {
		deadline := time.Now().Add(120 * time.Second)
		for s.direct == "" {
			p, err := sb.Admin.CoreV1().Pods(ns).Get(ctx, s.pod, metav1.GetOptions{})
			if err == nil && sandboxtest.PodReady(p) {
				a, err := sb.PodAddr(p)
				if err != nil {
					return nil, err
				}
				s.direct = net.JoinHostPort(a, strconv.Itoa(s.port))
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("the %s pod is not ready after 2 minutes", s.pod)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if s.workload == "pgbench" {
			// pgbench's tables, made once, straight at the pod.
			h, p, _ := net.SplitHostPort(s.direct)
			if _, err := runClient("pgbench", "-i", "-q", "-s", "1", "-h", h, "-p", p, "-U", "postgres", "postgres"); err != nil {
				return nil, fmt.Errorf("pgbench -i: %w", err)
			}
		}
	}
	return out, nil
}

// stopClientServers deletes the server pods and their data.
func stopClientServers(sb *sandboxtest.Sandbox, ns string, servers []*clientServer) {
	for _, s := range servers {
		exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "-n", ns, "delete", "pod", s.pod, "--wait", "--timeout=60s").Run()
		os.RemoveAll(filepath.Join(os.TempDir(), "kpf-bench-"+s.pod))
	}
}

// clientRun is what one run of a client program did.
type clientRun struct {
	out string
	cpu float64 // the client's own CPU seconds
}

func runClient(name string, args ...string) (clientRun, error) {
	path, err := findProgram(name)
	if err != nil {
		return clientRun{}, err
	}
	cmd := exec.Command(path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	r := clientRun{out: out.String()}
	if cmd.ProcessState != nil {
		r.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	if err != nil {
		return r, fmt.Errorf("%s: %v\n%s", name, err, tailLines(r.out, 10))
	}
	return r, nil
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

var (
	redisCSV   = regexp.MustCompile(`(?m)^"(GET|SET)","([0-9.]+)"`)
	pgbenchTPS = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	pgbenchN   = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	slapSecs   = regexp.MustCompile(`Average number of seconds to run all queries: ([0-9.]+) seconds`)
)

// Sizes of the client runs: ~5-10 s each through a forward.
const (
	redisRequests = 60000
	redisConns    = 50
	pgbenchConns  = 10
	pgbenchTime   = 10 // seconds
	slapConns     = 20
	slapQueries   = 20000
)

// measureClients runs the selected real clients through path p: for each,
// a forward of its server pod, one run of the client, its figure, and the
// CPU per request of the forwarder, the API server, the node agent, the
// client and the server pod.
func measureClients(ctx context.Context, p path, round int, servers []*clientServer, record func(result)) error {
	for _, s := range servers {
		f, err := p.forward(ctx, s.pod, s.port)
		if err != nil {
			return fmt.Errorf("%s: %w", s.workload, err)
		}
		if p.name == "direct" {
			f.addr = s.direct
		}
		err = measureClient(f, p, round, s, record)
		f.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", s.workload, err)
		}
	}
	return nil
}

func measureClient(f *forwarder, p path, round int, s *clientServer, record func(result)) error {
	h, port, _ := net.SplitHostPort(f.addr)
	rec := func(workload, metric string, v float64, unit string) {
		record(result{Round: round, Path: p.name, Workload: workload, Metric: metric, Value: v, Unit: unit})
	}
	// perRequest records where the CPU of n requests went, in µs each.
	perRequest := func(workload string, n float64, client float64, cpu0 map[string]float64, fwd0 float64) {
		cpu := pathCPU()
		us := func(v float64) float64 { return v / n * 1e6 }
		if f.pid() != 0 {
			rec(workload, "cpu-forwarder", us(cpuSeconds(f.pid())-fwd0), "µs/req")
		}
		rec(workload, "cpu-apiserver+node", us(cpu["apiserver"]-cpu0["apiserver"]+cpu["node"]-cpu0["node"]), "µs/req")
		rec(workload, "cpu-apiserver", us(cpu["apiserver"]-cpu0["apiserver"]), "µs/req")
		rec(workload, "cpu-node", us(cpu["node"]-cpu0["node"]), "µs/req")
		rec(workload, "cpu-client", us(client), "µs/req")
		// Everything: the forwarder, the API server, the node, the
		// client, the server in its pod and the kernel. On a machine
		// that the run keeps busy, the request rate is about the CPU
		// there is over this; what it is without the forwarder's share
		// bounds what any forwarder could reach against another.
		rec(workload, "cpu-machine", us(cpu["machine"]-cpu0["machine"]), "µs/req")
	}
	switch s.workload {
	case "redis":
		// A connection first, so that a path that dials its tunnel on
		// first use does not count that in the first test.
		if _, err := runClient("redis-benchmark", "-h", h, "-p", port, "-c", "1", "-n", "100", "-t", "ping", "--csv"); err != nil {
			return err
		}
		for _, test := range []string{"set", "get"} {
			cpu0, fwd0 := pathCPU(), cpuSeconds(f.pid())
			r, err := runClient("redis-benchmark", "-h", h, "-p", port, "-c", strconv.Itoa(redisConns), "-n", strconv.Itoa(redisRequests), "-t", test, "--csv")
			if err != nil {
				return err
			}
			m := redisCSV.FindStringSubmatch(r.out)
			if m == nil {
				return fmt.Errorf("redis-benchmark printed no %s figure:\n%s", test, tailLines(r.out, 10))
			}
			rps, _ := strconv.ParseFloat(m[2], 64)
			w := "redis-" + test
			rec(w, "requests/s", rps, "1/s")
			perRequest(w, redisRequests, r.cpu, cpu0, fwd0)
		}
	case "pgbench":
		cpu0, fwd0 := pathCPU(), cpuSeconds(f.pid())
		r, err := runClient("pgbench", "-S", "-n", "-c", strconv.Itoa(pgbenchConns), "-j", "2", "-T", strconv.Itoa(pgbenchTime), "-h", h, "-p", port, "-U", "postgres", "postgres")
		if err != nil {
			return err
		}
		tps, n := pgbenchTPS.FindStringSubmatch(r.out), pgbenchN.FindStringSubmatch(r.out)
		if tps == nil || n == nil {
			return fmt.Errorf("pgbench printed no figures:\n%s", tailLines(r.out, 10))
		}
		v, _ := strconv.ParseFloat(tps[1], 64)
		count, _ := strconv.ParseFloat(n[1], 64)
		rec("pgbench-S", "transactions/s", v, "1/s")
		perRequest("pgbench-S", count, r.cpu, cpu0, fwd0)
	case "mariadb":
		cpu0, fwd0 := pathCPU(), cpuSeconds(f.pid())
		r, err := runClient("mariadb-slap", "-h", h, "-P", port, "-u", "root", "--concurrency="+strconv.Itoa(slapConns), "--iterations=1",
			"--number-of-queries="+strconv.Itoa(slapQueries), "--auto-generate-sql", "--auto-generate-sql-load-type=read")
		if err != nil {
			return err
		}
		m := slapSecs.FindStringSubmatch(r.out)
		if m == nil {
			return fmt.Errorf("mariadb-slap printed no figure:\n%s", tailLines(r.out, 10))
		}
		secs, _ := strconv.ParseFloat(m[1], 64)
		if secs <= 0 {
			return fmt.Errorf("mariadb-slap ran in %s s: too few queries to measure", m[1])
		}
		rec("mariadb-slap", "queries/s", slapQueries/secs, "1/s")
		perRequest("mariadb-slap", slapQueries, r.cpu, cpu0, fwd0)
	}
	return nil
}

// onlyClients reports whether the workloads are real clients (or the
// start-up) only, so that the bulk pod's forward need not start.
func onlyClients(workloads map[string]bool) bool {
	for w := range workloads {
		switch w {
		case "redis", "pgbench", "mariadb", "startup":
		default:
			return false
		}
	}
	return true
}
