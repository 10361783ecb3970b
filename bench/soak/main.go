// The soak (make soak; not in CI): the kpf daemon with 100 forwards over
// three namespaces and two identities, for SOAK (2h by default), while
// connections open and close all the time, deployments roll out every few
// minutes and the API server restarts every 20 minutes. The daemon's RSS,
// goroutines, open files and CPU are sampled every minute; the soak fails
// if any of them grows without bound (a fitted slope, projected over an
// hour, beyond a tolerance) or if a request failed that crossed no fault
// (an API server restart or a rollout). It writes a table
// (docs/soak.md) and a plot made by gnuplot (docs/soak.svg).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

type options struct {
	kpf                  string
	duration, sample     time.Duration
	restartEvery, rollEv time.Duration
	forwards, workers    int
	pace                 time.Duration
	out                  string
}

func main() {
	var o options
	flag.StringVar(&o.kpf, "kpf", "", "the kpf binary")
	flag.DurationVar(&o.duration, "duration", 2*time.Hour, "how long to soak (SOAK)")
	flag.DurationVar(&o.sample, "sample", time.Minute, "how often to sample the daemon")
	flag.DurationVar(&o.restartEvery, "restart-every", 20*time.Minute, "how often to restart the API server")
	flag.DurationVar(&o.rollEv, "rollout-every", 4*time.Minute, "how often a deployment rolls out")
	flag.IntVar(&o.forwards, "forwards", 100, "forwards in all")
	flag.IntVar(&o.workers, "workers", 4, "clients opening connections at once")
	flag.DurationVar(&o.pace, "pace", 100*time.Millisecond, "each client's pause between connections")
	flag.StringVar(&o.out, "out", "../docs", "where soak.md and soak.svg go")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// fault is a window in which requests may fail: an API server restart or
// a rollout, from its start until its end and a grace after.
type fault struct {
	what       string
	start, end time.Time
}

type failure struct {
	at, began time.Time
	addr, err string
}

type sample struct {
	at                   time.Time
	rss                  float64 // MiB
	goroutines, fds, cpu float64 // cpu: seconds of CPU since the last sample, per second
}

type soak struct {
	o       options
	sb      *sandboxtest.Sandbox
	home    string
	mu      sync.Mutex
	faults  []fault
	fails   []failure
	ok      int64
	samples []sample
}

func run(o options) error {
	sb, release, err := sandboxtest.Up()
	if err != nil {
		return err
	}
	defer release()
	dir, err := os.MkdirTemp("", "kpf-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &soak{o: o, sb: sb, home: filepath.Join(dir, "home")}

	// Three namespaces: two of the admin's, and dev's own (the dev user
	// may forward only there). Each runs a 2-pod deployment and a service
	// per forward.
	nss := []string{"kpf-soak-a", "kpf-soak-b", cluster.DevNamespace}
	per := o.forwards / len(nss)
	files := map[string]*strings.Builder{"admin": {}, "dev": {}}
	for _, f := range files {
		f.WriteString("forwards:\n")
	}
	defer cleanup(sb, nss)
	for i, ns := range nss {
		n := per
		if i == len(nss)-1 {
			n = o.forwards - per*(len(nss)-1)
		}
		if err := workload(sb, ns, n); err != nil {
			return err
		}
		who := "admin"
		if ns == cluster.DevNamespace {
			who = "dev"
		}
		for j := range n {
			fmt.Fprintf(files[who], "- {name: %s-s%d, namespace: %s, target: svc/soak-%d, ports: [':80']}\n", ns, j, ns, j)
		}
	}
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	for _, who := range []string{"admin", "dev"} {
		p := filepath.Join(dir, who+".yaml")
		if err := os.WriteFile(p, []byte(files[who].String()), 0o600); err != nil {
			return err
		}
		kc := sb.Kubeconfig(cluster.UserAdmin)
		if who == "dev" {
			kc = sb.Kubeconfig(cluster.UserDev)
		}
		args := []string{"--kubeconfig", kc, "up", "-d", "--wait", "--timeout", "5m", "-f", p, "--metrics-addr", "127.0.0.1:" + strconv.Itoa(metricsPort)}
		if out, err := s.kpf(args...); err != nil {
			return fmt.Errorf("kpf up -d %s: %v\n%s", p, err, out)
		}
	}
	defer s.kpf("down", "--all")
	addrs, pid, err := s.status()
	if err != nil {
		return err
	}
	fmt.Printf("soak: %d forwards in daemon pid %d for %s\n", len(addrs), pid, o.duration)
	// The soak's time starts once every forward is up.
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()

	var wg sync.WaitGroup
	for range o.workers {
		wg.Add(1)
		go func() { defer wg.Done(); s.client(ctx, addrs) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); s.every(ctx, o.rollEv, func(i int) { s.rollout(ctx, nss[i%len(nss)]) }) }()
	go func() { defer wg.Done(); s.every(ctx, o.restartEvery, func(int) { s.restartAPIServer() }) }()
	s.sampleLoop(ctx, pid, metricsPort)
	wg.Wait()
	return s.report()
}

// workload makes the deployment web (2 pods) and services soak-0 ...
// soak-(n-1) in ns.
func workload(sb *sandboxtest.Sandbox, ns string, n int) error {
	exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "create", "namespace", ns).Run()
	var m strings.Builder
	m.WriteString(`apiVersion: apps/v1
kind: Deployment
metadata: {name: soak-web}
spec:
  replicas: 2
  selector: {matchLabels: {app: soak-web}}
  template:
    metadata: {labels: {app: soak-web}}
    spec: {containers: [{name: web, image: kpf.test/http, ports: [{containerPort: 8080}], readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}]}
`)
	for i := range n {
		fmt.Fprintf(&m, "---\napiVersion: v1\nkind: Service\nmetadata: {name: soak-%d, labels: {kpf-soak: \"1\"}}\nspec: {selector: {app: soak-web}, ports: [{port: 80, targetPort: 8080}]}\n", i)
	}
	cmd := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "apply", "-n", ns, "-f", "-")
	cmd.Stdin = strings.NewReader(m.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apply in %s: %v\n%s", ns, err, out)
	}
	out, err := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "rollout", "status", "-n", ns, "deploy/soak-web", "--timeout=180s").CombinedOutput()
	if err != nil {
		return fmt.Errorf("rollout status in %s: %v\n%s", ns, err, out)
	}
	return nil
}

