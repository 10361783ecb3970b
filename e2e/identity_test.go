package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// The daemon runs each file as the command that applied it asked: two
// projects side by side, each with its own user, transport and reconnect
// wait; a file applied as a user without rights fails with Forbidden and
// the other keeps running; the audit log shows every tunnel made as the
// user its command named.
func TestDaemonRunsEachFileAsItsIdentity(t *testing.T) {
	sb := sandboxtest.Get(t)
	nsA := httpAppIn(t, sb, "alpha", 1)
	beta := httpAppInDev(t, sb, "beta")
	k := newKpfCmd(t, sb)
	// Two projects, each with a forward named web.
	a := k.write(t, "a.yaml", fmt.Sprintf("forwards:\n  - {name: web, namespace: %s, target: svc/alpha, ports: [\":80\"]}\n", nsA))
	b := filepath.Join(t.TempDir(), "kpf.yaml")
	os.WriteFile(b, []byte(fmt.Sprintf("forwards:\n  - {name: web, target: deployment/%s, ports: [\":8080\"]}\n", beta)), 0o600)
	from := sb.AuditOffset()

	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", a); code != 0 {
		t.Fatalf("up -d a.yaml as admin: exit %d\n%s", code, out)
	}
	k.kubeconfig = sb.Kubeconfig(cluster.UserNobody)
	out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", b)
	if code == 0 || !strings.Contains(out, "web: failed:") || !strings.Contains(out, "forbidden") {
		t.Fatalf("up -d b as nobody: exit %d, want the Forbidden message\n%s", code, out)
	}
	if strings.Contains(out, "stopped") {
		t.Fatalf("applying b stopped a's forwards:\n%s", out)
	}
	st := k.status(t)
	if len(st.Files) != 2 || len(st.Forwards) != 2 {
		t.Fatalf("status: %+v", st)
	}
	var addrA string
	for _, f := range st.Forwards {
		switch f.File {
		case a:
			if f.State != "ready" || f.User != "kpf-sandbox" || f.Context != "kpf-sandbox" {
				t.Errorf("a's forward: %+v", f)
			}
			addrA = f.Local[0]
		case b:
			if f.State != "failed" || f.User != "kpf-sandbox-nobody" || !strings.Contains(f.LastError, "forbidden") {
				t.Errorf("b's forward: %+v", f)
			}
		}
	}
	if _, err := fetch(addrA, 64<<10); err != nil {
		t.Fatalf("a while b failed: %v", err)
	}

	// The same file as dev, over SPDY, with a short reconnect wait.
	k.kubeconfig = sb.Kubeconfig(cluster.UserDev)
	out, code = k.run(t, "up", "-d", "--wait", "--timeout", "60s", "--transport", "spdy", "--reconnect-wait", "2s", "-f", b)
	if code != 0 || !strings.Contains(out, "restarted: web") {
		t.Fatalf("up -d b as dev: exit %d\n%s", code, out)
	}
	var addrB string
	for _, f := range k.status(t).Forwards {
		if f.File == b {
			addrB = f.Local[0]
			if f.User != "kpf-sandbox-dev" || f.Context != "kpf-sandbox-dev" {
				t.Errorf("b as dev: %+v", f)
			}
		}
	}
	for _, addr := range []string{addrA, addrB} {
		if _, err := fetch(addr, 64<<10); err != nil {
			t.Fatalf("traffic through %s: %v", addr, err)
		}
	}
	// Every tunnel as the user its command named, b's over SPDY only.
	users := map[string]map[string]int{}
	for _, e := range sb.AuditEvents(t, from) {
		if e.ObjectRef.Subresource != "portforward" {
			continue
		}
		key := e.ObjectRef.Namespace + " " + e.User.Username
		if users[key] == nil {
			users[key] = map[string]int{}
		}
		users[key][fmt.Sprintf("%s %d", e.Verb, e.ResponseStatus.Code)]++
	}
	for key, verbs := range users {
		ns, user, _ := strings.Cut(key, " ")
		switch {
		case ns == nsA && user == "kpf-sandbox-admin":
		case ns == cluster.DevNamespace && user == "nobody":
			for v := range verbs {
				if !strings.HasSuffix(v, " 403") {
					t.Errorf("nobody's port-forward got %s", v)
				}
			}
		case ns == cluster.DevNamespace && user == "dev":
			for v := range verbs {
				if !strings.HasPrefix(v, sandboxtest.SPDYVerb+" ") {
					t.Errorf("dev's tunnels: %v, want SPDY (%s) only", verbs, sandboxtest.SPDYVerb)
				}
			}
		default:
			t.Errorf("port-forward in %s as %s: %v", ns, user, verbs)
		}
	}
	if users[cluster.DevNamespace+" dev"] == nil || users[nsA+" kpf-sandbox-admin"] == nil {
		t.Errorf("audit: %v", users)
	}

	// --reconnect-wait 2s reached the daemon: with no pod, a new
	// connection is closed after about 2 s, not the default 30.
	if out, err := sb.KubectlRun(t, "scale", "-n", cluster.DevNamespace, "deployment/"+beta, "--replicas=0"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sandboxtest.WaitFor(t, 60*time.Second, "b waiting for a pod", func() (bool, error) {
		for _, f := range k.status(t).Forwards {
			if f.File == b {
				return f.State == "waiting for pod", nil
			}
		}
		return false, nil
	})
	c, err := net.Dial("tcp", addrB)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
	if d := time.Since(start); d < 1500*time.Millisecond || d > 8*time.Second {
		t.Errorf("a connection with no pod was closed after %s, want about 2s (--reconnect-wait)", d)
	}

	// web is in both files: down needs the file.
	if out, code := k.run(t, "down", "web"); code == 0 || !strings.Contains(out, `forward "web" runs from 2 files`) {
		t.Errorf("down web: exit %d\n%s", code, out)
	}
	if out, code := k.run(t, "down", "-f", b); code != 0 || !strings.Contains(out, "stopped: web ("+b+")") {
		t.Fatalf("down -f b: exit %d\n%s", code, out)
	}
	st = k.status(t)
	if len(st.Files) != 1 || st.Files[0] != a {
		t.Fatalf("after down -f b: %+v", st)
	}
	if _, err := fetch(addrA, 1024); err != nil {
		t.Fatalf("a after down -f b: %v", err)
	}
}

