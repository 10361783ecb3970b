package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// auditLine is the part of an audit record the tests read.
type auditLine struct {
	Kind, Event, Result, Error string
	Context, User, Namespace   string
	Target, Pod, Local, Peer   string
	RemotePort                 int
	BytesIn, BytesOut          int64
	DurationSeconds            float64
}

func readAudit(t *testing.T, path string) ([]auditLine, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s is %v, want 0600", path, fi.Mode().Perm())
	}
	var out []auditLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out, string(b)
}

// echoOnce sends n random bytes through addr to an echo server and checks
// they come back.
func echoOnce(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := make([]byte, n)
	for i := range msg {
		msg[i] = byte(rand.IntN(256))
	}
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo of %d bytes came back as %d different bytes", n, len(got))
	}
	return nil
}

// TestAuditLogCountsEveryConnection: kpf forward --audit-log as a service
// account (a bearer token) writes one line per connection, 100 of them,
// whose bytes add up to what the clients moved, between a start and a
// stop line; the token is nowhere in it. The daemon keeps one in its home,
// without the admin's client key.
func TestAuditLogCountsEveryConnection(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: auditor}\n")
	role, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "rbac", "-n", ns, "pod/echo", "--subject", "sa:"+ns+"/auditor").Output()
	if err != nil {
		t.Fatalf("kpf rbac: %v", err)
	}
	sb.Apply(t, ns, string(role))
	echoPodIn(t, sb, ns)
	cfg, token := serviceAccountKubeconfig(t, sb, ns, "auditor")
	sandboxtest.WaitFor(t, 15*time.Second, "the Role in effect", func() (bool, error) {
		return doctor(t, nil, cfg, "pod/echo", "7070").step(t, "rbac").Status == "ok", nil
	})

	path := filepath.Join(t.TempDir(), "audit.log")
	as := forwarder{name: "kpf as auditor", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", cfg, "forward", "--audit-log", path}, args...)
	}}
	p, ls := as.start(t, 2, "pod/echo", ":7070")
	var moved int64
	for i := range 100 {
		n := 1 + rand.IntN(20000)
		if i%10 == 0 {
			n = 1 << 20 // and some larger ones
		}
		if err := echoOnce(ls[i%2].Addr, n); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		moved += int64(n)
	}
	p.Signal(syscall.SIGINT)
	if _, ok := p.Wait(20 * time.Second); !ok {
		t.Fatal("kpf did not stop")
	}
	lines, raw := readAudit(t, path)
	var conns int
	var in, outB int64
	var events []string
	for _, l := range lines {
		switch l.Kind {
		case "connection":
			conns++
			in += l.BytesIn
			outB += l.BytesOut
			if l.Result != "ok" || l.Pod != "echo" || l.RemotePort != 7070 || l.Namespace != ns || l.Target != "pod/echo" ||
				l.User != "system:serviceaccount:"+ns+":auditor" || !strings.HasPrefix(l.Peer, "127.0.0.1:") && !strings.HasPrefix(l.Peer, "[::1]:") {
				t.Errorf("connection line: %+v", l)
			}
		case "forward":
			events = append(events, l.Event)
		}
	}
	if conns != 100 || in != moved || outB != moved {
		t.Errorf("%d connection lines with %d bytes in and %d out; the clients made 100 and moved %d each way", conns, in, outB, moved)
	}
	if strings.Join(events, ",") != "start,stop" {
		t.Errorf("forward events %v, want start, stop", events)
	}
	if strings.Contains(raw, token) {
		t.Error("the audit log holds the bearer token")
	}

	// The daemon's, on by default, in its home.
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n- name: echo\n  namespace: %s\n  target: pod/echo\n  ports: [\"%d:7070\"]\n", ns, freePort(t)))
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	st := k.status(t)
	if err := echoOnce(st.Forwards[0].Local[0], 1000); err != nil {
		t.Fatal(err)
	}
	var dlines []auditLine
	sandboxtest.WaitFor(t, 10*time.Second, "the daemon's connection line", func() (bool, error) {
		dlines, raw = readAudit(t, filepath.Join(k.home, "audit.log"))
		for _, l := range dlines {
			if l.Kind == "connection" && l.BytesIn == 1000 && l.BytesOut == 1000 && l.User == "kpf-sandbox-admin" {
				return true, nil
			}
		}
		return false, nil
	})
	key, err := os.ReadFile(sb.Kubeconfig(cluster.UserAdmin))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(key), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "client-key-data: "); ok && strings.Contains(raw, v[:32]) {
			t.Error("the daemon's audit log holds the client key")
		}
	}
}