// cleanup deletes what the soak made: its namespaces, and its objects in
// dev's, which others use.
func cleanup(sb *sandboxtest.Sandbox, nss []string) {
	admin := sb.Kubeconfig(cluster.UserAdmin)
	for _, ns := range nss {
		if ns == cluster.DevNamespace {
			exec.Command(sb.Kubectl, "--kubeconfig", admin, "delete", "-n", ns, "deploy/soak-web", "--wait=false").Run()
			exec.Command(sb.Kubectl, "--kubeconfig", admin, "delete", "-n", ns, "svc", "-l", "kpf-soak=1", "--wait=false").Run()
			continue
		}
		exec.Command(sb.Kubectl, "--kubeconfig", admin, "delete", "namespace", ns, "--wait=false").Run()
	}
}

func (s *soak) kpf(args ...string) ([]byte, error) {
	cmd := exec.Command(s.o.kpf, args...)
	cmd.Env = append(os.Environ(), "KPF_HOME="+s.home)
	if args[0] != "--kubeconfig" {
		cmd.Args = append([]string{s.o.kpf, "--kubeconfig", s.sb.Kubeconfig(cluster.UserAdmin)}, args...)
	}
	return cmd.CombinedOutput()
}

// status is every forward's first local address, and the daemon's pid.
func (s *soak) status() ([]string, int, error) {
	out, err := s.kpf("status", "--json")
	if err != nil {
		return nil, 0, fmt.Errorf("kpf status: %v\n%s", err, out)
	}
	var st struct {
		PID      int
		Forwards []struct{ Local []string }
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, 0, err
	}
	var addrs []string
	for _, f := range st.Forwards {
		if len(f.Local) > 0 {
			addrs = append(addrs, f.Local[0])
		}
	}
	return addrs, st.PID, nil
}