// Ctrl-C ends kpf forward at once even with connections waiting for a
// pod: they are closed, and the process is gone within a second.
func TestInterruptWithConnectionsWaiting(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "gone", 1)
	p, ls := kpf(sb).start(t, 1, "-n", ns, "--reconnect-wait", "5m", "deployment/gone", ":8080")
	if out, err := sb.KubectlRun(t, "scale", "-n", ns, "deployment/gone", "--replicas=0"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sb.ReadyPods(t, ns, "app=gone", 0)
	const n = 50
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", ls[0].Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// Each waits: kpf says so once per connection.
	sandboxtest.WaitFor(t, 30*time.Second, "50 connections waiting", func() (bool, error) {
		return strings.Count(p.Output(), "waiting for a ready pod") >= n, nil
	})
	start := time.Now()
	p.Signal(syscall.SIGINT)
	if _, exited := p.Wait(5 * time.Second); !exited {
		t.Fatal("kpf forward did not exit")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("kpf forward took %s to exit, want under 1s", d)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
				t.Errorf("a waiting connection stayed open after kpf exited: %v", err)
			}
		}()
	}
	wg.Wait()
}

// An exec credential plugin's token is revoked and replaced while kpf
// runs: client-go asks the plugin again when the credential expires, so
// the tunnels dialled after the swap (to a new pod) use the new token, in
// kpf forward and in the daemon. The plugin finds its token through a
// variable of the command's environment, which the daemon itself never
// has: it reaches the plugin with the file's identity, named in
// KPF_PASS_ENV.
func TestExecPluginTokenIsRenewed(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: ServiceAccount
metadata: {name: tok-a}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: tok-b}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: forwarder}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [pods/portforward], verbs: [get, create]}
- {apiGroups: [apps], resources: [deployments, replicasets], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: forwarder}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: forwarder}
subjects: [{kind: ServiceAccount, name: tok-a}, {kind: ServiceAccount, name: tok-b}]
---
`+httpApp("rot", 1))
	sb.ReadyPods(t, ns, "app=rot", 1)
	token := func(sa string) string {
		out, err := sb.KubectlRun(t, "create", "token", "-n", ns, sa, "--duration=10m")
		if err != nil {
			t.Fatalf("kubectl create token %s: %v\n%s", sa, err, out)
		}
		return strings.TrimSpace(out)
	}
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte(token("tok-a")), 0o600)
	plugin := filepath.Join(dir, "plugin.sh")
	os.WriteFile(plugin, []byte(`#!/bin/sh
