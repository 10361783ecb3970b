package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDaemonKilledRestoresItsFiles: the daemon runs two files applied by
// two commands as two users (the admin's, with a /udp forward and so a
// relay pod, and dev's); it is SIGKILLed. kpf status starts a daemon
// again, which says what it restored, runs both files again, each
// forward's tunnels opened as the user that applied its file, and
// removes the relay pod the killed daemon left. kpf down forgets them.
func TestDaemonKilledRestoresItsFiles(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	loadRelayImage(t, sb)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("adm", 1)+"---\n"+udpEchoApp)
	sb.ReadyPods(t, ns, "app=adm", 1)
	sb.ReadyPods(t, ns, "app=uecho", 1)
	devApp := httpAppInDev(t, sb, "restore")

	k := newKpfCmd(t, sb)
	admin := k.write(t, "admin.yaml", "forwards:\n"+
		"  - {name: web, namespace: "+ns+", target: svc/adm, ports: [\":80\"]}\n"+
		"  - {name: dns, namespace: "+ns+", target: svc/uecho, ports: [\":53/udp\"]}\n")
	dev := k.write(t, "dev.yaml", "forwards:\n  - {name: mine, target: deployment/"+devApp+", ports: [\":8080\"]}\n")
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "120s", "-f", admin); code != 0 {
		t.Fatalf("kpf up -d admin.yaml: exit %d\n%s", code, out)
	}
	up := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserDev), "up", "-d", "--wait", "--timeout", "60s", "-f", dev)
	up.Env, up.Dir = k.cmd().Env, k.dir
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("kpf up -d dev.yaml as dev: %v\n%s", err, out)
	}
	before := k.status(t)
	var oldRelay string
	for _, f := range rawForwards(t, k) {
		if f.Name == "dns" {
			oldRelay = f.Relay
		}
	}
	if len(before.Files) != 2 || oldRelay == "" {
		t.Fatalf("before the kill: files %q, relay %q", before.Files, oldRelay)
	}
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "the daemon gone", func() (bool, error) {
		return syscall.Kill(before.PID, 0) != nil, nil
	})

	from := sb.AuditOffset()
	out, code := k.run(t, "status")
	if code != 0 {
		t.Fatalf("kpf status after the kill: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"the kpf daemon stopped without kpf down while it ran",
		"stopped without kpf down; its files:",
		admin + ": restored (web, dns)",
		dev + ": restored (mine)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kpf status does not say %q:\n%s", want, out)
		}
	}
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "120s", "-f", admin); code != 0 || !strings.Contains(out, "unchanged: web, dns") {
		// Applied again as the same identity: the restored forwards run on.
		t.Fatalf("kpf up -d admin.yaml after the restore: exit %d\n%s", code, out)
	}
	after := k.status(t)
	if after.PID == before.PID || len(after.Files) != 2 {
		t.Fatalf("after: pid %d (killed %d), files %q", after.PID, before.PID, after.Files)
	}
	wantUser := map[string]string{"web": "kpf-sandbox-admin", "mine": "dev"}
	pods := map[string]string{}
	for _, f := range after.Forwards {
		if f.Name == "dns" {
			waitEcho(t, strings.TrimSuffix(f.Local[0], "/udp"), "after the restore", 60*time.Second, "the restored /udp forward")
			continue
		}
		var pod string
		sandboxtest.WaitFor(t, 60*time.Second, f.Name+" answering", func() (bool, error) {
			p, err := fetch(f.Local[0], 4096)
			pod = p
			return err == nil, nil
		})
		pods[pod] = f.Name
	}
	seen := map[string]bool{}
	for _, e := range sb.AuditEvents(t, from) {
		name, ok := pods[e.ObjectRef.Name]
		if !ok || e.ObjectRef.Subresource != "portforward" || e.ResponseStatus.Code != 101 {
			continue
		}
		seen[name] = true
		if e.User.Username != wantUser[name] {
			t.Errorf("a tunnel of %s opened as %s, want %s", name, e.User.Username, wantUser[name])
		}
	}
	if len(seen) != 2 {
		t.Errorf("tunnels opened after the restore: %v (want web and mine)", seen)
	}
	sandboxtest.WaitFor(t, 60*time.Second, "the killed daemon's relay pod "+oldRelay+" removed", func() (bool, error) {
		_, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), oldRelay, metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), nil
	})
	relays, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=udp"})
	if err != nil || len(relays.Items) != 1 || relays.Items[0].Status.Phase != corev1.PodRunning {
		t.Errorf("relay pods after the restore: %v, %v (want the new daemon's one, running)", relays, err)
	}

	// Killed again, then kpf down --all: nothing is restored after it.
	if err := syscall.Kill(after.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "the daemon gone", func() (bool, error) {
		return syscall.Kill(after.PID, 0) != nil, nil
	})
	if out, code := k.run(t, "down", "--all"); code != 0 || !strings.Contains(out, "no kpf daemon is running; forgot "+admin+", "+dev) {
		t.Fatalf("kpf down --all with the daemon killed: exit %d\n%s", code, out)
	}
	if out, code := k.run(t, "status"); code == 0 || strings.Contains(out, "restore") {
		t.Errorf("kpf status after kpf down: exit %d\n%s", code, out)
	}
	// The relay pod of the daemon killed last goes with the namespace.
}

