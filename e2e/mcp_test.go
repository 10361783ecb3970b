package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// inspector runs the MCP inspector's command-line mode (a real MCP client
// nobody here wrote; scripts/deps.sh mcp installs it, pinned, in
// e2e/mcp) against kpf mcp, one session per call, and returns its JSON.
func inspector(t *testing.T, k *kpfCmd, mcpArgs []string, method string, args ...string) map[string]any {
	t.Helper()
	bin, err := filepath.Abs("mcp/node_modules/.bin/mcp-inspector")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the MCP inspector is not installed: run scripts/deps.sh mcp (%v)", err)
	}
	kc := k.kubeconfig
	if kc == "" {
		kc = k.sb.Kubeconfig("admin")
	}
	cmdArgs := append([]string{"--cli", "-e", "KPF_HOME=" + k.home, kpfBin, "--kubeconfig", kc, "mcp"}, mcpArgs...)
	cmdArgs = append(append(cmdArgs, "--method", method), args...)
	cmd := exec.Command(bin, cmdArgs...)
	cmd.Dir = k.dir
	cmd.Env = append(os.Environ(), "KPF_HOME="+k.home)
	out, err := runWithin(t, cmd, 90*time.Second)
	if err != nil {
		t.Fatalf("mcp-inspector %s: %v\n%s", strings.Join(cmdArgs, " "), err, out)
	}
	var v map[string]any
	// The JSON answer, then what the inspector and kpf said on stderr.
	if err := json.NewDecoder(bytes.NewReader(out[bytes.IndexByte(out, '{')+1-1:])).Decode(&v); err != nil {
		t.Fatalf("mcp-inspector %s: %v\n%s", method, err, out)
	}
	return v
}

func toolsOf(v map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	tools, _ := v["tools"].([]any)
	for _, tl := range tools {
		m, _ := tl.(map[string]any)
		out[fmt.Sprint(m["name"])] = m
	}
	return out
}

// The MCP inspector lists kpf's tools, starts a forward to a service,
// a request through the address it got answers, kpf status shows it as
// started by mcp, and it stops; a forward not kept stops with its
// session; --read-only offers no start_forward.
func TestMCPInspector(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "mcpweb", 1)
	k := newKpfCmd(t, sb)

	ro := toolsOf(inspector(t, k, []string{"--read-only"}, "tools/list"))
	if _, ok := ro["start_forward"]; ok || len(ro) != 7 {
		t.Fatalf("--read-only tools: %v", ro)
	}
	all := toolsOf(inspector(t, k, nil, "tools/list"))
	for _, n := range []string{"list_contexts", "list_namespaces", "list_targets", "start_forward", "stop_forward", "status", "doctor", "rbac_role", "http_log"} {
		if _, ok := all[n]; !ok {
			t.Errorf("no tool %s", n)
		}
	}
	// No daemon runs yet: status says nothing runs (and starts none).
	if b, _ := json.Marshal(inspector(t, k, nil, "tools/call", "--tool-name", "status")); !strings.Contains(string(b), `"structuredContent":{"forwards":[]}`) {
		t.Errorf("status without a daemon: %s", b)
	}
	targets := inspector(t, k, nil, "tools/call", "--tool-name", "list_targets", "--tool-arg", "namespace="+ns)
	if b, _ := json.Marshal(targets); !strings.Contains(string(b), `{"ports":["80 (main) -\u003e main"],"target":"svc/mcpweb"}`) {
		t.Errorf("list_targets: %s", b)
	}

	res := inspector(t, k, nil, "tools/call", "--tool-name", "start_forward", "--tool-arg", "target=svc/mcpweb", "namespace="+ns, `ports=[":80"]`, "keep=true")
	sc, _ := res["structuredContent"].(map[string]any)
	addr, _ := sc["address"].(string)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("start_forward: %v", res)
	}
	if _, err := fetch(addr, 1024); err != nil {
		t.Fatalf("through %s: %v", addr, err)
	}
	out, code := k.run(t, "status", "--json")
	if code != 0 || !strings.Contains(out, `"origin": "started by mcp"`) {
		t.Fatalf("kpf status --json: exit %d\n%s", code, out)
	}
	if out, _ := k.run(t, "status"); !strings.Contains(out, "(started by mcp, no file)") {
		t.Errorf("kpf status:\n%s", out)
	}
	log := inspector(t, k, nil, "tools/call", "--tool-name", "http_log", "--tool-arg", "name=mcpweb")
	if b, _ := json.Marshal(log); !strings.Contains(string(b), `/bytes/1024`) {
		t.Errorf("http_log: %s", b)
	}
	inspector(t, k, nil, "tools/call", "--tool-name", "stop_forward", "--tool-arg", "name=mcpweb")
	if st := k.status(t); len(st.Forwards) != 0 {
		t.Fatalf("after stop_forward: %+v", st.Forwards)
	}

	// Not kept: it ends with the inspector's session.
	res = inspector(t, k, nil, "tools/call", "--tool-name", "start_forward", "--tool-arg", "target=svc/mcpweb", "namespace="+ns, `ports=[":80"]`)
	if sc, _ := res["structuredContent"].(map[string]any); sc["name"] != "mcpweb" {
		t.Fatalf("start_forward: %v", res)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "the session's forward to stop", func() (bool, error) {
		return len(k.status(t).Forwards) == 0, nil
	})
}
