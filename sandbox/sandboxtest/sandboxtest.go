// Package sandboxtest lets end-to-end tests use the sandbox cluster: TestMain
// calls Main, which starts the sandbox once per test binary or reuses one
// that runs, and tests call Get for clients, kubeconfigs and helpers that
// wait on conditions rather than sleep.
//
// Several test binaries may share one sandbox at once (go test ./... runs
// packages in parallel): each holds a shared lock on it while it runs, and
// the last one out stops it, if a test binary started it.
package sandboxtest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Sandbox is a running sandbox cluster.
type Sandbox struct {
	Dir cluster.Dir
	// Bin is the kpf-sandbox executable.
	Bin string
	// Kubectl is the sandbox-built kubectl (the current release).
	Kubectl string
	// Admin is a clientset with cluster-admin rights.
	Admin kubernetes.Interface
	// APIServer is the API server's URL.
	APIServer string
}

// Kubeconfig returns the kubeconfig of admin, dev, viewer or nobody.
func (s *Sandbox) Kubeconfig(user string) string { return s.Dir.Kubeconfig(user) }

var (
	current  *Sandbox
	afterAll []func(*Sandbox)
)

// AfterAll registers f to run after every test of the binary, before the
// sandbox is released: for objects shared by several tests.
func AfterAll(f func(*Sandbox)) { afterAll = append(afterAll, f) }

// Main runs the tests of a package against the sandbox, and exits.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("KPF_E2E") == "skip" {
		fmt.Fprintln(os.Stderr, "sandboxtest: KPF_E2E=skip: not starting the sandbox")
		return m.Run()
	}
	sb, release, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandboxtest:", err)
		return 1
	}
	current = sb
	code := m.Run()
	for _, f := range afterAll {
		f(sb)
	}
	release()
	return code
}

// Get returns the sandbox that Main started; it skips the test when
// KPF_E2E=skip, and fails it when TestMain does not call Main.
func Get(t testing.TB) *Sandbox {
	t.Helper()
	if os.Getenv("KPF_E2E") == "skip" {
		t.Skip("KPF_E2E=skip")
	}
	if current == nil {
		t.Fatal("sandboxtest.Get: TestMain must call sandboxtest.Main(m)")
	}
	return current
}

// Up makes sure a sandbox runs, as Main does, for programs that are not
// tests (the benchmark). Call release when done: it stops the sandbox if
// this call started it and nobody else uses it.
func Up() (*Sandbox, func(), error) { return start() }

func start() (*Sandbox, func(), error) {
	bin, err := sandboxBinary()
	if err != nil {
		return nil, nil, err
	}
	dir, err := cluster.DefaultDir()
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(string(dir), 0o700); err != nil {
		return nil, nil, err
	}
	users, err := os.OpenFile(filepath.Join(string(dir), "users.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, err
	}
	// Shared while this binary uses the sandbox; a binary stopping it holds
	// it exclusively, so a new user waits for that to finish first.
	if err := syscall.Flock(int(users.Fd()), syscall.LOCK_SH); err != nil {
		return nil, nil, err
	}
	marker := filepath.Join(string(dir), "started-by-tests")
	c, err := cluster.Open(dir, bin, nil)
	if err != nil {
		return nil, nil, err
	}
	upLock, err := os.OpenFile(filepath.Join(string(dir), "up.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, err
	}
	syscall.Flock(int(upLock.Fd()), syscall.LOCK_EX)
	if !c.Running() {
		os.WriteFile(marker, nil, 0o600)
		fmt.Fprintf(os.Stderr, "sandboxtest: starting the sandbox in %s\n", dir)
		cmd := exec.Command(bin, "up")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			upLock.Close()
			return nil, nil, fmt.Errorf("kpf-sandbox up: %w", err)
		}
	}
	upLock.Close()
	if c, err = cluster.Open(dir, bin, nil); err != nil {
		return nil, nil, err
	}
	admin, err := c.Client(cluster.UserAdmin)
	if err != nil {
		return nil, nil, err
	}
	sb := &Sandbox{Dir: dir, Bin: bin, Kubectl: c.Bin("kubectl"), Admin: admin, APIServer: c.APIServerURL()}
	release := func() {
		defer users.Close()
		if syscall.Flock(int(users.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			return // another test binary still uses it
		}
		if _, err := os.Stat(marker); err != nil || os.Getenv("KPF_SANDBOX_KEEP") != "" {
			return // a developer's sandbox, or asked to keep it
		}
		os.Remove(marker)
		cmd := exec.Command(bin, "down")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "sandboxtest: kpf-sandbox down:", err)
		}
	}
	return sb, release, nil
}