// relayRow is a forward's relay pod in kpf status --json.
type relayRow struct {
	Name  string
	Relay string `json:"relayPod"`
}

func rawForwards(t *testing.T, k *kpfCmd) []relayRow {
	t.Helper()
	out, code := k.run(t, "status", "--json")
	var st struct{ Forwards []relayRow }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("kpf status --json: exit %d\n%s", code, out)
	}
	return st.Forwards
}

// A daemon started after one was SIGKILLed serves its API and metrics
// where that one did (a new token: none is ever stored); kpf up -d
// --api-addr to a daemon that runs without it says so. No pod needed:
// the file's forward may wait for its service.
func TestDaemonKilledKeepsItsAddresses(t *testing.T) {
	sb := sandboxtest.Get(t)
	k := newKpfCmd(t, sb)
	file := k.write(t, "kpf.yaml", "forwards:\n  - {name: web, namespace: default, target: svc/kpf-no-such-service, ports: [\":80\"]}\n")
	if out, code := k.run(t, "up", "-d", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	// A daemon that runs keeps its own API address, and says so.
	api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if out, code := k.run(t, "up", "-d", "-f", file, "--api-addr", api); code != 0 || !strings.Contains(out, "note: --api-addr "+api+" is not applied: the kpf daemon was running already, without an API address") {
		t.Fatalf("kpf up -d --api-addr to a running daemon: exit %d\n%s", code, out)
	}
	if out, code := k.run(t, "down", "--all"); code != 0 {
		t.Fatalf("kpf down --all: exit %d\n%s", code, out)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if out, code := k.run(t, "up", "-d", "-f", file, "--api-addr", api, "--metrics-addr", metrics); code != 0 {
		t.Fatalf("kpf up -d --api-addr: exit %d\n%s", code, out)
	}
	before := k.status(t)
	oldToken, _ := os.ReadFile(filepath.Join(k.home, "api-token"))
	if before.API != api || before.Metrics != "http://"+metrics+"/metrics" || len(oldToken) == 0 {
		t.Fatalf("before the kill: api %q, metrics %q", before.API, before.Metrics)
	}
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "the daemon gone", func() (bool, error) {
		return syscall.Kill(before.PID, 0) != nil, nil
	})
	if out, code := k.run(t, "status"); code != 0 || !strings.Contains(out, "starting it again to restore them") {
		t.Fatalf("kpf status after the kill: exit %d\n%s", code, out)
	}
	after := k.status(t)
	if after.PID == before.PID || after.API != api || after.Metrics != before.Metrics {
		t.Fatalf("after the kill: pid %d api %q metrics %q, want %s and %s", after.PID, after.API, after.Metrics, api, before.Metrics)
	}
	token, _ := os.ReadFile(filepath.Join(k.home, "api-token"))
	if len(token) == 0 || string(token) == string(oldToken) {
		t.Fatal("the restored daemon's API has no new token")
	}
	req, _ := http.NewRequest("GET", "http://"+api+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the restored API answers %d", resp.StatusCode)
	}
}