// client opens a connection to a random forward, fetches 4 KiB and
// checks them, again and again.
func (s *soak) client(ctx context.Context, addrs []string) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for ctx.Err() == nil {
		addr := addrs[rand.IntN(len(addrs))]
		began := time.Now()
		err := get(ctx, hc, addr)
		s.mu.Lock()
		if err == nil {
			s.ok++
		} else if ctx.Err() == nil {
			s.fails = append(s.fails, failure{at: time.Now(), began: began, addr: addr, err: err.Error()})
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(s.o.pace):
		}
	}
}

func get(ctx context.Context, hc *http.Client, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/bytes/4096", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && (resp.StatusCode != http.StatusOK || n != 4096) {
		err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
	}
	return err
}

// every calls f every d until ctx ends.
func (s *soak) every(ctx context.Context, d time.Duration, f func(i int)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(i)
		}
	}
}

// faultGrace is how long after a fault's end a failure still counts as
// crossing it (new connections work again within it).
const faultGrace = 15 * time.Second

// rolloutGrace is faultGrace for a rollout, whose old pods terminate
// after kubectl rollout status may have answered.
const rolloutGrace = 90 * time.Second

func (s *soak) window(what string, start time.Time, grace time.Duration) {
	s.mu.Lock()
	s.faults = append(s.faults, fault{what, start, time.Now().Add(grace)})
	s.mu.Unlock()
	fmt.Printf("%s %s (%s)\n", time.Now().Format(time.TimeOnly), what, time.Since(start).Round(time.Second))
}

func (s *soak) rollout(ctx context.Context, ns string) {
	start := time.Now()
	admin := s.sb.Kubeconfig(cluster.UserAdmin)
	exec.CommandContext(ctx, s.sb.Kubectl, "--kubeconfig", admin, "rollout", "restart", "-n", ns, "deploy/soak-web").Run()
	exec.CommandContext(ctx, s.sb.Kubectl, "--kubeconfig", admin, "rollout", "status", "-n", ns, "deploy/soak-web", "--timeout=180s").Run()
	// kubectl rollout status may answer before the controller has seen
	// the restart: the old pods end during the next minute or so.
	s.window("rollout of "+ns, start, rolloutGrace)
}

func (s *soak) restartAPIServer() {
	start := time.Now()
	if out, err := exec.Command(s.sb.Bin, "restart", "apiserver").CombinedOutput(); err != nil {
		fmt.Printf("kpf-sandbox restart apiserver: %v\n%s", err, out)
	}
	s.window("API server restart", start, faultGrace)
}

// sampleLoop samples the daemon every o.sample until ctx ends.
func (s *soak) sampleLoop(ctx context.Context, pid, metricsPort int) {
	t := time.NewTicker(s.o.sample)
	defer t.Stop()
	lastCPU, lastAt := cpuSeconds(pid), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		cpu := cpuSeconds(pid)
		sm := sample{at: now, rss: rssMiB(pid), fds: float64(fds(pid)), goroutines: goroutines(metricsPort),
			cpu: (cpu - lastCPU) / now.Sub(lastAt).Seconds()}
		lastCPU, lastAt = cpu, now
		s.mu.Lock()
		s.samples = append(s.samples, sm)
		ok, failed := s.ok, len(s.fails)
		s.mu.Unlock()
		fmt.Printf("%s rss %.1f MiB, goroutines %.0f, fds %.0f, cpu %.1f%%; requests %d ok, %d failed\n",
			now.Format(time.TimeOnly), sm.rss, sm.goroutines, sm.fds, 100*sm.cpu, ok, failed)
	}
}

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return math.NaN()
}

