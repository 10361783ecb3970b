package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// check is one line of kpf doctor --json.
type check struct {
	Forward string   `json:"forward"`
	Step    string   `json:"step"`
	Status  string   `json:"status"`
	Summary string   `json:"summary"`
	Details []string `json:"details"`
	Fix     string   `json:"fix"`
}

type doctorRun struct {
	Out    string
	Code   int
	OK     bool
	Checks []check
}

// step is the first check of a step ("rbac", "target", "port", ...).
func (r doctorRun) step(t *testing.T, name string) check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Step == name {
			return c
		}
	}
	t.Fatalf("no %s check in:\n%s", name, r.Out)
	return check{}
}

// doctor runs kpf [global flags] doctor --json ARGS with env added.
func doctor(t *testing.T, env []string, kubeconfig string, args ...string) doctorRun {
	t.Helper()
	cmd := exec.Command(kpfBin, append([]string{"--kubeconfig", kubeconfig, "doctor", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	r := doctorRun{Out: string(out)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
		r.Out += string(ee.Stderr)
	} else if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OK     bool    `json:"ok"`
		Checks []check `json:"checks"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("kpf doctor --json %s: %v\n%s", strings.Join(args, " "), err, r.Out)
	}
	r.OK, r.Checks = doc.OK, doc.Checks
	return r
}

// TestDoctorHealthy: a working service passes every check, with a real
// tunnel per port and both transports, in a few seconds; the text form
// marks each step.
func TestDoctorHealthy(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, sandboxtest.App("web", "kpf.test/http", 2, 8080)+`---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`)
	sb.ReadyPods(t, ns, "app=web", 2)
	admin := sb.Kubeconfig(cluster.UserAdmin)
	local := strconv.Itoa(freePort(t))
	start := time.Now()
	r := doctor(t, nil, admin, "-n", ns, "svc/web", local+":80")
	took := time.Since(start)
	if r.Code != 0 || !r.OK {
		t.Fatalf("exit %d:\n%s", r.Code, r.Out)
	}
	for _, c := range r.Checks {
		if c.Status != "ok" {
			t.Errorf("%s: %s %s", c.Step, c.Status, c.Summary)
		}
	}
	if took > 5*time.Second {
		t.Errorf("kpf doctor took %s on a healthy target, want under 5 s", took)
	}
	if p := r.step(t, "port"); !strings.Contains(strings.Join(p.Details, "\n"), "test connection through the tunnel was accepted") {
		t.Errorf("no test connection: %+v", p)
	}
	if tr := r.step(t, "transports"); !strings.Contains(tr.Summary, "auto uses WebSocket") {
		t.Errorf("transports: %s", tr.Summary)
	}
	// Text: one mark per step, in the order a person works through them.
	out, err := exec.Command(kpfBin, "--kubeconfig", admin, "doctor", "-n", ns, "svc/web", local+":80").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var steps []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "✓" {
			steps = append(steps, f[1])
		}
	}
	if got, want := strings.Join(steps, " "), "kubeconfig api-server identity rbac target port local transports"; got != want {
		t.Errorf("steps %q, want %q:\n%s", got, want, out)
	}
	t.Logf("healthy target checked in %s", took)
}

// TestDoctorDiagnoses: each row of the port-forwarding troubleshooting
// table, produced for real, is diagnosed at the right step with a fix.
func TestDoctorDiagnoses(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, strings.ReplaceAll(`
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers: [{name: app, image: busybox, command: [sh, -c, "echo boom; exit 3"], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers: [{name: app, image: "kpf.test/no-such-image:1.0"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: web, image: kpf.test/http, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  containers:
  - name: web
    image: kpf.test/http
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /no-such-path, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: loopback-only, labels: {app: loopback-only}}
spec:
  containers:
  - name: app
    image: python
    command: [python3, -m, http.server, "18080", --bind, BIND_OTHER]
    ports: [{containerPort: 18080}]
`, "BIND_OTHER", otherInterface()))
	sb.ReadyPods(t, ns, "app=web", 1)
	sb.ReadyPods(t, ns, "app=loopback-only", 1)
	admin := sb.Kubeconfig(cluster.UserAdmin)
	fail := func(t *testing.T, r doctorRun, step string, want ...string) check {
		t.Helper()
		if r.Code != 1 || r.OK {
			t.Errorf("exit %d, ok %v; want 1", r.Code, r.OK)
		}
		c := r.step(t, step)
		text := c.Summary + "\n" + strings.Join(c.Details, "\n") + "\nfix: " + c.Fix
		if c.Status != "fail" {
			t.Errorf("%s: %s, want fail:\n%s", step, c.Status, text)
		}
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not say %q:\n%s", step, w, text)
			}
		}
		return c
	}

	t.Run("port taken locally", func(t *testing.T) {
		port := freePort(t)
		py := exec.Command("python3", "-m", "http.server", strconv.Itoa(port), "--bind", "127.0.0.1")
		p := sandboxtest.Start(t, py)
		sandboxtest.WaitFor(t, 10*time.Second, "python3 listening", func() (bool, error) {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				c.Close()
			}
			return err == nil, nil
		})
		held := fmt.Sprintf("127.0.0.1:%d is held by ", port)
		pid := fmt.Sprintf("python3 -m http.server %d --bind 127.0.0.1 (pid %d)", port, p.Cmd.Process.Pid)
		r := doctor(t, nil, admin, "-n", ns, "--address", "127.0.0.1", "pod/web", fmt.Sprintf("%d:8080", port))
		fail(t, r, "local", held, pid, "choose another local port")
		// With localhost, kpf (like kubectl) still listens on ::1: a
		// warning, since clients that try 127.0.0.1 reach python3.
		r = doctor(t, nil, admin, "-n", ns, "pod/web", fmt.Sprintf("%d:8080", port))
		if c := r.step(t, "local"); c.Status != "warn" || !strings.Contains(c.Summary, held) || !strings.Contains(c.Summary, pid) || r.Code != 0 {
			t.Errorf("localhost half taken: exit %d, %+v", r.Code, c)
		}
	})
	t.Run("wrong namespace", func(t *testing.T) {
		r := doctor(t, nil, admin, "-n", ns+"-nope", "pod/web", "8080")
		fail(t, r, "target", fmt.Sprintf(`namespace "%s-nope" does not exist`, ns))
	})
	t.Run("wrong name", func(t *testing.T) {
		r := doctor(t, nil, admin, "-n", ns, "pod/webb", "8080")
		fail(t, r, "target", `pod "webb" not found`, "close names here: web")
		// kpf forward's error ends with the doctor command for it.
		out, code := kpf(sb).run(t, "-n", ns, "pod/webb", "8080")
		if want := "(diagnose: kpf doctor pod/webb 8080 -n " + ns + " --kubeconfig=" + admin + ")"; code != 1 || !strings.Contains(out, want) {
			t.Errorf("kpf forward: exit %d, want %q in:\n%s", code, want, out)
		}
	})
	t.Run("readiness probe failing", func(t *testing.T) {
		var r doctorRun
		sandboxtest.WaitFor(t, 30*time.Second, "a failed readiness probe event", func() (bool, error) {
			r = doctor(t, nil, admin, "-n", ns, "pod/unready", "8080")
			return strings.Contains(strings.Join(r.step(t, "target").Details, "\n"), "Readiness probe failed"), nil
		})
		c := r.step(t, "target")
		if c.Status != "warn" || !strings.Contains(c.Summary, "Running but not ready") ||
			!strings.Contains(strings.Join(c.Details, "\n"), "Warning Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 404") {
			t.Errorf("target: %+v", c)
		}
	})
	t.Run("CrashLoopBackOff", func(t *testing.T) {
		var r doctorRun
		sandboxtest.WaitFor(t, 30*time.Second, "CrashLoopBackOff", func() (bool, error) {
			r = doctor(t, nil, admin, "-n", ns, "pod/crash", "8080")
			return strings.Contains(r.step(t, "target").Summary, "CrashLoopBackOff"), nil
		})
		fail(t, r, "target", "container app is in CrashLoopBackOff", "last exit code 3", "Back-off restarting failed container app", "kubectl logs -n "+ns+" crash -c app --previous")
	})
	t.Run("unknown image", func(t *testing.T) {
		var r doctorRun
		sandboxtest.WaitFor(t, 30*time.Second, "ImagePullBackOff", func() (bool, error) {
			r = doctor(t, nil, admin, "-n", ns, "pod/noimage", "8080")
			return strings.Contains(r.step(t, "target").Summary, "ImagePullBackOff"), nil
		})
		fail(t, r, "target", "cannot get its image kpf.test/no-such-image:1.0", "Failed to pull image", "check the image's name and tag")
		if s := r.step(t, "transports"); s.Status != "skip" {
			t.Errorf("transports on a pod that never ran: %+v", s)
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		r := doctor(t, nil, admin, "-n", ns, "pod/web", "8081")
		fail(t, r, "port", "nothing listens on port 8081 in pod web", "its containers declare 8080/TCP in web")
	})
	t.Run("server bound to another interface", func(t *testing.T) {
		// It listens on the pod's IP only, not on localhost, where
		// port-forward connects inside the pod (on a sandbox without a
		// pod network, on 127.0.0.1, not the pod's loopback address): the
		// container declares the port, and the connection is refused.
		r := doctor(t, nil, admin, "-n", ns, "pod/loopback-only", "18080")
		c := fail(t, r, "port", "nothing listens on port 18080 in pod loopback-only", "make it listen on 0.0.0.0")
		if !strings.Contains(strings.Join(c.Details, " "), "declared by container app") {
			t.Errorf("details: %v", c.Details)
		}
	})
	t.Run("API server down", func(t *testing.T) {
		dead := freePort(t)
		r := doctor(t, nil, admin, "--server", fmt.Sprintf("https://127.0.0.1:%d", dead), "-n", ns, "pod/web", "8080")
		fail(t, r, "api-server", "connection refused", "is the cluster up?")
		if c := r.step(t, "target"); c.Status != "skip" {
			t.Errorf("target checked with no API server: %+v", c)
		}
	})
	t.Run("proxy refusing", func(t *testing.T) {
		dead := freePort(t)
		viaDead := filepath.Join(t.TempDir(), "kubeconfig")
		if err := sandboxtest.WriteKubeconfigVia(admin, fmt.Sprintf("http://127.0.0.1:%d", dead), viaDead); err != nil {
			t.Fatal(err)
		}
		r := doctor(t, nil, viaDead, "-n", ns, "pod/web", "8080")
		fail(t, r, "api-server", fmt.Sprintf("through the proxy http://127.0.0.1:%d", dead), "the proxy refused the connection", "proxy-url in your kubeconfig")
	})
	t.Run("a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "kpf.yaml")
		content := fmt.Sprintf("forwards:\n- name: web\n  namespace: %s\n  target: pod/web\n  ports: [\"%d:8080\"]\n- name: gone\n  namespace: %s\n  target: svc/gone\n  ports: [\"80\"]\n", ns, freePort(t), ns)
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		r := doctor(t, nil, admin, "-f", file)
		if r.Code != 1 {
			t.Errorf("exit %d", r.Code)
		}
		clusterSteps := 0
		for _, c := range r.Checks {
			switch {
			case c.Forward == "":
				clusterSteps++
			case c.Forward == "web" && c.Status != "ok":
				t.Errorf("web: %s %s %s", c.Step, c.Status, c.Summary)
			case c.Forward == "gone" && c.Step == "target" && (c.Status != "fail" || !strings.Contains(c.Summary, `service "gone" not found`)):
				t.Errorf("gone: %+v", c)
			}
		}
		if clusterSteps != 3 {
			t.Errorf("%d cluster-wide checks, want kubeconfig, api-server and identity once:\n%s", clusterSteps, r.Out)
		}
		r = doctor(t, nil, admin, "-f", file, "web")
		if r.Code != 0 {
			t.Errorf("-f FILE web: exit %d\n%s", r.Code, r.Out)
		}
	})
	t.Run("exec plugin missing", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "kubeconfig")
		kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {server: %q, certificate-authority: %q}\ncontexts:\n- name: s\n  context: {cluster: s, user: u}\ncurrent-context: s\nusers:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: kpf-no-such-plugin, interactiveMode: Never, installHint: \"brew install kpf-no-such-plugin\"}\n",
			sb.APIServer, filepath.Join(string(sb.Dir), "pki", "ca.crt"))
		if err := os.WriteFile(cfg, []byte(kc), 0o600); err != nil {
			t.Fatal(err)
		}
		r := doctor(t, nil, cfg, "-n", ns, "pod/web", "8080")
		fail(t, r, "kubeconfig", `its credential plugin "kpf-no-such-plugin" is not on your PATH`, "brew install kpf-no-such-plugin")
	})
	t.Run("exec plugin on the PATH", func(t *testing.T) {
		// A plugin found on the command's PATH (aws, gke-gcloud-auth-plugin,
		// kubelogin) is there: doctor once looked it up on an empty PATH.
		bin := t.TempDir()
		if err := os.WriteFile(filepath.Join(bin, "kpf-test-plugin"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "kubeconfig")
		kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {server: %q, certificate-authority: %q}\ncontexts:\n- name: s\n  context: {cluster: s, user: u}\ncurrent-context: s\nusers:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: kpf-test-plugin, interactiveMode: Never}\n",
			sb.APIServer, filepath.Join(string(sb.Dir), "pki", "ca.crt"))
		if err := os.WriteFile(cfg, []byte(kc), 0o600); err != nil {
			t.Fatal(err)
		}
		r := doctor(t, []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH")}, cfg, "-n", ns, "pod/web", "8080")
		if c := r.step(t, "kubeconfig"); c.Status != "ok" || strings.Contains(c.Summary, "not on your PATH") {
			t.Errorf("a plugin on the PATH: kubeconfig step %s: %s (fix: %s)", c.Status, c.Summary, c.Fix)
		}
	})
	t.Run("no pods/portforward", func(t *testing.T) {
		// viewer reads the dev namespace and may not port-forward.
		r := doctor(t, nil, sb.Kubeconfig(cluster.UserViewer), "-n", cluster.DevNamespace, "pod/nosuch", "8080")
		fail(t, r, "rbac", "you may not create, get pods/portforward", "kpf rbac pod/nosuch -n "+cluster.DevNamespace)
	})
	t.Run("create but not get on pods/portforward", func(t *testing.T) {
		sb.Apply(t, ns, createOnlyRole)
		cfg, _ := serviceAccountKubeconfig(t, sb, ns, "creator")
		var r doctorRun
		sandboxtest.WaitFor(t, 10*time.Second, "the Role in effect", func() (bool, error) {
			r = doctor(t, nil, cfg, "-n", ns, "pod/web", "8080")
			return r.step(t, "rbac").Status == "warn", nil
		})
		c := r.step(t, "rbac")
		if !strings.Contains(c.Summary, "you may not get pods/portforward") || !strings.Contains(strings.Join(c.Details, " "), "falls back to SPDY") {
			t.Errorf("rbac: %+v", c)
		}
		if tr := r.step(t, "transports"); tr.Status != "warn" || !strings.Contains(tr.Summary, "WebSocket ✗") || !strings.Contains(tr.Summary, "auto uses SPDY") {
			t.Errorf("transports: %+v", tr)
		}
		if r.Code != 0 {
			t.Errorf("warnings only, exit %d:\n%s", r.Code, r.Out)
		}
		r = doctor(t, nil, cfg, "-n", ns, "--transport", "websocket", "pod/web", "8080")
		fail(t, r, "rbac", "you may not get pods/portforward")
	})
}

// serviceAccountKubeconfig writes a kubeconfig for a service account of
// ns: the sandbox's cluster, and a token from kubectl create token, which
// it returns too (kept out of the test's output).
func serviceAccountKubeconfig(t *testing.T, sb *sandboxtest.Sandbox, ns, sa string) (string, string) {
	t.Helper()
	token, err := sb.KubectlRun(t, "create", "token", "-n", ns, sa)
	if err != nil {
		t.Fatalf("kubectl create token: %v", err)
	}
	cfg := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {server: %q, certificate-authority: %q}\ncontexts:\n- name: s\n  context: {cluster: s, user: u, namespace: %s}\ncurrent-context: s\nusers:\n- name: u\n  user: {token: %q}\n",
		sb.APIServer, filepath.Join(string(sb.Dir), "pki", "ca.crt"), ns, strings.TrimSpace(token))
	if err := os.WriteFile(cfg, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, strings.TrimSpace(token)
}

// TestRBACRoleIsExactlyEnough: the Role kpf rbac prints, bound to a
// service account with no rights, lets it forward (doctor passes, bytes
// flow); with any one verb taken out, kpf doctor names that verb.
func TestRBACRoleIsExactlyEnough(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, sandboxtest.App("web", "kpf.test/http", 1, 8080)+`---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: forwarder}
`)
	sb.ReadyPods(t, ns, "app=web", 1)
	cfg, _ := serviceAccountKubeconfig(t, sb, ns, "forwarder")
	out, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "rbac", "-n", ns, "svc/web", "--subject", "sa:"+ns+"/forwarder").Output()
	if err != nil {
		t.Fatalf("kpf rbac: %v", err)
	}
	role := string(out)
	// Without the Role, nothing is allowed.
	if r := doctor(t, nil, cfg, "svc/web", "80"); r.step(t, "rbac").Status != "fail" {
		t.Fatalf("a service account with no rights passed rbac:\n%s", r.Out)
	}
	sb.Apply(t, ns, role)
	var r doctorRun
	sandboxtest.WaitFor(t, 10*time.Second, "the Role in effect", func() (bool, error) {
		r = doctor(t, nil, cfg, "svc/web", "80")
		return r.Code == 0, nil
	})
	for _, c := range r.Checks {
		if c.Status != "ok" && c.Step != "local" {
			t.Errorf("with kpf rbac's Role: %s %s: %s", c.Step, c.Status, c.Summary)
		}
	}
	as := forwarder{name: "kpf as the service account", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", cfg, "forward"}, args...)
	}}
	p, ls := as.start(t, 2, "svc/web", ":80")
	if pod := servedBy(t, ls[0].Addr); !strings.HasPrefix(pod, "web-") {
		t.Errorf("served by %q", pod)
	}
	p.Stop()

	// Each verb is needed: take one out, doctor names it.
	for _, cut := range []struct{ resource, verb, says string }{
		{"pods", "get", "get pods"},
		{"pods", "list", "list pods"},
		{"pods", "watch", "watch pods"},
		{"services", "get", "get services"},
		{"pods/portforward", "create", "create pods/portforward"},
		{"pods/portforward", "get", "get pods/portforward"},
	} {
		t.Run(cut.says, func(t *testing.T) {
			sb.Apply(t, ns, withoutVerb(t, role, cut.resource, cut.verb))
			t.Cleanup(func() { sb.Apply(t, ns, role) })
			sandboxtest.WaitFor(t, 10*time.Second, "doctor naming "+cut.says, func() (bool, error) {
				r = doctor(t, nil, cfg, "svc/web", "80")
				return strings.Contains(r.step(t, "rbac").Summary, "you may not "+cut.says), nil
			})
			if c := r.step(t, "rbac"); c.Status == "ok" {
				t.Errorf("rbac ok without %s", cut.says)
			}
		})
	}
}

// withoutVerb is manifest (kpf rbac's Role, then its RoleBinding) with
// verb taken out of resource's rule, and the rule dropped if it has no
// verb left.
func withoutVerb(t *testing.T, manifest, resource, verb string) string {
	t.Helper()
	docs := strings.Split(manifest, "\n---\n")
	var role rbacv1.Role
	if err := yaml.Unmarshal([]byte(docs[0]), &role); err != nil {
		t.Fatalf("kpf rbac's Role: %v\n%s", err, docs[0])
	}
	cut := false
	var rules []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			r.Verbs = slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == verb })
			cut = true
		}
		if len(r.Verbs) > 0 {
			rules = append(rules, r)
		}
	}
	if !cut {
		t.Fatalf("no %s verb on %s in:\n%s", verb, resource, manifest)
	}
	role.Rules = rules
	role.APIVersion, role.Kind = "rbac.authorization.k8s.io/v1", "Role"
	out, err := yaml.Marshal(role)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(append([]string{string(out)}, docs[1:]...), "\n---\n")
}

// otherInterface is an address a pod's server can bind that port-forward
// does not reach: the pod's IP in a network namespace of its own (on the
// sandbox's pod network, as on a cluster), or 127.0.0.1 on a sandbox
// whose pods share the node's network.
func otherInterface() string {
	if _, err := net.InterfaceByName("kpfsb0"); err == nil {
		return "$(KPF_POD_IP)"
	}
	return "127.0.0.1"
}
