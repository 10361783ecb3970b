package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestTCPCheckFailsWhenNothingListens: a forward to a port nobody listens
// on, with a tcp check, is not healthy: up --wait fails naming the
// refused port, and kpf run does not start its command.
func TestTCPCheckFailsWhenNothingListens(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	k := newKpfCmd(t, sb)
	file := k.write(t, "dead.yaml", fmt.Sprintf(`
forwards:
  - name: dead
    namespace: %s
    target: deployment/api
    ports: [":9999"]
    health: {type: tcp, interval: 1s}
`, ns))
	out, code := k.run(t, "up", "-f", file, "--wait", "--timeout", "20s")
	if code == 0 || !strings.Contains(out, "dead: ") || !strings.Contains(out, "refused the connection to port 9999") {
		t.Errorf("kpf up --wait to a port nobody listens on: exit %d, want a failure naming the refused port\n%s", code, out)
	}
	marker := filepath.Join(k.dir, "marker")
	out, code = k.run(t, "run", "-f", file, "--timeout", "10s", "--", "touch", marker)
	if code == 0 || !strings.Contains(out, "refused the connection to port 9999") {
		t.Errorf("kpf run: exit %d, want a failure naming the refused port\n%s", code, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("kpf run started its command against a dead port:\n%s", out)
	}
}
