package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
)

// kpf up --all and kpf run --all: what does not go together says so,
// naming the flag, the value and the fix.
func TestAllUsageErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KPF_HOME", filepath.Join(dir, "home"))
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, namespace: team}}]\ncurrent-context: c\n"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--all", "-f", "kpf.yaml"}, `--all forwards a namespace's services: give it without -f kpf.yaml (or put discover: {namespace: NS} in the file)`},
		{[]string{"up", "--all", "api"}, `--all forwards every service of the namespace: give no names (api), or a selector with -l`},
		{[]string{"up", "-l", "app=web"}, `-l/--selector and --address go with --all`},
		{[]string{"up", "--all", "-l", "tier in ("}, `-l "tier in (": not a label selector (like app=web or tier in (api,db))`},
		{[]string{"up", "--all", "--address", "auto,127.0.0.1"}, `--address "auto,127.0.0.1": "auto" gives the forward a loopback address of its own and goes alone, not with 127.0.0.1`},
		{[]string{"run", "--all", "-l", "tier in (", "--", "true"}, `-l "tier in (": not a label selector`},
	} {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), append([]string{"--kubeconfig", kubeconfig}, c.args...), &out, &errOut)
		if code == 0 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("kpf %s: exit %d, %q; want %q", strings.Join(c.args, " "), code, errOut.String(), c.want)
		}
	}
}

// kpf up --all writes the discover entry it stands for where the daemon
// and kpf down -f find it: KPF_HOME/all/CONTEXT/NAMESPACE.yaml.
func TestAllWritesItsEntry(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	t.Setenv("KPF_HOME", home)
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: 'arn:aws:eks/c', context: {cluster: c, namespace: team}}]\ncurrent-context: 'arn:aws:eks/c'\n"), 0o600)
	var out, errOut bytes.Buffer
	// kpf run needs healthy forwards before it runs its command: with no
	// cluster it gives up after its timeout, having written the entry.
	Run(context.Background(), []string{"--kubeconfig", kubeconfig, "run", "--all", "-n", "shop", "-l", "app=web", "--address", "auto", "--timeout", "100ms", "--", "true"}, &out, &errOut)
	b, err := os.ReadFile(filepath.Join(home, "all", "arn_aws_eks_c", "shop.yaml"))
	if err != nil {
		t.Fatalf("%v (kpf said %s)", err, errOut.String())
	}
	for _, w := range []string{"discover:\n", `  namespace: "shop"`, `  selector: "app=web"`, `  address: "auto"`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("the entry lacks %q:\n%s", w, b)
		}
	}
}

func TestEnvKey(t *testing.T) {
	for name, want := range map[string]string{"api": "KPF_API", "my-db": "KPF_MY_DB", "api.shop:8080": "KPF_API_SHOP_8080", "dns.shop:53/udp": "KPF_DNS_SHOP_53_UDP"} {
		if got := envKey(name); got != want {
			t.Errorf("envKey(%q) = %q, want %q", name, got, want)
		}
	}
}

// The doctor a discovered forward's error names is its target's: the
// file has no forward of its name.
func TestDoctorOfADiscoveredForward(t *testing.T) {
	fw := config.Forward{Name: "api.shop:8080", Namespace: "shop", Target: "svc/api", Ports: []portspec.Port{{Local: 8080, Remote: "8080", LocalSet: true}}, Owner: "discover-shop"}
	if got, want := doctorForFile("/h/all/c/shop.yaml", fw), "kpf doctor -n shop svc/api 8080:8080"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	fw.Owner, fw.Name = "", "api"
	if got, want := doctorForFile("/h/kpf.yaml", fw), "kpf doctor -f /h/kpf.yaml api"; got != want {
		t.Errorf("got %q, want %q", got, want)
	} // Started by kpf mcp: no file, never -f "(started by mcp) web".
	fw = config.Forward{Name: "web", Context: "dev", Namespace: "shop", Target: "svc/web", Ports: []portspec.Port{{Local: 8080, Remote: "80", LocalSet: true}}}
	if got, want := doctorForFile("(started by mcp) web", fw), "kpf doctor --context dev -n shop svc/web 8080:80"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// kpf rbac -f of a file with a discover: entry adds what the entry needs:
// list and watch services (and get, for the forwards' targets).
func TestRBACOfADiscoverEntry(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, namespace: team}}]\ncurrent-context: c\n"), 0o600)
	file := filepath.Join(dir, "kpf.yaml")
	os.WriteFile(file, []byte("discover: {namespace: shop}\n"), 0o600)
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "rbac", "-f", file}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"namespace: shop", "#   list,watch services: discover:", "#   get services:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	errOut.Reset()
	if code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "doctor", "-f", file}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "check a discovered one with kpf doctor -n NAMESPACE svc/NAME PORT") {
		t.Errorf("kpf doctor -f of a discover entry: exit %d, %s", code, errOut.String())
	}
}