func fds(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// cpuSeconds is the process's user and system CPU time (clock ticks of
// 1/100 s, as Linux reports them).
func cpuSeconds(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

// goroutines reads go_goroutines from the daemon's metrics.
func goroutines(port int) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return math.NaN()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return math.NaN()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// slope fits y = a + b·t (t in hours since the first sample) by least
// squares and returns b, the growth per hour, and its standard error.
func slope(xs []time.Time, ys []float64) (float64, float64) {
	n := float64(len(xs))
	var st, sy, stt, sty float64
	for i, x := range xs {
		t := x.Sub(xs[0]).Hours()
		st += t
		sy += ys[i]
		stt += t * t
		sty += t * ys[i]
	}
	d := n*stt - st*st
	if d == 0 || n < 3 {
		return 0, math.Inf(1)
	}
	b := (n*sty - st*sy) / d
	a := (sy - b*st) / n
	var rss float64
	for i, x := range xs {
		r := ys[i] - a - b*x.Sub(xs[0]).Hours()
		rss += r * r
	}
	return b, math.Sqrt(rss / (n - 2) / (stt - st*st/n))
}

func median(ys []float64) float64 {
	c := append([]float64(nil), ys...)
	sort.Float64s(c)
	return c[len(c)/2]
}

// warmup is how many first samples the fit leaves out: the daemon's
// pools and caches fill in its first minutes.
const warmup = 2

// othersFaults are the restarts of sandbox components the soak did not
// make (another user of the shared sandbox restarted the node or the API
// server): found in the components' logs, whose every start begins with
// "==== TIME kpf-sandbox starting". Its own API server restarts are there
// too, and count once more, harmlessly.
func (s *soak) othersFaults(from time.Time) []fault {
	var out []fault
	for _, c := range []string{"node", "kube-apiserver", "etcd"} {
		b, err := os.ReadFile(s.sb.Dir.LogFile(c))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 4 || f[0] != "====" || f[2] != "kpf-sandbox" || f[3] != "starting" {
				continue
			}
			at, err := time.Parse(time.RFC3339, f[1])
			if err != nil || at.Before(from) {
				continue
			}
			// A node restart kills its containers: pods start again.
			out = append(out, fault{c + " restarted", at.Add(-10 * time.Second), at.Add(rolloutGrace)})
		}
	}
	return out
}

func (s *soak) report() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) > 0 {
		s.faults = append(s.faults, s.othersFaults(s.samples[0].at.Add(-s.o.sample))...)
	}
	var problems []string
	// A failure crossed a fault when its request overlapped one's window.
	crossed := 0
	for _, f := range s.fails {
		hit := false
		for _, w := range s.faults {
			if f.began.Before(w.end) && f.at.After(w.start.Add(-time.Second)) {
				hit = true
			}
		}
		if hit {
			crossed++
			continue
		}
		problems = append(problems, fmt.Sprintf("a request to %s failed at %s, crossing no fault: %s", f.addr, f.at.Format(time.TimeOnly), f.err))
	}
	if len(s.samples) < warmup+3 {
		return fmt.Errorf("only %d samples: soak longer than %s", len(s.samples), time.Duration(warmup+3)*s.o.sample)
	}
	fit := s.samples[warmup:]
	var at []time.Time
	cols := map[string][]float64{}
	for _, sm := range fit {
		at = append(at, sm.at)
		cols["rss"] = append(cols["rss"], sm.rss)
		cols["goroutines"] = append(cols["goroutines"], sm.goroutines)
		cols["fds"] = append(cols["fds"], sm.fds)
		cols["cpu"] = append(cols["cpu"], 100*sm.cpu)
	}
	// Tolerance: growth per hour of 10% of the median, and at least a
	// floor (an allocator's arena, a few connections in flight).
	type metric struct {
		key, name, unit string
		floor           float64
		bounded         bool
	}
	metrics := []metric{{"rss", "RSS", "MiB", 8, true}, {"goroutines", "goroutines", "", 20, true}, {"fds", "open files", "", 10, true}, {"cpu", "CPU", "%", 0, false}}
	var table strings.Builder
	fmt.Fprintf(&table, "| | first | last | min | max | median | fitted slope per hour (± 2σ) | tolerance per hour | verdict |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, m := range metrics {
		ys := cols[m.key]
		b, se := slope(at, ys)
		tol := math.Max(0.1*median(ys), m.floor)
		verdict := "flat"
		switch {
		case !m.bounded:
			verdict = "(not judged)"
		case b-2*se > tol:
			// Growth beyond the tolerance even at the low end of the
			// fit's 2-sigma range: not a garbage collector's sawtooth
			// sampled a few times.
			verdict = "GROWS"
			problems = append(problems, fmt.Sprintf("%s grows %.1f%s an hour (tolerance %.1f)", m.name, b, m.unit, tol))
		}
		mn, mx := ys[0], ys[0]
		for _, y := range ys {
			mn, mx = math.Min(mn, y), math.Max(mx, y)
		}
		fmt.Fprintf(&table, "| %s (%s) | %.1f | %.1f | %.1f | %.1f | %.1f | %+.2f ± %.2f | %.1f | %s |\n", m.name, unitOr(m.unit), ys[0], ys[len(ys)-1], mn, mx, median(ys), b, 2*se, tol, verdict)
	}
	restarts, rollouts := 0, 0
	for _, w := range s.faults {
		switch {
		case strings.HasPrefix(w.what, "API"):
			restarts++
		case strings.HasPrefix(w.what, "rollout"):
			rollouts++
		}
	}
	start, end := s.samples[0].at, s.samples[len(s.samples)-1].at
	verdict := "passed"
	if len(problems) > 0 {
		verdict = "FAILED: " + strings.Join(problems, "; ")
	}
	md := fmt.Sprintf(`# Soak

The last run of `+"`make soak`"+` (`+"`SOAK=%s`"+`): the kpf daemon with %d forwards over
three namespaces and two identities (the sandbox's admin in two, dev in its
own), %d clients each opening a connection (4 KiB, checked) every %s, a
rollout every %s (%d in all), the API server restarted every %s (%d in all).
Samples every %s from %s to %s UTC; the first %d are left out of the fit
(warm-up). A metric fails when its fitted slope, less twice its standard
error, is above its tolerance (10%% of its median per hour, and at least a
floor: 8 MiB, 20 goroutines, 10 files). The sandbox is shared: restarts of
its node, API server or etcd that the soak did not make (found in their
logs) count as faults too.

Requests: %d succeeded, %d failed, each of them during a fault (an API
server restart, to %s after its end, or a rollout, to %s after); failed crossing no
fault: %d. Verdict: **%s**.

%s
![RSS, goroutines and open files of the daemon over the soak](soak.svg)
`, s.o.duration, s.o.forwards, s.o.workers, s.o.pace, s.o.rollEv, rollouts, s.o.restartEvery, restarts,
		s.o.sample, start.UTC().Format(time.DateTime), end.UTC().Format(time.DateTime), warmup,
		s.ok, crossed, faultGrace, rolloutGrace, len(s.fails)-crossed, verdict, table.String())
	if err := os.WriteFile(filepath.Join(s.o.out, "soak.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := s.plot(); err != nil {
		return err
	}
	fmt.Print(md)
	if len(problems) > 0 {
		return errors.New(verdict)
	}
	return nil
}

func unitOr(u string) string {
	if u == "" {
		return "count"
	}
	return u
}

// plot draws RSS, goroutines and open files over time with gnuplot.
func (s *soak) plot() error {
	dat, err := os.CreateTemp("", "soak-*.dat")
	if err != nil {
		return err
	}
	defer os.Remove(dat.Name())
	for _, sm := range s.samples {
		fmt.Fprintf(dat, "%.2f %.2f %.0f %.0f\n", sm.at.Sub(s.samples[0].at).Minutes(), sm.rss, sm.goroutines, sm.fds)
	}
	dat.Close()
	script := fmt.Sprintf(`set terminal svg size 900,600 dynamic font "sans,11"
set output %q
set multiplot layout 3,1 title "kpf daemon, %d forwards, %s soak"
set grid
set xlabel "minutes"
set ylabel "RSS (MiB)"
plot %q using 1:2 with linespoints notitle
set ylabel "goroutines"
plot %q using 1:3 with linespoints notitle
set ylabel "open files"
plot %q using 1:4 with linespoints notitle
unset multiplot
`, filepath.Join(s.o.out, "soak.svg"), s.o.forwards, s.o.duration, dat.Name(), dat.Name(), dat.Name())
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %v\n%s", err, out)
	}
	return nil
}
