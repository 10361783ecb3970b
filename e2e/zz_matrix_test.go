package e2e

// The fault matrix (issue 26): each fault × each way kpf carries
// connections, with traffic flowing through the fault, measured against
// kpf's promise: a connection that does not cross the failure loses no
// byte; one that does ends with an error the client sees, never hangs; new
// connections work again within a bound after the fault ends; kpf says what
// happened in a line or two, and never needs a restart.
//
// KPF_FAULTS=full runs every cell with the faults' full durations (make
// faults; KPF_FAULTS_REPORT=FILE writes the table into FILE between its
// markers); unset or short, a few cells with shorter faults run in make e2e;
// off skips the matrix; cells:FAULT|MODE,... runs those cells only, at
// full durations (KPF_FAULTS='cells:blackhole|udp'). It disturbs the API server and the node agent, so it
// runs last (Go runs test files in name order).

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/pattern"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// livenessBound is the longest kpf may take to notice a tunnel whose
	// path went silent: a ping every 15 s (its default), the tunnel closed
	// after two intervals with a ping out and nothing read. The API server
	// liveness probe usually notices sooner (15 s of silence).
	livenessBound = 45 * time.Second
	// hangAfter is every read's and write's deadline in the matrix: well
	// above the liveness bound, so that an operation that reaches it hung.
	hangAfter = livenessBound + 10*time.Second
	// recoveryBound is how soon after a fault ends a new connection must
	// work.
	recoveryBound = 10 * time.Second
	// chatter is how many lines kpf may print about one fault, besides
	// its lines about single connections: what happened and why, the
	// forward's state going down and back up, the API server answering
	// again; not a line per retry.
	chatter = 5
)