// sandboxBinary is $KPF_SANDBOX_BIN, or kpf-sandbox built from this module.
func sandboxBinary() (string, error) {
	if b := os.Getenv("KPF_SANDBOX_BIN"); b != "" {
		return filepath.Abs(b)
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the sandbox module: set KPF_SANDBOX_BIN")
	}
	modDir := filepath.Dir(filepath.Dir(file))
	out := filepath.Join(os.TempDir(), fmt.Sprintf("kpf-sandbox-test-%d", os.Getuid()))
	if err := os.MkdirAll(out, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(out, "kpf-sandbox")
	cmd := exec.Command("go", "build", "-o", bin+".tmp", "./cmd/kpf-sandbox")
	cmd.Dir = modDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kpf-sandbox: %v\n%s", err, b)
	}
	return bin, os.Rename(bin+".tmp", bin)
}

// Namespace creates a namespace for the test and deletes it afterwards.
func (s *Sandbox) Namespace(t testing.TB) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(name, "-") + fmt.Sprintf("-%04x", rand.IntN(1<<16))
	_, err := s.Admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		s.Admin.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	s.NamespaceReady(t, name)
	return name
}

// NamespaceReady waits until pods can be created in a new namespace: the
// ServiceAccount admission refuses them until the controller-manager has
// made the namespace's default service account, which right after the
// sandbox starts takes a moment.
func (s *Sandbox) NamespaceReady(t testing.TB, name string) {
	t.Helper()
	WaitFor(t, 60*time.Second, "the default service account of "+name, func() (bool, error) {
		_, err := s.Admin.CoreV1().ServiceAccounts(name).Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// Kubectl runs the sandbox's kubectl as admin and returns its output.
func (s *Sandbox) KubectlRun(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(s.Kubectl, append([]string{"--kubeconfig", s.Kubeconfig(cluster.UserAdmin)}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Apply applies a manifest in namespace ns with the sandbox's kubectl.
func (s *Sandbox) Apply(t testing.TB, ns, manifest string) {
	t.Helper()
	cmd := exec.Command(s.Kubectl, "--kubeconfig", s.Kubeconfig(cluster.UserAdmin), "apply", "-n", ns, "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// WaitFor polls cond every 50 ms until it is true, failing the test with
// what after timeout. cond's error is reported with the failure.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ReadyPods waits until exactly n pods match selector in ns and are Ready,
// and returns them.
func (s *Sandbox) ReadyPods(t testing.TB, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	WaitFor(t, 60*time.Second, fmt.Sprintf("%d ready pods %q in %s", n, selector, ns), func() (bool, error) {
		list, err := s.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && PodReady(&p) {
				pods = append(pods, p)
			}
		}
		return len(pods) == n && len(list.Items) == n, nil
	})
	return pods
}

// PodReady reports the pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodAddr is where this machine reaches a pod's processes: its pod IP on
// the node's pod network (a bridge to the pods' network namespaces), else
// the 127.P.x.y address it binds for pod IP 198.18.x.y.
func (s *Sandbox) PodAddr(p *corev1.Pod) (string, error) {
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !netip.MustParsePrefix("198.18.0.0/16").Contains(ip) {
		return "", fmt.Errorf("pod %s has podIP %q, want one in 198.18.0.0/16", p.Name, p.Status.PodIP)
	}
	if _, err := net.InterfaceByName("kpfsb0"); err == nil {
		return ip.String(), nil // the node's pod network: pods are reached at their IPs
	}
	c, err := cluster.Open(s.Dir, s.Bin, nil)
	if err != nil {
		return "", err
	}
	b := ip.As4()
	return fmt.Sprintf("127.%d.%d.%d", c.State().AddrPrefix, b[2], b[3]), nil
}
