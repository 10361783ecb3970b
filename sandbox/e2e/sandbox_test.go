package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// bulkApp is a Deployment of two kpf.test/bulk pods and a Service over them.
var bulkApp = namedBulkApp("bulk")

func namedBulkApp(name string) string { return sandboxtest.App(name, "kpf.test/bulk", 2, 9000) }

func TestNodeIsReady(t *testing.T) {
	sb := sandboxtest.Get(t)
	n, err := sb.Admin.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range n.Status.Conditions {
		ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
	}
	if !ready {
		t.Errorf("node conditions %+v: not Ready", n.Status.Conditions)
	}
	if got := n.Status.Addresses[0]; got.Type != corev1.NodeInternalIP || got.Address != "127.0.0.1" {
		t.Errorf("first node address %+v, want InternalIP 127.0.0.1", got)
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
		t.Error("no kubelet endpoint port")
	}
	out, err := sb.KubectlRun(t, "version", "-o", "json")
	if err != nil {
		t.Fatalf("kubectl version: %v\n%s", err, out)
	}
	var v struct {
		Client, Server struct{ GitVersion string }
	}
	if err := json.Unmarshal([]byte(out), &struct {
		Client *struct{ GitVersion string } `json:"clientVersion"`
		Server *struct{ GitVersion string } `json:"serverVersion"`
	}{&v.Client, &v.Server}); err != nil {
		t.Fatal(err)
	}
	if v.Client.GitVersion != "v1.37.2" || v.Server.GitVersion != "v1.37.2" {
		t.Errorf("kubectl version: client %q server %q, want v1.37.2 for both", v.Client.GitVersion, v.Server.GitVersion)
	}
}

// kubectls are the clients to check port-forward with: the one the sandbox
// built and the one on the machine, if any.
func kubectls(t *testing.T, sb *sandboxtest.Sandbox) map[string]string {
	ks := map[string]string{"v1.37": sb.Kubectl}
	if _, err := os.Stat("/usr/bin/kubectl"); err == nil {
		ks["system"] = "/usr/bin/kubectl"
	} else {
		t.Log("no /usr/bin/kubectl: checking the sandbox's kubectl only")
	}
	return ks
}

// portForward runs kubectl port-forward and returns the local address.
func portForward(t *testing.T, kubectl, kubeconfig, ns, target, ports, transport string) (*sandboxtest.Proc, string) {
	t.Helper()
	cmd := exec.Command(kubectl, "--kubeconfig", kubeconfig, "port-forward", "-n", ns, target, ports)
	cmd.Env = append(os.Environ(), "KUBECTL_PORT_FORWARD_WEBSOCKETS="+map[string]string{"websocket": "true", "spdy": "false"}[transport])
	p := sandboxtest.Start(t, cmd)
	m := p.WaitLine(t, `^Forwarding from 127\.0\.0\.1:(\d+) -> \d+`, 30*time.Second)
	return p, "127.0.0.1:" + m[1]
}

func TestPortForwardThroughAPIServer(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, bulkApp)
	pods := sb.ReadyPods(t, ns, "app=bulk", 2)
	const n = 8 << 20
	for kname, kubectl := range kubectls(t, sb) {
		for _, transport := range []string{"websocket", "spdy"} {
			for _, target := range []string{"pod/" + pods[0].Name, "deployment/bulk", "svc/bulk"} {
				remote := "9000"
				if strings.HasPrefix(target, "svc/") {
					remote = "80"
				}
				t.Run(fmt.Sprintf("%s/%s/%s", kname, transport, strings.Split(target, "/")[0]), func(t *testing.T) {
					auditFrom := sb.AuditOffset()
					_, addr := portForward(t, kubectl, sb.Kubeconfig(cluster.UserAdmin), ns, target, ":"+remote, transport)
					if err := workload.BulkDownload(addr, n, 30*time.Second); err != nil {
						t.Fatalf("download: %v", err)
					}
					if err := workload.BulkUpload(addr, n, 30*time.Second); err != nil {
						t.Fatalf("upload: %v", err)
					}
					// The API server answers a WebSocket upgrade as a GET and
					// an SPDY upgrade as a POST (create): the audit log tells
					// which transport the client really used.
					verb := map[string]string{"websocket": sandboxtest.WebSocketVerb, "spdy": sandboxtest.SPDYVerb}[transport]
					sandboxtest.WaitFor(t, 10*time.Second, "audit entry for the port-forward", func() (bool, error) {
						for _, e := range sb.AuditEvents(t, auditFrom) {
							if e.ObjectRef.Namespace == ns && e.ObjectRef.Subresource == "portforward" && e.Verb == verb {
								return true, nil
							}
						}
						return false, nil
					})
				})
			}
		}
	}
}

