package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// shell is an interactive shell in a pseudo-terminal, with kpf's
// completion loaded.
type shell struct {
	tty io.ReadWriteCloser
	mu  sync.Mutex
	out bytes.Buffer
}

func startShell(t *testing.T, name string, env []string) *shell {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.Symlink(kpfBin, filepath.Join(bin, "kpf"))
	var c *exec.Cmd
	var setup string
	switch name {
	case "bash":
		c = exec.Command("bash", "--norc", "--noprofile", "-i")
		setup = "source /usr/share/bash-completion/bash_completion; source <(kpf completion bash)\n"
	case "zsh":
		c = exec.Command("zsh", "-f", "-i")
		setup = "autoload -U compinit; compinit -u; source <(kpf completion zsh)\n"
	}
	c.Env = append(os.Environ(), env...)
	c.Env = append(c.Env, "PATH="+bin+string(filepath.ListSeparator)+os.Getenv("PATH"), "PS1=$ ", "PROMPT=$ ", "TERM=dumb", "HOME="+dir)
	tty, err := pty.StartWithSize(c, &pty.Winsize{Rows: 40, Cols: 200})
	if err != nil {
		t.Fatal(err)
	}
	s := &shell{tty: tty}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			s.mu.Lock()
			s.out.Write(buf[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Process.Kill(); tty.Close(); c.Wait() })
	// Ready once it has run what came before: the marker is computed, so
	// the echo of the typed line does not count.
	io.WriteString(tty, setup+"echo ready-$((40+2))\n")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.text(), "ready-42") {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start:\n%q", name, s.text())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

func (s *shell) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// complete types line and TABs (twice: bash lists on the second), and
// returns what the shell printed after it, once every word of want is
// there or timeout passes.
func (s *shell) complete(t *testing.T, line string, want []string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	s.mu.Lock()
	from := s.out.Len()
	s.mu.Unlock()
	start := time.Now()
	io.WriteString(s.tty, line+"\t\t")
	var got string
	for time.Since(start) < timeout {
		s.mu.Lock()
		got = s.out.String()[from:]
		s.mu.Unlock()
		all := len(want) > 0
		for _, w := range want {
			all = all && strings.Contains(got, w)
		}
		if all {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return got, time.Since(start)
}

// TAB completes pods, services and workloads of the namespace, the ports
// of the chosen target and the daemon's forwards, in bash and zsh; with the
// API server paused, completion gives up within about a second.
func TestShellCompletionFromTheCluster(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "catalog", 1)
	sb.Apply(t, ns, httpApp("orders", 1))
	pods := sb.ReadyPods(t, ns, "app=orders", 1)
	env := []string{"KUBECONFIG=" + sb.Kubeconfig(cluster.UserAdmin)}
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: shop-api, namespace: %s, target: svc/catalog, ports: [\":80\"]}\n", ns))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s"); code != 0 {
		t.Fatalf("up -d: %d\n%s", code, out)
	}
	env = append(env, "KPF_HOME="+k.home)
	for _, sh := range []string{"bash", "zsh"} {
		t.Run(sh, func(t *testing.T) {
			cases := []struct {
				line string
				want []string
			}{
				{"kpf forward -n " + ns + " svc/", []string{"svc/catalog", "svc/orders"}},
				{"kpf forward -n " + ns + " deployment/", []string{"deployment/catalog", "deployment/orders"}},
				{"kpf forward -n " + ns + " pod/" + pods[0].Name + " ", []string{"8080", ":main"}},
				{"kpf down ", []string{"shop-api"}},
				{"kpf doctor -n " + ns + " svc/", []string{"svc/catalog", "svc/orders"}},
				{"kpf rbac -n " + ns + " svc/catalog deployment/", []string{"deployment/catalog", "deployment/orders"}},
			}
			for _, c := range cases {
				s := startShell(t, sh, env) // one each: no completion still running
				got, _ := s.complete(t, c.line, c.want, 10*time.Second)
				for _, w := range c.want {
					if !strings.Contains(got, w) {
						t.Errorf("%s: %q<TAB> offered no %q:\n%q", sh, c.line, w, got)
					}
				}
			}
		})
	}
	// A paused API server: completion (what the shells run on TAB) ends
	// within 1.5 s, offering nothing.
	fault(t, sb, "pause", "apiserver")
	defer fault(t, sb, "resume", "apiserver")
	start := time.Now()
	out, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "__complete", "forward", "-n", ns, "svc/").CombinedOutput()
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("completion with the API server paused took %s: %v\n%s", d, err, out)
	}
}