// TestSecurityDocAuditPolicy: the API-server audit policy that
// docs/security.md gives users is the sandbox's, and a kpf forward leaves
// the entry it promises: the user, the verb, the pod, kpf's user agent,
// and 101 for the opened tunnel.
func TestSecurityDocAuditPolicy(t *testing.T) {
	doc, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "## The API server's audit log")
	_, block, ok2 := strings.Cut(rest, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/security.md has no audit policy block")
	}
	var policy []string
	for _, l := range strings.Split(cluster.AuditPolicy, "\n") {
		if !strings.HasPrefix(l, "#") {
			policy = append(policy, l)
		}
	}
	if strings.TrimSpace(block) != strings.TrimSpace(strings.Join(policy, "\n")) {
		t.Errorf("docs/security.md's policy:\n%s\nthe sandbox's:\n%s", block, cluster.AuditPolicy)
	}
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	from := sb.AuditOffset()
	p, ls := kpf(sb).start(t, 2, "-n", ns, "pod/solo", ":8080")
	servedBy(t, ls[0].Addr)
	p.Stop()
	sandboxtest.WaitFor(t, 10*time.Second, "kpf's pods/portforward entry", func() (bool, error) {
		for _, e := range sb.AuditEvents(t, from) {
			if e.ObjectRef.Subresource == "portforward" && e.ObjectRef.Namespace == ns && e.ObjectRef.Name == "solo" &&
				e.User.Username == "kpf-sandbox-admin" && strings.HasPrefix(e.UserAgent, "kpf/") && e.ResponseStatus.Code == 101 &&
				(e.Verb == "get" || e.Verb == "create") {
				return true, nil
			}
		}
		return false, nil
	})
}

// TestStatusCountsBytesAsTheyMove: a connection that stays open shows its
// bytes in kpf status while it lasts (they used to count at its end), and
// kpf status --watch redraws until interrupted.
func TestStatusCountsBytesAsTheyMove(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	echoPodIn(t, sb, ns)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n- name: echo\n  namespace: %s\n  target: pod/echo\n  ports: [\"%d:7070\"]\n", ns, freePort(t)))
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	c, err := net.Dial("tcp", k.status(t).Forwards[0].Local[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 1 << 20
	go c.Write(make([]byte, n))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "1 MiB each way, counted while the connection is open", func() (bool, error) {
		f := k.status(t).Forwards[0]
		return f.OpenConnections == 1 && f.BytesIn == n && f.BytesOut == n, nil
	})
	w := sandboxtest.Start(t, k.cmd("status", "--watch"))
	sandboxtest.WaitFor(t, 10*time.Second, "two snapshots", func() (bool, error) {
		return strings.Count(w.Output(), "kpf daemon pid") >= 2, nil
	})
	w.Signal(syscall.SIGINT)
	if err, exited := w.Wait(10 * time.Second); !exited || err != nil {
		t.Errorf("kpf status --watch after SIGINT: exited %v, %v", exited, err)
	}
	if !strings.Contains(w.Output(), "IN/S") {
		t.Errorf("no rates in the table:\n%s", w.Output())
	}
}

// echoPodIn runs pod/echo (kpf.test/echo on 7070) in ns and waits until
// it is ready.
func echoPodIn(t *testing.T, sb *sandboxtest.Sandbox, ns string) {
	t.Helper()
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  containers: [{name: echo, image: kpf.test/echo, ports: [{containerPort: 7070}]}]
`)
	sb.ReadyPods(t, ns, "app=echo", 1)
}

// needPrograms fails the test when a program it runs as a witness is
// missing.
func needPrograms(t *testing.T, names ...string) {
	t.Helper()
	for _, bin := range names {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed: run scripts/deps.sh", bin)
		}
	}
}