# A credential that expires in 3 s: client-go asks again after that.
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"%s"}}' \
  "$(cat "$ROT_TOKEN_FILE")" "$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)"
`), 0o755)
	kc := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: s
  cluster: {server: %q, certificate-authority: %q}
contexts:
- name: s
  context: {cluster: s, user: plugin, namespace: %s}
current-context: s
users:
- name: plugin
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: %q, interactiveMode: Never}
`, sb.APIServer, filepath.Join(string(sb.Dir), "pki", "ca.crt"), ns, plugin)), 0o600)
	// The daemon keeps only the variables it is told of: KPF_PASS_ENV
	// names the plugin's own.
	env := append(os.Environ(), "ROT_TOKEN_FILE="+tokFile, "KPF_PASS_ENV=ROT_TOKEN_FILE")

	fwd := forwarder{name: "kpf with an exec plugin", env: []string{"ROT_TOKEN_FILE=" + tokFile}, argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", kc, "forward"}, args...)
	}}
	_, ls := fwd.start(t, 1, "--address", "127.0.0.1", "deployment/rot", ":8080")
	k := newKpfCmd(t, sb)
	k.kubeconfig = kc
	k.write(t, "kpf.yaml", "forwards:\n  - {name: rot, target: deployment/rot, ports: [\":8080\"]}\n")
	up := k.cmd("up", "-d", "--wait", "--timeout", "60s")
	up.Env = append(env, "KPF_HOME="+k.home)
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("kpf up -d: %v\n%s", err, out)
	}
	daemonAddr := k.status(t).Forwards[0].Local[0]
	for _, addr := range []string{ls[0].Addr, daemonAddr} {
		if _, err := fetch(addr, 1024); err != nil {
			t.Fatalf("before the swap, through %s: %v", addr, err)
		}
	}

	// Revoke tok-a (its service account goes) and hand out tok-b; a new
	// pod makes both forwards dial new tunnels.
	tokA, _ := os.ReadFile(tokFile)
	os.WriteFile(tokFile, []byte(token("tok-b")), 0o600)
	if out, err := sb.KubectlRun(t, "delete", "serviceaccount", "-n", ns, "tok-a"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "the API server refusing tok-a", func() (bool, error) {
		out, err := exec.Command(sb.Kubectl, "--server", sb.APIServer, "--certificate-authority", filepath.Join(string(sb.Dir), "pki", "ca.crt"),
			"--token", string(tokA), "get", "pods", "-n", ns).CombinedOutput()
		return err != nil && strings.Contains(string(out), "Unauthorized"), nil
	})
	from := sb.AuditOffset()
	if out, err := sb.KubectlRun(t, "delete", "pod", "-n", ns, "-l", "app=rot", "--wait=false"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	pods := sb.ReadyPods(t, ns, "app=rot", 1)
	for _, addr := range []string{ls[0].Addr, daemonAddr} {
		pod, err := fetch(addr, 1024)
		if err != nil || pod != pods[0].Name {
			t.Fatalf("after the swap, through %s: %q, %v (want the new pod %s)", addr, pod, err, pods[0].Name)
		}
	}
	var asB int
	for _, e := range sb.AuditEvents(t, from) {
		if e.ObjectRef.Subresource == "portforward" && e.ObjectRef.Name == pods[0].Name && e.ResponseStatus.Code == 101 {
			if e.User.Username != "system:serviceaccount:"+ns+":tok-b" {
				t.Errorf("a tunnel to the new pod as %s", e.User.Username)
			}
			asB++
		}
	}
	if asB < 2 {
		t.Errorf("%d tunnels to the new pod as tok-b, want one from each forward at least", asB)
	}
}