func TestRBAC(t *testing.T) {
	sb := sandboxtest.Get(t)
	other := sb.Namespace(t)
	sb.Apply(t, other, bulkApp)
	// dev's rights are in the dev namespace; a uniquely named app there.
	name := fmt.Sprintf("rbac-%d", time.Now().UnixNano()%100000)
	sb.Apply(t, cluster.DevNamespace, namedBulkApp(name))
	t.Cleanup(func() {
		sb.KubectlRun(t, "delete", "-n", cluster.DevNamespace, "deployment/"+name, "svc/"+name, "--wait=false")
	})
	sb.ReadyPods(t, cluster.DevNamespace, "app="+name, 2)
	sb.ReadyPods(t, other, "app=bulk", 2)

	auditFrom := sb.AuditOffset()
	t.Run("dev in its namespace", func(t *testing.T) {
		for _, transport := range []string{"websocket", "spdy"} {
			_, addr := portForward(t, sb.Kubectl, sb.Kubeconfig(cluster.UserDev), cluster.DevNamespace, "svc/"+name, ":80", transport)
			if err := workload.BulkDownload(addr, 1<<20, 20*time.Second); err != nil {
				t.Fatalf("%s: %v", transport, err)
			}
		}
	})
	forbidden := func(t *testing.T, user, ns, target, want string) {
		cmd := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(user), "port-forward", "-n", ns, target, ":9000")
		cmd.Env = append(os.Environ(), "KUBECTL_PORT_FORWARD_WEBSOCKETS=false")
		p := sandboxtest.Start(t, cmd)
		// kubectl resolves the target first, then fails on the upgrade
		// (or earlier, when it cannot even read the pod).
		if err, exited := p.Wait(30 * time.Second); !exited || err == nil {
			t.Fatalf("%s: port-forward as %s in %s did not fail; output:\n%s", target, user, ns, p.Output())
		}
		if !strings.Contains(p.Output(), want) {
			t.Errorf("port-forward as %s in %s: output lacks %q:\n%s", user, ns, want, p.Output())
		}
	}
	t.Run("dev elsewhere", func(t *testing.T) {
		forbidden(t, cluster.UserDev, other, "deployment/bulk", `User "dev" cannot get resource "deployments" in API group "apps" in the namespace "`+other+`"`)
	})
	t.Run("viewer", func(t *testing.T) {
		// viewer can resolve the target but not open the tunnel.
		out, err := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserViewer), "get", "deployment", name, "-n", cluster.DevNamespace).CombinedOutput()
		if err != nil {
			t.Fatalf("viewer cannot read deployments: %v\n%s", err, out)
		}
		forbidden(t, cluster.UserViewer, cluster.DevNamespace, "deployment/"+name, `cannot create resource "pods/portforward"`)
	})
	t.Run("nobody", func(t *testing.T) {
		forbidden(t, cluster.UserNobody, cluster.DevNamespace, "deployment/"+name, `User "nobody" cannot get resource "deployments"`)
	})
	t.Run("audit", func(t *testing.T) {
		sandboxtest.WaitFor(t, 10*time.Second, "dev's and viewer's port-forwards in the audit log", func() (bool, error) {
			var dev, viewerDenied bool
			for _, e := range sb.AuditEvents(t, auditFrom) {
				if e.ObjectRef.Subresource != "portforward" {
					continue
				}
				dev = dev || (e.User.Username == "dev" && e.ResponseStatus.Code < 400)
				viewerDenied = viewerDenied || (e.User.Username == "viewer" && e.ResponseStatus.Code == http.StatusForbidden)
			}
			return dev && viewerDenied, nil
		})
	})
}

// localAddr is where a pod's processes listen.
func localAddr(t *testing.T, sb *sandboxtest.Sandbox, p *corev1.Pod) string {
	a, err := sb.PodAddr(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDeletingAPodStopsItsProcesses(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, bulkApp)
	pods := sb.ReadyPods(t, ns, "app=bulk", 2)
	victim := pods[0]
	addr := net.JoinHostPort(localAddr(t, sb, &victim), "9000")
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("pod %s does not listen on %s: %v", victim.Name, addr, err)
	} else {
		c.Close()
	}
	if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "the pod object to go", func() (bool, error) {
		_, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), victim.Name, metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), nil
	})
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after its pod was deleted", addr)
	}
	// The Deployment replaces it.
	sb.ReadyPods(t, ns, "app=bulk", 2)
}

