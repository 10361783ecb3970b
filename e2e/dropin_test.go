package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// kpf TYPE/NAME PORT... with no command is kpf forward, line for line and
// exit code for exit code, and so is kubectl pf with kpf on the PATH as
// the kubectl-pf plugin.
func TestDropInFormAndKubectlPlugin(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	bin := t.TempDir()
	if err := os.Symlink(kpfBin, filepath.Join(bin, "kubectl-pf")); err != nil {
		t.Fatal(err)
	}
	kc := sb.Kubeconfig(cluster.UserAdmin)
	path := "PATH=" + bin + string(filepath.ListSeparator) + os.Getenv("PATH")
	forms := []forwarder{
		{name: "kpf forward", argv: func(args ...string) []string {
			return append([]string{kpfBin, "--kubeconfig", kc, "forward"}, args...)
		}},
		{name: "kpf", argv: func(args ...string) []string { return append([]string{kpfBin, "--kubeconfig", kc}, args...) }},
		{name: "kubectl pf", env: []string{path}, argv: func(args ...string) []string {
			return append([]string{sb.Kubectl, "pf", "--kubeconfig", kc}, args...)
		}},
	}
	port := regexp.MustCompile(`:\d+ `)
	var want string
	for _, f := range forms {
		p, ls := f.start(t, 2, "-n", ns, "svc/api", ":80")
		if _, err := fetch(ls[0].Addr, 64<<10); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		p.Stop()
		lines := port.ReplaceAllString(p.Output(), ":PORT ")
		lines = lines[:strings.Index(lines, "Handling connection")]
		if want == "" {
			want = lines
		} else if lines != want {
			t.Errorf("%s printed\n%s\nwant, as kpf forward:\n%s", f.name, lines, want)
		}
	}
	// Errors: the same message and exit code.
	for _, args := range [][]string{
		{"-n", ns, "svc/missing", "80"},
		{"-n", ns, "svc/api", "99999"},
		{"-n", ns, "--reconnect-wait", "0s", "svc/api", "80"},
	} {
		var outs []string
		var codes []int
		for _, f := range forms {
			out, code := f.run(t, args...)
			outs = append(outs, strings.ReplaceAll(strings.ReplaceAll(out, "kubectl pf", "kpf"), "kpf forward", "kpf"))
			codes = append(codes, code)
		}
		for i := range forms[1:] {
			if outs[i+1] != outs[0] || codes[i+1] != codes[0] {
				t.Errorf("%v: %s exit %d:\n%s\nkpf forward exit %d:\n%s", args, forms[i+1].name, codes[i+1], outs[i+1], codes[0], outs[0])
			}
		}
	}
}
