package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/sandbox/node"
	"github.com/kpf-dev/kpf/sandbox/upstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cluster is a sandbox cluster in a state folder.
type Cluster struct {
	dir   Dir
	state *State
	// Self is the kpf-sandbox executable that runs the node agent.
	Self string
	Out  io.Writer // progress for the user
}

// Open loads the sandbox in dir (which may not exist yet).
func Open(dir Dir, self string, out io.Writer) (*Cluster, error) {
	if err := os.MkdirAll(string(dir), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(string(dir), 0o700); err != nil {
		return nil, err
	}
	st, err := dir.Load()
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = io.Discard
	}
	return &Cluster{dir: dir, state: st, Self: self, Out: out}, nil
}

// Dir is the state folder.
func (c *Cluster) Dir() Dir { return c.dir }

// lock serialises what starts or stops components (up, down, restart)
// across processes: two kpf-sandbox up run at once (two test binaries, two
// terminals) would each start an etcd on the same data folder. The state
// is read again once the lock is held, since the holder before may have
// changed it. The lock is not up.lock, which sandboxtest holds around its
// own kpf-sandbox up.
func (c *Cluster) lock() (unlock func(), err error) {
	f, err := os.OpenFile(c.dir.path("components.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	st, err := c.dir.Load()
	if err != nil {
		f.Close()
		return nil, err
	}
	c.state = st
	return func() { f.Close() }, nil
}

// State returns the current recorded state.
func (c *Cluster) State() *State { return c.state }

// Bin returns the path of an upstream binary (etcd, kubectl, ...).
func (c *Cluster) Bin(name string) string { return upstream.Bin(c.state.Bin).Path(name) }

// Up starts whatever is not running and waits until the node is Ready. It is
// idempotent: with everything running it only checks health. Node settings
// given (non-nil) replace the recorded ones; a running node agent whose
// settings differ is restarted.
func (c *Cluster) Up(ctx context.Context, bin upstream.Bin, node func(*NodeSettings)) error {
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	start := time.Now()
	c.state.Bin = string(bin)
	if node != nil {
		node(&c.state.Node)
		if p := c.state.Procs[Node]; p.Alive() && (len(p.Argv) == 0 || !slices.Equal(p.Argv[1:], c.argv(Node)[1:])) {
			if err := c.stop(Node, 3*time.Second); err != nil {
				return err
			}
		}
	}
	if err := c.allocatePorts(); err != nil {
		return err
	}
	if err := c.dir.Save(c.state); err != nil {
		return err
	}
	for _, d := range []string{"logs", "etcd", "node"} {
		if err := os.MkdirAll(c.dir.path(d), 0o700); err != nil {
			return err
		}
	}
	if err := c.writePKI(); err != nil {
		return err
	}
	if _, err := c.writeAuditPolicy(); err != nil {
		return err
	}
	for _, name := range Order {
		if err := c.ensure(ctx, name); err != nil {
			return err
		}
		if name == APIServer {
			if err := c.bootstrap(ctx); err != nil {
				return fmt.Errorf("create sandbox RBAC: %w", err)
			}
		}
	}
	if err := c.waitNodeReady(ctx); err != nil {
		return err
	}
	fmt.Fprintf(c.Out, "sandbox ready in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

func (c *Cluster) allocatePorts() error {
	p := &c.state.Ports
	for _, port := range []*int{&p.EtcdClient, &p.EtcdPeer, &p.APIServer, &p.Kubelet} {
		if *port != 0 {
			continue
		}
		n, err := freePort()
		if err != nil {
			return err
		}
		*port = n
	}
	if c.state.AddrPrefix == 0 {
		// A second octet of its own, so that two sandboxes on one machine do
		// not hand out the same pod addresses.
		c.state.AddrPrefix = byte(64 + rand.IntN(128))
	}
	return nil
}

// ensure starts a component unless it runs, then waits until it is healthy.
func (c *Cluster) ensure(ctx context.Context, name string) error {
	if !c.state.Procs[name].Alive() {
		if err := c.start(name); err != nil {
			return err
		}
	}
	return c.waitHealthy(ctx, name)
}

func (c *Cluster) argv(name string) []string {
	p := c.state.Ports
	url := func(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }
	switch name {
	case Etcd:
		return []string{c.Bin("etcd"),
			"--name=sandbox",
			"--data-dir=" + c.dir.path("etcd"),
			"--listen-client-urls=" + url(p.EtcdClient),
			"--advertise-client-urls=" + url(p.EtcdClient),
			"--listen-peer-urls=" + url(p.EtcdPeer),
			"--initial-advertise-peer-urls=" + url(p.EtcdPeer),
			"--initial-cluster=sandbox=" + url(p.EtcdPeer),
			"--unsafe-no-fsync=true", // a test cluster: speed over durability
			"--log-level=warn",
		}
	case APIServer:
		pki := c.pkiFile
		return []string{c.Bin("kube-apiserver"),
			"--etcd-servers=" + url(p.EtcdClient),
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(p.APIServer),
			"--tls-cert-file=" + pki("apiserver.crt"),
			"--tls-private-key-file=" + pki("apiserver.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
			"--kubelet-certificate-authority=" + pki("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + pki("sa.pub"),
			"--service-account-signing-key-file=" + pki("sa.key"),
			"--service-cluster-ip-range=" + node.ServiceCIDR,
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--endpoint-reconciler-type=none",
			"--audit-policy-file=" + c.dir.path("audit-policy.yaml"),
			"--audit-log-path=" + c.dir.AuditLog(),
			"--audit-log-maxsize=50",
			"--profiling=false",
			"--cert-dir=" + c.dir.path("pki"),
		}
	case ControllerManager:
		pki := c.pkiFile
		return []string{c.Bin("kube-controller-manager"),
			"--kubeconfig=" + c.dir.Kubeconfig("controller-manager"),
			"--secure-port=0",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki("sa.key"),
			"--root-ca-file=" + pki("ca.crt"),
			"--cluster-signing-cert-file=" + pki("ca.crt"),
			"--cluster-signing-key-file=" + pki("ca.key"),
			"--controllers=*",
		}
	case Node:
		return append([]string{c.Self, "node", "--state-dir=" + string(c.dir)}, c.state.Node.args()...)
	}
	panic("unknown component " + name)
}

// start runs a component detached from this process, in its own session,
// with its output in logs/NAME.log, and records it.
func (c *Cluster) start(name string) error {
	argv := c.argv(name)
	logf, err := os.OpenFile(c.dir.LogFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n==== %s kpf-sandbox starting %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = string(c.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	st, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		return err
	}
	c.state.Procs[name] = ProcInfo{PID: cmd.Process.Pid, StartTime: st, Argv: argv}
	// Reap it if it exits while this process still runs, so Alive sees that.
	go cmd.Wait()
	return c.dir.Save(c.state)
}

// waitHealthy polls the component's health until it answers, or fails with
// the tail of its log if it died or did not answer in time.
func (c *Cluster) waitHealthy(ctx context.Context, name string) error {
	timeout := 60 * time.Second
	if name == Node {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if !c.state.Procs[name].Alive() {
			return fmt.Errorf("%s exited; its log ends:\n%s", name, tail(c.dir.LogFile(name), 25))
		}
		if last = c.healthy(ctx, name); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after %s: %v; its log ends:\n%s", name, timeout, last, tail(c.dir.LogFile(name), 25))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) healthy(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	switch name {
	case Etcd:
		return httpOK(ctx, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/health", c.state.Ports.EtcdClient))
	case APIServer:
		hc, err := c.adminHTTP()
		if err != nil {
			return err
		}
		return httpOK(ctx, hc, c.APIServerURL()+"/readyz")
	case ControllerManager:
		// Ready once its service account controller made the default one:
		// pods cannot be created before that.
		cs, err := c.Client(UserAdmin)
		if err != nil {
			return err
		}
		_, err = cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	case Node:
		hc, err := c.adminHTTP()
		if err != nil {
			return err
		}
		return httpOK(ctx, hc, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.state.Ports.Kubelet))
	}
	return nil
}

// NodeGet reads a path of the node's kubelet API (/metrics, /pods) as the
// cluster admin. (The API server's node proxy refuses the node's loopback
// address.)
func (c *Cluster) NodeGet(ctx context.Context, path string) ([]byte, error) {
	hc, err := c.adminHTTP()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", c.state.Ports.Kubelet, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s on the node: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, err
}

func (c *Cluster) adminHTTP() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(c.pkiFile("user-admin.crt"), c.pkiFile("user-admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(c.pkiFile("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool,
	}}}, nil
}

func httpOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	cs, err := c.Client(UserAdmin)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready after 30s (last error: %v); node agent log ends:\n%s", NodeName, err, tail(c.dir.LogFile(Node), 25))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Down stops every recorded process, newest first: SIGTERM, then SIGKILL
// after 10 s. It stops exactly the processes it started, by PID and start
// time, and the containers the node agent recorded.
func (c *Cluster) Down() error {
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	for i := len(Order) - 1; i >= 0; i-- {
		name := Order[i]
		if err := c.stop(name, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	killRecordedContainers(c.dir)
	return errors.Join(errs...)
}

// stop sends SIGTERM and waits up to grace before SIGKILL.
func (c *Cluster) stop(name string, grace time.Duration) error {
	p, ok := c.state.Procs[name]
	if !ok {
		return nil
	}
	if p.Alive() {
		syscall.Kill(p.PID, syscall.SIGCONT) // a paused API server cannot act on TERM
		syscall.Kill(p.PID, syscall.SIGTERM)
		deadline := time.Now().Add(grace)
		for p.Alive() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if p.Alive() {
			syscall.Kill(p.PID, syscall.SIGKILL)
			for p.Alive() {
				time.Sleep(20 * time.Millisecond)
			}
		}
		fmt.Fprintf(c.Out, "stopped %s (pid %d)\n", name, p.PID)
	}
	delete(c.state.Procs, name)
	return c.dir.Save(c.state)
}

// Restart stops and starts one component and waits until it is healthy.
// The API server's graceful shutdown can take many seconds with hijacked
// streams open; a restart allows it 3 s, as a crash-and-restart would.
//
// Components that died meanwhile are started again, as the kubelet or
// systemd of a real control plane would: kube-controller-manager exits
// when the API server goes away while it is still starting its controllers.
//
// For the node, settings (if non-nil) change the recorded node settings
// first, and the node agent starts with them.
func (c *Cluster) Restart(ctx context.Context, name string, node func(*NodeSettings)) error {
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if node != nil {
		if name != Node {
			return fmt.Errorf("node settings are for restart node, not %s", name)
		}
		node(&c.state.Node)
		if err := c.dir.Save(c.state); err != nil {
			return err
		}
	}
	if err := c.stop(name, 3*time.Second); err != nil {
		return err
	}
	if err := c.ensure(ctx, name); err != nil {
		return err
	}
	for _, other := range Order {
		if err := c.ensure(ctx, other); err != nil {
			return err
		}
	}
	return nil
}

// Pause freezes a component with SIGSTOP; Resume thaws it with SIGCONT.
func (c *Cluster) Pause(name string) error  { return c.signal(name, syscall.SIGSTOP) }
func (c *Cluster) Resume(name string) error { return c.signal(name, syscall.SIGCONT) }

func (c *Cluster) signal(name string, sig syscall.Signal) error {
	p, ok := c.state.Procs[name]
	if !ok || !p.Alive() {
		return fmt.Errorf("%s is not running (run kpf-sandbox up)", name)
	}
	return signalProc(p, sig)
}

// Running reports whether every component runs.
func (c *Cluster) Running() bool {
	for _, name := range Order {
		if !c.state.Procs[name].Alive() {
			return false
		}
	}
	return true
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
