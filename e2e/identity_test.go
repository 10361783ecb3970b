package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// fileStatus is kpf status --json with each forward's file and identity.
type fileStatus struct {
	Files    []string `json:"files"`
	Forwards []struct {
		Name, File, Context, User, State, LastError string
		Local                                       []string
	} `json:"forwards"`
}

func (k *kpfCmd) fileStatus(t *testing.T) fileStatus {
	t.Helper()
	out, code := k.run(t, "status", "--json")
	if code != 0 {
		t.Fatalf("kpf status --json: exit %d\n%s", code, out)
	}
	var st fileStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st
}

// The daemon runs each file as the command that applied it asked: two
// projects side by side, each with its own user, transport and reconnect
// wait; a file applied as a user without rights fails with Forbidden and
// the other keeps running; the audit log shows every tunnel made as the
// user its command named.
func TestDaemonRunsEachFileAsItsIdentity(t *testing.T) {
	sb := sandboxtest.Get(t)
	nsA := httpAppIn(t, sb, "alpha", 1)
	beta := fmt.Sprintf("beta-%d", time.Now().UnixNano()%100000)
	sb.Apply(t, cluster.DevNamespace, httpApp(beta, 1))
	t.Cleanup(func() {
		sb.KubectlRun(t, "delete", "-n", cluster.DevNamespace, "deployment/"+beta, "svc/"+beta, "--wait=false")
	})
	sb.ReadyPods(t, cluster.DevNamespace, "app="+beta, 1)
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
	st := k.fileStatus(t)
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
	for _, f := range k.fileStatus(t).Forwards {
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
		for _, f := range k.fileStatus(t).Forwards {
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
	st = k.fileStatus(t)
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
