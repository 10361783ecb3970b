package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestNodeFlagsRefuseBadValues: the node settings are checked before
// anything is stopped, and an error names the flag, the value and the
// choices.
func TestNodeFlagsRefuseBadValues(t *testing.T) {
	sb := sandboxtest.Get(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"restart", "node", "--node-topology", "new"}, []string{"--node-topology", `"new"`, "cri", "legacy"}},
		{[]string{"restart", "node", "--streaming-connection-idle-timeout", "soon"}, []string{"--streaming-connection-idle-timeout", `"soon"`, "5m"}},
		{[]string{"restart", "apiserver", "--node-topology", "legacy"}, []string{"restart node", "apiserver"}},
		{[]string{"up", "--node-topology", "x"}, []string{"--node-topology", `"x"`}},
	} {
		out, err := exec.Command(sb.Bin, tc.args...).CombinedOutput()
		if err == nil {
			t.Errorf("kpf-sandbox %s succeeded:\n%s", strings.Join(tc.args, " "), out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("kpf-sandbox %s: %s; want it to say %s", strings.Join(tc.args, " "), strings.TrimSpace(string(out)), w)
			}
		}
	}
}