// matrixApp is one pod serving the three kinds of traffic: HTTP (kpf.test/http,
// request/response and checked downloads), a byte-checked stream
// (kpf.test/bulk's ECHO) and UDP (kpf.test/udp-echo).
const matrixApp = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - {name: web, image: kpf.test/http, ports: [{name: web, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: web}, periodSeconds: 1}}
      - {name: bulk, image: kpf.test/bulk, ports: [{name: bulk, containerPort: 9000}]}
      - {name: udp, image: kpf.test/udp-echo, ports: [{name: dns, containerPort: 5300, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  selector: {app: app}
  ports: [{name: web, port: 8080, targetPort: web}, {name: bulk, port: 9000, targetPort: bulk}]
`

// endpoint is how a cell's traffic reaches the pod through one mode of kpf.
type endpoint struct {
	get   func(n int, timeout time.Duration) error      // one request on a new connection: n checked bytes
	dial  func(timeout time.Duration) (net.Conn, error) // a new connection to kpf.test/bulk
	udp   string                                        // the /udp forward's local address (udp mode)
	lines func() []string                               // what kpf printed so far
	pid   func() int                                    // the kpf process (the daemon's for a daemon forward)
	// restart starts the daemon again after it was killed (daemon mode).
	restart func()
}

// mode is one way kpf carries connections; start runs it through fp.
type mode struct {
	name  string
	start func(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint
}

var matrixModes = []mode{
	{"forward/websocket", func(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint {
		return forwardMode(t, fp, ns, "websocket")
	}},
	{"forward/spdy", func(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint {
		return forwardMode(t, fp, ns, "spdy")
	}},
	{"daemon", daemonMode},
	{"proxy", proxyMode},
	{"udp", udpMode},
}

func forwardMode(t *testing.T, fp *faultPath, ns, transport string) endpoint {
	f := forwarder{name: "kpf", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", fp.kubeconfig, "forward"}, args...)
	}}
	p, ls := f.start(t, 2, "--transport", transport, "--address", "127.0.0.1", "-n", ns, "deployment/app", ":8080", ":9000")
	web, bulk := ls[0].Addr, ls[1].Addr
	if ls[0].Remote != "8080" {
		web, bulk = bulk, web
	}
	return endpoint{
		get:   func(n int, timeout time.Duration) error { return getChecked(direct, web, n, timeout) },
		dial:  func(timeout time.Duration) (net.Conn, error) { return net.DialTimeout("tcp", bulk, timeout) },
		lines: func() []string { return strings.Split(p.Output(), "\n") },
		pid:   func() int { return p.Cmd.Process.Pid },
	}
}

func daemonMode(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint {
	k := newKpfCmd(t, sb)
	k.kubeconfig = fp.kubeconfig
	web, bulk := freePort(t), freePort(t)
	file := k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: app, namespace: %s, target: deployment/app, ports: [\"%d:8080\", \"%d:9000\"]}\n", ns, web, bulk))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	pid := k.status(t).PID
	var pidMu sync.Mutex
	log := filepath.Join(k.home, "daemon.log")
	return endpoint{
		get: func(n int, timeout time.Duration) error {
			return getChecked(direct, fmt.Sprintf("127.0.0.1:%d", web), n, timeout)
		},
		dial: func(timeout time.Duration) (net.Conn, error) {
			return net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", bulk), timeout)
		},
		lines: func() []string {
			b, _ := os.ReadFile(log)
			return strings.Split(string(b), "\n")
		},
		pid: func() int { pidMu.Lock(); defer pidMu.Unlock(); return pid },
		restart: func() {
			// As a service manager would: kpf daemon, in the same home,
			// its output appended to the same log.
			lf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				t.Error(err)
				return
			}
			defer lf.Close()
			cmd := k.cmd("daemon")
			cmd.Stdout, cmd.Stderr = lf, lf
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				t.Error(err)
				return
			}
			pidMu.Lock()
			pid = cmd.Process.Pid
			pidMu.Unlock()
			go cmd.Wait()
			t.Cleanup(func() { cmd.Process.Kill() })
		},
	}
}

func proxyMode(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint {
	p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", fp.kubeconfig, "proxy", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-n", ns))
	addr := p.WaitLine(t, `^Proxying from (\S+) `, 30*time.Second)[1]
	px, _ := url.Parse("socks5h://" + addr)
	tr := &http.Transport{Proxy: http.ProxyURL(px)}
	return endpoint{
		get: func(n int, timeout time.Duration) error { return getChecked(tr, "app."+ns+":8080", n, timeout) },
		dial: func(timeout time.Duration) (net.Conn, error) {
			return workload.Dial("socks5h://"+addr+"/app."+ns+":9000", timeout)
		},
		lines: func() []string { return strings.Split(p.Output(), "\n") },
		pid:   func() int { return p.Cmd.Process.Pid },
	}
}

func udpMode(t *testing.T, sb *sandboxtest.Sandbox, fp *faultPath, ns string) endpoint {
	needPodNetwork(t)
	p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", fp.kubeconfig, "forward", "--relay-image", matrixRelayImage(t, sb), "-n", ns, "deployment/app", ":5300/udp"))
	addr := p.WaitLine(t, `^Forwarding from (127\.0\.0\.1:\d+) -> 5300/udp$`, 150*time.Second)[1]
	return endpoint{
		udp:   addr,
		lines: func() []string { return strings.Split(p.Output(), "\n") },
		pid:   func() int { return p.Cmd.Process.Pid },
	}
}

var (
	matrixRelayOnce sync.Once
	matrixRelayRef  string
)

// matrixRelayImage is the relay image of the kpf under test, under a
// reference of its own: the sandbox is shared, and another kpf's tests
// load theirs under the default reference (the version's, the same for
// every development build), which a run as long as the matrix's would
// otherwise pick up halfway (a relay of another protocol resetting every
// stream: seen in a make faults run).
func matrixRelayImage(t *testing.T, sb *sandboxtest.Sandbox) string {
	t.Helper()
	matrixRelayOnce.Do(func() {
		// One reference per kpf binary (its path): a run after this one
		// replaces its entry in the sandbox's image list, not adds one.
		// (kpf.test/ names the sandbox's built-in images only.)
		ref := fmt.Sprintf("ghcr.io/kpf-dev/kpf:matrix-%x", sha256.Sum256([]byte(kpfBin)))[:len("ghcr.io/kpf-dev/kpf:matrix-")+12]
		if out, err := exec.Command(sb.Bin, "image", "add", ref, kpfBin).CombinedOutput(); err != nil {
			t.Fatalf("kpf-sandbox image add: %v\n%s", err, out)
		}
		matrixRelayRef = ref
	})
	if matrixRelayRef == "" {
		t.Fatal("no relay image for the matrix")
	}
	return matrixRelayRef
}

// direct is an HTTP transport that takes no proxy from the environment.
var direct = &http.Transport{}

// getChecked downloads n pattern bytes from kpf.test/http at addr on a new
// connection, checking each byte, within timeout.
func getChecked(rt http.RoundTripper, addr string, n int, timeout time.Duration) error {
	tr := rt.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	c := &http.Client{Timeout: timeout, Transport: tr}
	resp, err := c.Get(fmt.Sprintf("http://%s/bytes/%d", addr, n))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	var v pattern.Verifier
	got, err := io.Copy(&v, resp.Body)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", got, err)
	}
	if got != int64(n) {
		return fmt.Errorf("got %d bytes, want %d", got, n)
	}
	return nil
}

// errCorrupt marks bytes that arrived but were wrong: never allowed.
var errCorrupt = errors.New("corrupt bytes")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// matrixFault is one row of the matrix.
type matrixFault struct {
	name string
	// destructive: connections open during the fault cross it and may end
	// (with an error); otherwise none may.
	destructive bool
	// quiet: no traffic during the fault (kpf itself is stopped: what
	// matters is what it does after).
	quiet bool
	// hold is how long the fault lasts (full run; short runs scale it).
	hold, shortHold time.Duration
	// modes: the modes it applies to (nil: all).
	modes []string
	// inject starts the fault on one cell (its path, its process) and
	// returns what ends it; global faults (the cluster's) use global.
	inject func(c *cell) func()
	global func(sb *sandboxtest.Sandbox) (func() error, error)
}

func sandboxFault(args ...string) func(sb *sandboxtest.Sandbox) error {
	return func(sb *sandboxtest.Sandbox) error {
		out, err := exec.Command(sb.Bin, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kpf-sandbox %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
}

func toxicFault(ts ...toxic) func(c *cell) func() {
	return func(c *cell) func() {
		c.fp.add(ts...)
		return func() { c.fp.remove(ts...) }
	}
}

var matrixFaults = []matrixFault{
	{name: "latency 100±20 ms", hold: 30 * time.Second, shortHold: 15 * time.Second,
		inject: toxicFault(both("latency", map[string]any{"latency": 100, "jitter": 20})...)},
	{name: "bandwidth 256 KB/s", hold: 30 * time.Second, shortHold: 15 * time.Second,
		inject: toxicFault(both("bandwidth", map[string]any{"rate": 256})...)},
	{name: "slow close 5 s", hold: 30 * time.Second, shortHold: 15 * time.Second,
		inject: toxicFault(both("slow_close", map[string]any{"delay": 5000})...)},
	{name: "idle cut 20 s", hold: 50 * time.Second, shortHold: 50 * time.Second,
		inject: toxicFault(both("idle_cut", map[string]any{"idle": 20000})...)},
	{name: "reset mid-stream", destructive: true, hold: 10 * time.Second, shortHold: 5 * time.Second,
		inject: toxicFault(both("reset_peer", map[string]any{"timeout": 0})...)},
	{name: "blackhole", destructive: true, hold: 60 * time.Second, shortHold: 60 * time.Second,
		inject: toxicFault(both("timeout", map[string]any{"timeout": 0})...)},
	{name: "API server address moved", destructive: true,
		inject: func(c *cell) func() { c.fp.move(); return func() {} }},
	{name: "API server restarted", destructive: true,
		global: func(sb *sandboxtest.Sandbox) (func() error, error) {
			return func() error { return nil }, sandboxFault("restart", "apiserver")(sb)
		}},
	{name: "API server paused", destructive: true, hold: 30 * time.Second, shortHold: 20 * time.Second,
		global: func(sb *sandboxtest.Sandbox) (func() error, error) {
			return func() error { return sandboxFault("resume", "apiserver")(sb) }, sandboxFault("pause", "apiserver")(sb)
		}},
	{name: "node agent restarted", destructive: true,
		global: func(sb *sandboxtest.Sandbox) (func() error, error) {
			return func() error { return nil }, sandboxFault("restart", "node")(sb)
		}},
	{name: "target container killed", destructive: true /* global: set in TestFaultMatrix, which knows the pod */},
	{name: "kpf stopped (SIGSTOP)", destructive: true, quiet: true, hold: 2 * time.Minute, shortHold: 20 * time.Second,
		inject: func(c *cell) func() {
			pid := c.ep.pid()
			syscall.Kill(pid, syscall.SIGSTOP)
			return func() { syscall.Kill(pid, syscall.SIGCONT) }
		}},
	{name: "daemon killed (SIGKILL)", destructive: true, modes: []string{"daemon"},
		inject: func(c *cell) func() {
			pid := c.ep.pid()
			syscall.Kill(pid, syscall.SIGKILL)
			// Gone before it is started again, as after a crash.
			for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil && !zombieProc(pid) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			c.ep.restart()
			return func() {}
		}},
}

// killContainers kills the processes of pod ns/name's containers, as an
// OOM kill or a crash does; the node agent starts them again.
func killContainers(ns, name string) error {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	killed := 0
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		env := strings.Split(string(b), "\x00")
		if slices.Contains(env, "KPF_POD_NAME="+name) && slices.Contains(env, "KPF_POD_NAMESPACE="+ns) {
			pid, _ := strconv.Atoi(strings.Split(f, "/")[2])
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	if killed == 0 {
		return fmt.Errorf("no process of pod %s/%s found to kill", ns, name)
	}
	return nil
}

// restarts is how many times pod ns/name's containers restarted.
func restarts(sb *sandboxtest.Sandbox, ns, name string) int32 {
	p, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return 0
	}
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// podBackAfterKill waits until pod ns/name has restarted its containers
// (more restarts than before) and is ready again.
func podBackAfterKill(sb *sandboxtest.Sandbox, ns, name string, before int32) error {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		p, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && sandboxtest.PodReady(p) {
			var n int32
			ready := true
			for _, cs := range p.Status.ContainerStatuses {
				n += cs.RestartCount
				ready = ready && cs.Ready
			}
			if ready && n > before {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("pod %s/%s not ready again 90 s after its containers were killed", ns, name)
}

// componentStarts is where the API server's and the node agent's logs end
// at a row's start: the sandbox is shared, and another test restarting a
// component under a row (each start writes a "==== ... starting" line)
// makes its cells unjudgeable.
type componentStarts struct {
	sb   *sandboxtest.Sandbox
	from map[string]int64
}

func startsFrom(sb *sandboxtest.Sandbox) componentStarts {
	cs := componentStarts{sb: sb, from: map[string]int64{}}
	for _, c := range []string{cluster.APIServer, cluster.Node} {
		if fi, err := os.Stat(sb.Dir.LogFile(c)); err == nil {
			cs.from[c] = fi.Size()
		}
	}
	return cs
}

// others says which starts since the row began the row did not make
// itself ("" if none).
func (cs componentStarts) others(fault string) string {
	own := map[string]int{cluster.APIServer: 0, cluster.Node: 0}
	switch fault {
	case "API server restarted":
		own[cluster.APIServer] = 1
	case "node agent restarted":
		own[cluster.Node] = 1
	}
	var out []string
	for c, from := range cs.from {
		b, err := os.ReadFile(cs.sb.Dir.LogFile(c))
		if err != nil || int64(len(b)) < from {
			continue
		}
		var at []string
		for _, l := range strings.Split(string(b[from:]), "\n") {
			if strings.HasPrefix(l, "==== ") && strings.Contains(l, " starting ") {
				at = append(at, strings.Fields(l)[1])
			}
		}
		if len(at) > own[c] {
			out = append(out, fmt.Sprintf("%s started %d times during the row (at %s), %d by the row", c, len(at), strings.Join(at, ", "), own[c]))
		}
	}
	return strings.Join(out, "; ")
}

// cell is one fault × mode: its traffic and what was measured.
type cell struct {
	t     *testing.T
	fp    *faultPath
	ep    endpoint
	fault matrixFault
	mode  string

	quiet     atomic.Bool // kpf is stopped: traffic waits
	quietEnds atomic.Int64

	mu                               sync.Mutex
	streamsOK, streamsEnded, hung    int
	corrupt                          int
	lost                             int64 // bytes lost on connections that did not cross the failure
	reqOK, reqFailed                 int
	recovery                         time.Duration // -1: none within the bound's window
	firstTry                         string        // the first new connection after the fault, when it failed
	lines                            []string      // kpf's news about the fault
	connLines                        []string      // its lines about single connections
	notes                            []string
	disturbed                        string // what else restarted the cluster's parts during the row
	datagramsSent, datagramsAnswered int
}

func (c *cell) note(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// waitQuiet blocks while kpf is stopped; it reports whether it did.
func (c *cell) waitQuiet(stop <-chan struct{}) bool {
	waited := false
	for c.quiet.Load() {
		waited = true
		select {
		case <-stop:
			return waited
		case <-time.After(50 * time.Millisecond):
		}
	}
	return waited
}

// stoppedDuring reports whether kpf was stopped at any time since from.
func (c *cell) stoppedDuring(from time.Time) bool {
	return c.quiet.Load() || c.quietEnds.Load() > from.UnixNano()
}

// stream runs a byte-checked echo stream through kpf.test/bulk: pattern
// chunks written at a steady pace (or, idle, one before the fault and one
// after), each echo checked, until stop; then it half-closes and checks
// that every byte came back.
func (c *cell) stream(idle bool, stop <-chan struct{}, done func()) {
	defer done()
	conn, err := c.ep.dial(10 * time.Second)
	if err != nil {
		c.note("stream: dial: %v", err)
		c.mu.Lock()
		c.streamsEnded++
		c.mu.Unlock()
		return
	}
	defer conn.Close()
	var sent, echoed uint64
	var v pattern.Verifier
	buf := make([]byte, 16<<10)
	in := make([]byte, 16<<10)
	end := func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case errors.Is(err, errCorrupt):
			c.corrupt++
			c.notes = append(c.notes, fmt.Sprintf("stream: %v", err))
		case isTimeout(err):
			c.hung++
			c.notes = append(c.notes, fmt.Sprintf("stream hung %s after %d bytes", hangAfter, echoed))
		case err != nil:
			c.streamsEnded++
			if !c.fault.destructive {
				c.lost += int64(sent - echoed)
				c.notes = append(c.notes, fmt.Sprintf("stream ended: %v", err))
			}
		default:
			c.streamsOK++
		}
	}
	readEcho := func(n int) error {
		for got := 0; got < n; {
			start := time.Now()
			conn.SetReadDeadline(start.Add(hangAfter))
			k, err := conn.Read(in[:n-got])
			if k > 0 {
				if _, verr := v.Write(in[:k]); verr != nil {
					return fmt.Errorf("%w: %v", errCorrupt, verr)
				}
				got += k
				echoed += uint64(k)
			}
			if err != nil {
				if isTimeout(err) && c.stoppedDuring(start) {
					continue // kpf itself was stopped meanwhile
				}
				if err == io.EOF {
					return fmt.Errorf("the stream ended (EOF) with %d bytes not echoed", sent-echoed)
				}
				return err
			}
		}
		return nil
	}
	send := func() error {
		pattern.Fill(buf, sent)
		conn.SetWriteDeadline(time.Now().Add(hangAfter))
		if _, err := conn.Write(buf); err != nil {
			return err
		}
		sent += uint64(len(buf))
		return readEcho(len(buf))
	}
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "ECHO\n"); err != nil {
		end(err)
		return
	}
	if err := send(); err != nil {
		end(err)
		return
	}
	if idle {
		<-stop
	} else {
		for {
			select {
			case <-stop:
			case <-time.After(20 * time.Millisecond):
				c.waitQuiet(stop)
				if err := send(); err != nil {
					end(err)
					return
				}
				continue
			}
			break
		}
	}
	// One more chunk (the idle stream's first since the fault), then
	// the end: every byte must come back, then EOF.
	if err := send(); err != nil {
		end(err)
		return
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(hangAfter))
	if n, err := conn.Read(in); n > 0 || err != io.EOF {
		end(fmt.Errorf("after the half-close: %d more bytes, %v", n, err))
		return
	}
	end(nil)
}

// requests runs checked requests one after another, each on a new
// connection, until stop.
func (c *cell) requests(stop <-chan struct{}, done func()) {
	defer done()
	for {
		select {
		case <-stop:
			return
		default:
		}
		if c.waitQuiet(stop) {
			continue
		}
		start := time.Now()
		err := c.ep.get(64<<10, hangAfter)
		c.mu.Lock()
		switch {
		case err == nil:
			c.reqOK++
		case isTimeout(err) && !c.stoppedDuring(start):
			c.hung++
			c.notes = append(c.notes, fmt.Sprintf("request hung %s", hangAfter))
		case strings.Contains(err.Error(), "pattern"):
			c.corrupt++
			c.notes = append(c.notes, fmt.Sprintf("request: %v", err))
		case isTimeout(err):
			// kpf was stopped under it: not counted.
		default:
			c.reqFailed++
			if !c.fault.destructive {
				c.notes = append(c.notes, fmt.Sprintf("request failed: %v", err))
			}
		}
		c.mu.Unlock()
		if err != nil {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// datagrams sends a checked datagram every 50 ms through the /udp forward
// and reads the echoes, until stop.
func (c *cell) datagrams(stop <-chan struct{}, done func()) {
	defer done()
	conn, err := net.Dial("udp", c.ep.udp)
	if err != nil {
		c.note("udp: %v", err)
		return
	}
	defer conn.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			conn.SetReadDeadline(time.Now().Add(time.Second))
			n, err := conn.Read(b)
			if err != nil {
				if isTimeout(err) {
					select {
					case <-stop:
						return
					default:
						continue
					}
				}
				return
			}
			seq, _ := strconv.ParseUint(string(b[:8]), 16, 64)
			want := make([]byte, 1024)
			pattern.Fill(want, seq*1024)
			c.mu.Lock()
			if n != 8+1024 || string(b[8:n]) != string(want) {
				c.corrupt++
			} else {
				c.datagramsAnswered++
			}
			c.mu.Unlock()
		}
	}()
	for seq := uint64(0); ; seq++ {
		select {
		case <-stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		msg := make([]byte, 8+1024)
		copy(msg, fmt.Sprintf("%08x", seq))
		pattern.Fill(msg[8:], seq*1024)
		conn.Write(msg)
		c.mu.Lock()
		c.datagramsSent++
		c.mu.Unlock()
	}
}

// probe is one new connection through kpf: a request, or a datagram
// echoed within echoWait.
func (c *cell) probe(echoWait time.Duration) error {
	if c.ep.udp == "" {
		return c.ep.get(64<<10, recoveryBound)
	}
	conn, err := net.Dial("udp", c.ep.udp)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.Write([]byte("probe"))
	conn.SetReadDeadline(time.Now().Add(echoWait))
	b := make([]byte, 64)
	n, err := conn.Read(b)
	if err != nil {
		return err
	}
	if string(b[:n]) != "probe" {
		return fmt.Errorf("%w: echo %q", errCorrupt, b[:n])
	}
	return nil
}

// recover measures how long after the fault's end a new connection first
// works.
func (c *cell) recover(ended time.Time) {
	var last error
	for first := true; time.Since(ended) < recoveryBound+20*time.Second; first = false {
		// A datagram has no connection to fail: the promise for the
		// first one after kpf slept is that it arrives (late, while
		// kpf finds its tunnels dead and its relay gone), not lost;
		// its echo is waited for as long as recovery may take.
		// Otherwise each try waits a second and the next is a new
		// datagram.
		echoWait := time.Second
		if first && c.fault.quiet {
			echoWait = recoveryBound
		}
		err := c.probe(echoWait)
		if err == nil {
			c.mu.Lock()
			c.recovery = time.Since(ended)
			c.mu.Unlock()
			return
		}
		last = err
		if first {
			c.mu.Lock()
			c.firstTry = err.Error()
			c.mu.Unlock()
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.note("no new connection worked %s after the fault: %v", recoveryBound+20*time.Second, last)
}

// perConnection marks kpf's lines about one connection (its failure, its
// wait): a line per connection that met the fault, not a retry; the
// matrix counts them apart.
var perConnection = []string{"Handling connection for", `msg="connection failed"`, `msg="waiting for a tunnel"`,
	`msg="waiting for a ready pod"`, `msg="every pod refused a new connection`}

// said is what kpf printed from line index from on: its news about the
// fault, and its lines about single connections.
func said(lines []string, from int) (news, conns []string) {
	for _, l := range lines[min(from, len(lines)):] {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if slices.ContainsFunc(perConnection, func(p string) bool { return strings.Contains(l, p) }) {
			conns = append(conns, l)
			continue
		}
		news = append(news, l)
	}
	return news, conns
}

// verdict judges the cell against the promise.
func (c *cell) verdict() string {
	var bad []string
	if c.corrupt > 0 {
		bad = append(bad, fmt.Sprintf("%d corrupt", c.corrupt))
	}
	if c.hung > 0 {
		bad = append(bad, fmt.Sprintf("%d hung", c.hung))
	}
	if !c.fault.destructive && (c.streamsEnded > 0 || c.reqFailed > 0) {
		bad = append(bad, "connections ended by a fault that must not end them")
	}
	if c.recovery < 0 {
		bad = append(bad, "no recovery")
	} else if c.recovery > recoveryBound {
		bad = append(bad, fmt.Sprintf("recovery %.1fs > %s", c.recovery.Seconds(), recoveryBound))
	}
	if c.fault.quiet && c.firstTry != "" {
		bad = append(bad, "first connection after resume failed")
	}
	if len(c.lines) > chatter {
		bad = append(bad, fmt.Sprintf("%d lines", len(c.lines)))
	}
	if len(bad) == 0 {
		return "ok"
	}
	if c.disturbed != "" {
		return "not judged: " + c.disturbed + " (" + strings.Join(bad, "; ") + ")"
	}
	return "FAIL: " + strings.Join(bad, "; ")
}

// matrixRun is which cells run, and how long faults last.
type matrixRun struct {
	full  bool
	cells func(fault, mode string) bool
}

// shortCells is the CI subset: a network fault that must not end
// connections, one that must end them promptly, and a process fault, on
// the two transports and the daemon.
var shortCells = map[string][]string{
	"latency 100±20 ms": {"forward/websocket", "daemon"},
	"reset mid-stream":  {"forward/spdy", "daemon"},
	"blackhole":         {"forward/websocket"},
}

func matrixRunFromEnv(t *testing.T) matrixRun {
	switch v := os.Getenv("KPF_FAULTS"); v {
	case "full":
		return matrixRun{full: true, cells: func(string, string) bool { return true }}
	case "", "short":
		return matrixRun{cells: func(f, m string) bool { return slices.Contains(shortCells[f], m) }}
	case "off":
		t.Skip("KPF_FAULTS=off")
	default:
		// cells:FAULT|MODE,...: those cells only, at full durations (to
		// check one cell without the whole matrix).
		if list, ok := strings.CutPrefix(v, "cells:"); ok {
			want := strings.Split(list, ",")
			return matrixRun{full: true, cells: func(f, m string) bool { return slices.Contains(want, f+"|"+m) }}
		}
		t.Fatalf("KPF_FAULTS=%q: want full, short, off or cells:FAULT|MODE,...", v)
	}
	return matrixRun{}
}

// TestFaultMatrix runs the matrix (see the top of this file) and writes
// its table to $KPF_FAULTS_REPORT when set. A row is one fault: its cells
// (one per mode) are set up one after another, then carry traffic, take
// the fault and recover side by side, so that a fault of the whole cluster
// is made once for all of them.
func TestFaultMatrix(t *testing.T) {
	run := matrixRunFromEnv(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, matrixApp)
	sb.ReadyPods(t, ns, "app=app", 1)
	var results []*cell
	for _, f := range matrixFaults {
		var modes []mode
		for _, m := range matrixModes {
			if (f.modes == nil || slices.Contains(f.modes, m.name)) && run.cells(f.name, m.name) {
				modes = append(modes, m)
			}
		}
		if len(modes) == 0 {
			continue
		}
		hold := f.hold
		if !run.full {
			hold = f.shortHold
		}
		t.Run(f.name, func(t *testing.T) {
			// Every row starts from a ready pod.
			pod := sb.ReadyPods(t, ns, "app=app", 1)[0].Name
			if f.name == "target container killed" {
				f.global = func(sb *sandboxtest.Sandbox) (func() error, error) {
					// The fault lasts until the containers run and the pod
					// is ready again (the node agent restarts them after a
					// back-off, as a kubelet does): recovery counts from
					// there.
					before := restarts(sb, ns, pod)
					return func() error { return podBackAfterKill(sb, ns, pod, before) }, killContainers(ns, pod)
				}
			}
			starts := startsFrom(sb)
			var cells []*cell
			for _, m := range modes {
				c := &cell{t: t, fault: f, mode: m.name, recovery: -1}
				results = append(results, c)
				c.fp = newFaultPath(t, sb)
				c.ep = m.start(t, sb, c.fp, ns)
				if err := c.probe(time.Second); err != nil {
					t.Fatalf("%s: no connection before the fault: %v", m.name, err)
				}
				cells = append(cells, c)
			}
			stop := make(chan struct{})
			var traffic sync.WaitGroup
			for _, c := range cells {
				if c.ep.udp != "" {
					traffic.Add(1)
					go c.datagrams(stop, traffic.Done)
				} else {
					traffic.Add(3)
					go c.stream(false, stop, traffic.Done)
					go c.stream(true, stop, traffic.Done)
					go c.requests(stop, traffic.Done)
				}
			}
			var stopOnce sync.Once
			stopTraffic := func() { stopOnce.Do(func() { close(stop) }); traffic.Wait() }
			defer stopTraffic()
			// Traffic flows through every cell before the fault.
			sandboxtest.WaitFor(t, 30*time.Second, "traffic before the fault", func() (bool, error) {
				for _, c := range cells {
					c.mu.Lock()
					ok := c.reqOK >= 3 || c.datagramsAnswered >= 10
					c.mu.Unlock()
					if !ok {
						return false, nil
					}
				}
				return true, nil
			})
			from := make([]int, len(cells))
			for i, c := range cells {
				from[i] = len(c.ep.lines())
			}
			var faulted sync.WaitGroup
			if f.global != nil {
				end, err := f.global(sb)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(hold) // the fault's length is what is tested
				if err := end(); err != nil {
					t.Fatal(err)
				}
				ended := time.Now()
				for _, c := range cells {
					faulted.Add(1)
					go func() { defer faulted.Done(); c.recover(ended) }()
				}
			} else {
				for _, c := range cells {
					faulted.Add(1)
					go func() {
						defer faulted.Done()
						if f.quiet {
							c.quiet.Store(true)
						}
						end := f.inject(c)
						time.Sleep(hold) // the fault's length is what is tested
						end()
						ended := time.Now()
						if f.quiet {
							c.quietEnds.Store(ended.UnixNano())
							c.quiet.Store(false)
						}
						c.recover(ended)
					}()
				}
			}
			faulted.Wait()
			stopTraffic()
			if d := starts.others(f.name); d != "" {
				for _, c := range cells {
					c.disturbed = d
				}
			}
			for i, c := range cells {
				c.lines, c.connLines = said(c.ep.lines(), from[i])
				v := c.verdict()
				t.Logf("%s × %s: %s", f.name, c.mode, v)
				for _, l := range c.lines {
					t.Logf("  kpf: %s", l)
				}
				for _, n := range c.notes {
					t.Logf("  note: %s", n)
				}
				if reason, ok := knownFailures[f.name+"|"+c.mode]; v != "ok" && !ok && c.disturbed == "" {
					t.Errorf("%s × %s: %s", f.name, c.mode, v)
				} else if ok && v == "ok" {
					t.Logf("listed as a known failure (%s) but passed: take it off the list", reason)
				}
			}
		})
	}
	table := matrixTable(results, run.full)
	t.Logf("the matrix:\n%s", table)
	if path := os.Getenv("KPF_FAULTS_REPORT"); path != "" {
		if err := writeBetweenMarkers(path, table); err != nil {
			t.Error(err)
		}
	}
}

// knownFailures are cells that fail the promise today, each with why (and
// docs/reliability.md says the same): the matrix reports them without
// failing. A cell that starts passing says so in the log.
var knownFailures = map[string]string{}

func matrixTable(results []*cell, full bool) string {
	order := map[string]int{}
	for i, f := range matrixFaults {
		order[f.name] = i * 10
	}
	for i, m := range matrixModes {
		order["mode:"+m.name] = i
	}
	slices.SortFunc(results, func(a, b *cell) int {
		return (order[a.fault.name] + order["mode:"+a.mode]) - (order[b.fault.name] + order["mode:"+b.mode])
	})
	var b strings.Builder
	run := "short (make e2e)"
	if full {
		run = "full (make faults)"
	}
	fmt.Fprintf(&b, "Run: %s, %s, %s.\n\n", run, time.Now().UTC().Format("2006-01-02 15:04 MST"), kpfVersion())
	b.WriteString("| fault | mode | streams ok / ended | lost bytes | hung | requests ok / failed | recovery | kpf said | verdict |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, c := range results {
		traffic := fmt.Sprintf("%d / %d", c.reqOK, c.reqFailed)
		streams := fmt.Sprintf("%d / %d", c.streamsOK, c.streamsEnded)
		if c.ep.udp != "" {
			traffic = fmt.Sprintf("%d / %d datagrams answered", c.datagramsAnswered, c.datagramsSent)
			streams = "(udp)"
		}
		rec := "none"
		if c.recovery >= 0 {
			rec = fmt.Sprintf("%.1f s", c.recovery.Seconds())
		}
		saidCol := fmt.Sprintf("%d lines (+%d about single connections)", len(c.lines), len(c.connLines))
		if len(c.lines) > 0 {
			saidCol += ": `" + strings.ReplaceAll(shorten(c.lines[0], 100), "|", "\\|") + "`"
		}
		v := c.verdict()
		if reason, ok := knownFailures[c.fault.name+"|"+c.mode]; ok && v != "ok" {
			v += " (known: " + reason + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %s | %s | %s | %s |\n", c.fault.name, c.mode, streams, c.lost, c.hung, traffic, rec, saidCol, v)
	}
	return b.String()
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func kpfVersion() string {
	out, err := exec.Command(kpfBin, "version").Output()
	if err != nil {
		return "?"
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Scan()
	return strings.TrimSpace(sc.Text())
}

const (
	matrixBegin = "<!-- fault matrix: begin (make faults writes this) -->"
	matrixEnd   = "<!-- fault matrix: end -->"
)

// writeBetweenMarkers replaces what lies between the matrix markers of the
// file at path with table.
func writeBetweenMarkers(path, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, matrixBegin), strings.Index(s, matrixEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %q ... %q markers to write the table between", path, matrixBegin, matrixEnd)
	}
	s = s[:i+len(matrixBegin)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