func TestRolloutRestartReplacesPods(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, bulkApp)
	before := sb.ReadyPods(t, ns, "app=bulk", 2)
	if out, err := sb.KubectlRun(t, "rollout", "restart", "-n", ns, "deployment/bulk"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := sb.KubectlRun(t, "rollout", "status", "-n", ns, "deployment/bulk", "--timeout=60s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	after := sb.ReadyPods(t, ns, "app=bulk", 2)
	for _, a := range after {
		for _, b := range before {
			if a.UID == b.UID {
				t.Errorf("pod %s survived the rollout", a.Name)
			}
		}
	}
}

func TestRestartPolicyAndExitCodes(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  restartPolicy: Never
  containers: [{name: main, image: debian, command: [sh, -c, "echo bye; exit 3"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: onfailure}
spec:
  restartPolicy: OnFailure
  containers: [{name: main, image: debian, command: [sh, -c, "exit 1"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: OnFailure
  containers: [{name: main, image: debian, command: [sh, -c, "exit 0"]}]
`)
	get := func(name string) *corev1.Pod {
		p, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	sandboxtest.WaitFor(t, 30*time.Second, "pod never to fail with exit code 3", func() (bool, error) {
		p := get("never")
		if p.Status.Phase != corev1.PodFailed || len(p.Status.ContainerStatuses) != 1 {
			return false, fmt.Errorf("phase %s", p.Status.Phase)
		}
		term := p.Status.ContainerStatuses[0].State.Terminated
		return term != nil && term.ExitCode == 3, nil
	})
	sandboxtest.WaitFor(t, 30*time.Second, "pod done to succeed", func() (bool, error) {
		return get("done").Status.Phase == corev1.PodSucceeded, nil
	})
	sandboxtest.WaitFor(t, 30*time.Second, "pod onfailure to restart", func() (bool, error) {
		p := get("onfailure")
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2, nil
	})
	if out, err := sb.KubectlRun(t, "logs", "-n", ns, "never"); err != nil || strings.TrimSpace(out) != "bye" {
		t.Errorf("kubectl logs never = %q, %v; want bye", out, err)
	}
}

func TestExecReadinessProbe(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  containers:
  - name: main
    image: debian
    command: [sh, -c, "sleep 2; touch ready; exec sleep 1000"]
    readinessProbe:
      exec: {command: [test, -f, ready]}
      periodSeconds: 1
`)
	sandboxtest.WaitFor(t, 10*time.Second, "pod slow to run", func() (bool, error) {
		p, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), "slow", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, err
	})
	p, _ := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), "slow", metav1.GetOptions{})
	if sandboxtest.PodReady(p) {
		t.Fatal("pod is Ready before its probe can pass")
	}
	sb.ReadyPods(t, ns, "", 1)
}

// TestRealProgramAsPod runs a program from the machine (python3's HTTP
// server) as a pod and reaches it with curl through kubectl port-forward.
func TestRealProgramAsPod(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: py, labels: {app: py}}
spec:
  containers:
  - name: main
    image: python
    command: [python3, -m, http.server, --bind, $(KPF_POD_ADDR), "8000"]
    ports: [{containerPort: 8000}]
    readinessProbe:
      httpGet: {path: /, port: 8000}
      periodSeconds: 1
`)
	sb.ReadyPods(t, ns, "app=py", 1)
	_, addr := portForward(t, sb.Kubectl, sb.Kubeconfig(cluster.UserAdmin), ns, "pod/py", ":8000", "websocket")
	out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://"+addr+"/").CombinedOutput()
	if err != nil || string(out) != "200" {
		t.Fatalf("curl through port-forward: %v %q", err, out)
	}
}

// TestFaults exercises the fault hooks. It runs last in this package (Go
// runs tests in file order) because it disturbs the API server.
func TestFaults(t *testing.T) {
	sb := sandboxtest.Get(t)
	c, err := cluster.Open(sb.Dir, sb.Bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(sb.Bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kpf-sandbox %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	get := func(timeout string) error {
		_, err := exec.Command(sb.Kubectl, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "--request-timeout="+timeout, "get", "--raw=/readyz").CombinedOutput()
		return err
	}
	t.Run("pause and resume the API server", func(t *testing.T) {
		run("pause", "apiserver")
		if err := get("1s"); err == nil {
			run("resume", "apiserver")
			t.Fatal("the API server answered while paused")
		}
		run("resume", "apiserver")
		sandboxtest.WaitFor(t, 20*time.Second, "the API server to answer again", func() (bool, error) {
			err := get("2s")
			return err == nil, err
		})
	})
	t.Run("restart the API server", func(t *testing.T) {
		before := c.State().Procs[cluster.APIServer].PID
		run("restart", "apiserver")
		c, _ = cluster.Open(sb.Dir, sb.Bin, nil)
		if after := c.State().Procs[cluster.APIServer].PID; after == before {
			t.Fatalf("API server pid unchanged (%d)", after)
		}
		if err := get("5s"); err != nil {
			t.Fatalf("API server not answering after restart: %v", err)
		}
	})
	t.Run("restart the node agent", func(t *testing.T) {
		ns := sb.Namespace(t)
		sb.Apply(t, ns, bulkApp)
		sb.ReadyPods(t, ns, "app=bulk", 2)
		restarted := time.Now().Truncate(time.Second)
		run("restart", "node")
		// The agent's containers went with it, as they would with a
		// node's reboot: wait until they run again and are ready (the
		// status read at once may still be the old agent's).
		var pods []corev1.Pod
		sandboxtest.WaitFor(t, 60*time.Second, "the pods running again after the restart", func() (bool, error) {
			pods = sb.ReadyPods(t, ns, "app=bulk", 2)
			for _, p := range pods {
				cs := p.Status.ContainerStatuses
				if len(cs) == 0 || cs[0].State.Running == nil || cs[0].State.Running.StartedAt.Time.Before(restarted) {
					return false, nil
				}
			}
			return true, nil
		})
		_, addr := portForward(t, sb.Kubectl, sb.Kubeconfig(cluster.UserAdmin), ns, "pod/"+pods[0].Name, ":9000", "spdy")
		if err := workload.BulkDownload(addr, 1<<20, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	})
}
