package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// listening is one "Forwarding from ADDR:PORT -> REMOTE" line.
type listening struct {
	Addr   string // host:port as printed
	Remote string
}

var forwardingLine = regexp.MustCompile(`^Forwarding from (\S+) -> (\d+)$`)

// forwarder runs kpf forward or kubectl port-forward with the admin
// kubeconfig (unless args name another) and waits until it listens on
// every wanted line.
type forwarder struct {
	name string
	argv func(args ...string) []string
	env  []string
}

func kpf(sb *sandboxtest.Sandbox) forwarder {
	return forwarder{name: "kpf", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "forward"}, args...)
	}}
}

func kubectl(sb *sandboxtest.Sandbox) forwarder {
	return forwarder{name: "kubectl", argv: func(args ...string) []string {
		return append([]string{sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "port-forward"}, args...)
	}}
}

// start runs the forwarder and returns once it printed want Forwarding lines.
func (f forwarder) start(t *testing.T, want int, args ...string) (*sandboxtest.Proc, []listening) {
	t.Helper()
	argv := f.argv(args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), f.env...)
	p := sandboxtest.Start(t, cmd)
	var ls []listening
	deadline := time.Now().Add(60 * time.Second)
	for len(ls) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s printed %d Forwarding lines, want %d:\n%s", f.name, len(ls), want, p.Output())
		}
		p.WaitLine(t, `^Forwarding from `, time.Until(deadline))
		ls = ls[:0]
		for _, line := range strings.Split(p.Output(), "\n") {
			if m := forwardingLine.FindStringSubmatch(line); m != nil {
				ls = append(ls, listening{Addr: m[1], Remote: m[2]})
			}
		}
		if len(ls) < want {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, ls
}

// runWithin runs cmd to completion and returns its combined output,
// failing the test if it has not exited within timeout.
func runWithin(t *testing.T, cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	t.Helper()
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not exit within %s:\n%s", strings.Join(cmd.Args, " "), timeout, out)
	}
	return out, err
}

// run runs the forwarder to completion (it is expected to fail fast).
func (f forwarder) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	argv := f.argv(args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), f.env...)
	out, err := runWithin(t, cmd, 60*time.Second)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// servedBy asks a kpf.test/http pod behind addr for its name.
func servedBy(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET http://%s/: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var pod, ns string
	if _, err := fmt.Sscanf(string(b), "pod %s namespace %s", &pod, &ns); err != nil {
		t.Fatalf("GET http://%s/ answered %q", addr, b)
	}
	return pod
}

// freePort returns a port free on 127.0.0.1 and ::1 now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port))
		l.Close()
		if err == nil {
			l6.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}
