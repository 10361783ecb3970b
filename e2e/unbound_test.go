package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestAForwardSaysWhichAddressOfLocalhostItCouldNotBind: another process
// holds [::1]:PORT; a forward of localhost:PORT listens on 127.0.0.1 only
// (kubectl's rule), and says so: kpf forward on stderr, a daemon forward
// in kpf status (the table and --json) and in the daemon's log, naming the
// address and why. Before, the daemon's forward was silent, and a client
// that resolved localhost to ::1 reached the other process.
func TestAForwardSaysWhichAddressOfLocalhostItCouldNotBind(t *testing.T) {
	busy, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	if ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		t.Skipf("127.0.0.1:%d is taken too: %v", port, err)
	} else {
		ln.Close()
	}
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	want := fmt.Sprintf("not listening on [::1]:%d: address already in use (another process holds port %d; pick another local port, or use :8080 for a free one)", port, port)

	t.Run("kpf forward", func(t *testing.T) {
		p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "forward", "-n", ns, "deployment/web", fmt.Sprintf("%d:8080", port)))
		p.WaitLine(t, "^"+regexp.QuoteMeta(fmt.Sprintf("Warning: %s; the port listens on 127.0.0.1:%d only", want, port))+"$", 60*time.Second)
	})

	t.Run("daemon", func(t *testing.T) {
		k := newKpfCmd(t, sb)
		k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: web, namespace: %s, target: deployment/web, ports: [\"%d:8080\"]}\n", ns, port))
		if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s"); code != 0 {
			t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
		}
		out, code := k.run(t, "status", "--json")
		if code != 0 {
			t.Fatalf("kpf status --json: exit %d\n%s", code, out)
		}
		var st struct {
			Forwards []struct {
				Name         string
				Local        []string
				NotListening []string `json:"notListening"`
			}
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, out)
		}
		if len(st.Forwards) != 1 || len(st.Forwards[0].NotListening) != 1 || st.Forwards[0].NotListening[0] != want {
			t.Errorf("kpf status --json: %+v, want notListening [%q]", st.Forwards, want)
		}
		if len(st.Forwards) == 1 && strings.Join(st.Forwards[0].Local, ",") != fmt.Sprintf("127.0.0.1:%d", port) {
			t.Errorf("listening on %v, want 127.0.0.1:%d only", st.Forwards[0].Local, port)
		}
		table, _ := k.run(t, "status")
		if short := fmt.Sprintf("not listening on [::1]:%d: address already in use", port); !strings.Contains(table, short) {
			t.Errorf("kpf status lacks %q:\n%s", short, table)
		}
		log, _ := os.ReadFile(filepath.Join(k.home, "daemon.log"))
		if !strings.Contains(string(log), want) {
			t.Errorf("the daemon's log lacks %q:\n%s", want, log)
		}
	})
}
