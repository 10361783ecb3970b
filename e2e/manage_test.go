package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// kpfCmd runs kpf with the admin kubeconfig and a daemon home of the test's.
type kpfCmd struct {
	sb         *sandboxtest.Sandbox
	home       string
	dir        string
	kubeconfig string // the admin's when empty
}

func newKpfCmd(t *testing.T, sb *sandboxtest.Sandbox) *kpfCmd {
	k := &kpfCmd{sb: sb, home: t.TempDir(), dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(k.home, "daemon.log")); err == nil {
				t.Logf("daemon log:\n%s", b)
			}
		}
		// Whatever happened, leave no daemon behind.
		k.run(t, "down", "--all")
	})
	return k
}

func (k *kpfCmd) cmd(args ...string) *exec.Cmd {
	kc := k.kubeconfig
	if kc == "" {
		kc = k.sb.Kubeconfig(cluster.UserAdmin)
	}
	c := exec.Command(kpfBin, append([]string{"--kubeconfig", kc}, args...)...)
	c.Env = append(os.Environ(), "KPF_HOME="+k.home)
	c.Dir = k.dir
	return c
}

func (k *kpfCmd) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := k.cmd(args...).CombinedOutput()
	return string(out), exitCode(err)
}

func (k *kpfCmd) write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(k.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type statusJSON struct {
	SchemaVersion int         `json:"schemaVersion"`
	PID           int         `json:"pid"`
	Files         []string    `json:"files"`
	Forwards      []statusRow `json:"forwards"`
	API           string      `json:"api"`
	Metrics       string      `json:"metrics"`
}

// statusRow is a forward (or proxy) in kpf status --json.
type statusRow struct {
	Name, State, Health, Pod       string
	File, Context, User, LastError string
	Local                          []string
	Connections                    int64
	OpenConnections                int64
	BytesIn, BytesOut              int64
	BytesInPerSecond               int64
}

func (k *kpfCmd) status(t *testing.T) statusJSON {
	t.Helper()
	out, code := k.run(t, "status", "--json")
	if code != 0 {
		t.Fatalf("kpf status --json: exit %d\n%s", code, out)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st
}

// TestDaemonRunsAFileOverTwoNamespaces: five forwards over two namespaces
// in the daemon; status, traffic, down of one, down of all, nothing left.
func TestDaemonRunsAFileOverTwoNamespaces(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns1, ns2 := sb.Namespace(t), sb.Namespace(t)
	sb.Apply(t, ns1, httpApp("api", 2)+"---\n"+httpApp("web", 1))
	sb.Apply(t, ns2, httpApp("db", 1)+"---\n"+httpApp("cache", 1)+"---\n"+httpApp("search", 1))
	for _, c := range []struct {
		ns, app string
		n       int
	}{{ns1, "api", 2}, {ns1, "web", 1}, {ns2, "db", 1}, {ns2, "cache", 1}, {ns2, "search", 1}} {
		sb.ReadyPods(t, c.ns, "app="+c.app, c.n)
	}
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf(`
defaults:
  namespace: %s
  health: {path: /healthz, interval: 1s}
forwards:
  - {name: api, target: svc/api, ports: [":80"]}
  - {name: web, target: deployment/web, ports: [":8080"], health: {type: tcp, interval: 1s}}
  - {name: db, namespace: %s, target: svc/db, ports: [":80"]}
  - {name: cache, namespace: %s, target: deployment/cache, ports: [":8080"]}
  - {name: search, namespace: %s, target: svc/search, ports: [":80"], balance: true}
`, ns1, ns2, ns2, ns2))
	out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s")
	if code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	st := k.status(t)
	if st.SchemaVersion != 2 || len(st.Forwards) != 5 {
		t.Fatalf("status: %+v", st)
	}
	for _, f := range st.Forwards {
		if f.State != "ready" || f.Health != "healthy" {
			t.Errorf("%s: %s/%s", f.Name, f.State, f.Health)
		}
		if _, err := fetch(f.Local[0], 64<<10); err != nil {
			t.Errorf("traffic through %s: %v", f.Name, err)
		}
	}
	// A second up -d with the same file changes nothing.
	if out, _ := k.run(t, "up", "-d"); !strings.Contains(out, "unchanged: api, web, db, cache, search") {
		t.Errorf("second up -d:\n%s", out)
	}
	if out, code := k.run(t, "down", "api"); code != 0 || !strings.Contains(out, "stopped: api") {
		t.Fatalf("down api: exit %d\n%s", code, out)
	}
	st = k.status(t)
	if len(st.Forwards) != 4 {
		t.Errorf("after down api, %d forwards run", len(st.Forwards))
	}
	for _, f := range st.Forwards {
		if f.Name == "api" {
			t.Error("api still runs")
		}
	}
	pid := st.PID
	if out, code := k.run(t, "down"); code != 0 || !strings.Contains(out, "the kpf daemon exited") {
		t.Fatalf("down: exit %d\n%s", code, out)
	}
	if syscall.Kill(pid, 0) == nil && !zombieProc(pid) {
		t.Errorf("the daemon (pid %d) still runs after down", pid)
	}
	if out, code := k.run(t, "status"); code == 0 || !strings.Contains(out, "no kpf daemon is running (start one with: kpf up -d)") {
		t.Errorf("status with no daemon: exit %d\n%s", code, out)
	}
}

func zombieProc(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || bytes.Contains(b, []byte(") Z "))
}

// TestEditingTheFileRestartsOnlyWhatChanged.
func TestEditingTheFileRestartsOnlyWhatChanged(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("a", 1)+"---\n"+httpApp("b", 1))
	sb.ReadyPods(t, ns, "app=a", 1)
	sb.ReadyPods(t, ns, "app=b", 1)
	k := newKpfCmd(t, sb)
	file := `
defaults: {namespace: NS}
forwards:
  - {name: a, target: svc/a, ports: [":80"]}
  - {name: b, target: svc/b, ports: [":80"]}
`
	k.write(t, "kpf.yaml", strings.ReplaceAll(file, "NS", ns))
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("%d\n%s", code, out)
	}
	k.write(t, "kpf.yaml", strings.ReplaceAll(strings.Replace(file, `name: b, target: svc/b, ports: [":80"]`, `name: b, target: deployment/b, ports: [":8080"]`, 1), "NS", ns))
	out, _ := k.run(t, "up", "-d")
	if !strings.Contains(out, "restarted: b") || !strings.Contains(out, "unchanged: a") {
		t.Errorf("after editing b:\n%s", out)
	}
}

// TestLineFormatFileWorksUnchanged: a team's SERVICE:NAMESPACE:LOCAL:REMOTE
// file runs as it is, in the foreground, with log lines (no terminal).
func TestLineFormatFileWorksUnchanged(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("api", 1)+"---\n"+httpApp("web", 1))
	sb.ReadyPods(t, ns, "app=api", 1)
	sb.ReadyPods(t, ns, "app=web", 1)
	k := newKpfCmd(t, sb)
	p1, p2 := freePort(t), freePort(t)
	conf := k.write(t, "forwards.conf", fmt.Sprintf("# our forwards\napi:%s:%d:80\n\nweb:%s:%d:80  # the frontend\n", ns, p1, ns, p2))
	p := sandboxtest.Start(t, k.cmd("up", "-f", conf))
	p.WaitLine(t, `api: ready`, 60*time.Second)
	p.WaitLine(t, `web: ready`, 60*time.Second)
	for _, port := range []int{p1, p2} {
		if _, err := fetch(fmt.Sprintf("127.0.0.1:%d", port), 1024); err != nil {
			t.Error(err)
		}
	}
	out, code := k.run(t, "config", "convert", "-f", conf)
	if code != 0 || !strings.Contains(out, "target: svc/api") {
		t.Errorf("convert: %d\n%s", code, out)
	}
	yml := k.write(t, "converted.yaml", out)
	if out, code := k.run(t, "config", "validate", "-f", yml); code != 0 {
		t.Errorf("the converted file does not validate: %s", out)
	}
}

// TestHealthGoesBadAndRecovers: an HTTP health check through the tunnel
// turns unhealthy when the pod's /healthz fails, up --wait names it, and
// it turns healthy again.
func TestHealthGoesBadAndRecovers(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "svc", 1)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf(`
forwards:
  - name: api
    namespace: %s
    target: deployment/svc
    ports: [":8080"]
    health: {path: /healthz, interval: 500ms, timeout: 2s, failureThreshold: 2}
`, ns))
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("%d\n%s", code, out)
	}
	addr := k.status(t).Forwards[0].Local[0]
	if _, err := http.Get("http://" + addr + "/healthz/fail"); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 20*time.Second, "status unhealthy", func() (bool, error) {
		return k.status(t).Forwards[0].Health == "unhealthy", nil
	})
	out, code := k.run(t, "up", "-d", "--wait", "--timeout", "3s")
	if code == 0 || !strings.Contains(out, "api: unhealthy") || !strings.Contains(out, "status 503") {
		t.Errorf("up --wait with an unhealthy forward: exit %d\n%s", code, out)
	}
	if _, err := http.Get("http://" + addr + "/healthz/recover"); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 20*time.Second, "status healthy", func() (bool, error) {
		return k.status(t).Forwards[0].Health == "healthy", nil
	})
	if out, _ := k.run(t, "logs", "api"); !strings.Contains(out, "api: unhealthy") || !strings.Contains(out, "api: healthy") {
		t.Errorf("logs api lacks the changes:\n%s", out)
	}
}

// TestRunCommand: kpf run exits with the command's code and leaves nothing.
func TestRunCommand(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: my-api, namespace: %s, target: svc/api, ports: [\":80\"], health: {path: /healthz}}\n", ns))
	c := k.cmd("run", "--", "sh", "-c", `curl -fsS "http://$KPF_MY_API_ADDR/" && test -n "$KPF_MY_API_PORT" && exit 7`)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if exitCode(err) != 7 || !strings.Contains(out.String(), "pod api-") {
		t.Fatalf("kpf run: exit %d, want 7:\n%s", exitCode(err), out.String())
	}
	// Its listeners are gone with it.
	if m := regexp.MustCompile(`ready: (127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String()); m != nil {
		if _, err := fetch(m[1], 10); err == nil {
			t.Errorf("%s still forwards after kpf run exited", m[1])
		}
	}
}

func TestInvalidFileReportsEveryProblem(t *testing.T) {
	sb := sandboxtest.Get(t)
	k := newKpfCmd(t, sb)
	bad := k.write(t, "bad.yaml", `
forwards:
  - {name: a, target: svc/a, ports: ["8080:80"], colour: red}
  - {name: b, target: ingress/b, ports: ["70000"]}
  - name: c
    target: svc/c
    ports:
      - "9090:90"
      - "8080:81"
`)
	out, code := k.run(t, "config", "validate", "-f", bad)
	for _, want := range []string{
		"line 3: forwards[0].colour: unknown key",
		`line 4: forwards[1].target: unknown target kind "ingress"`,
		`line 4: forwards[1].ports: invalid port "70000"`,
		// At the line of the entry that binds the port again.
		`line 9: forwards[2].ports: local port 8080 on 127.0.0.1 is also used by forward "a" (line 3)`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	if out, code := k.run(t, "up", "-f", bad); code != 1 || !strings.Contains(out, "4 problem(s)") {
		t.Errorf("up with a bad file: exit %d\n%s", code, out)
	}
}

// TestLiveTable drives kpf up in a pseudo-terminal and reads the screen.
func TestLiveTable(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf(`
forwards:
  - {name: api, namespace: %s, target: svc/api, ports: [":80"], health: {path: /healthz, interval: 1s}}
  - {name: ghost, namespace: %s, target: svc/ghost, ports: [":80"]}
`, ns, ns))
	c := k.cmd("up")
	tty, err := pty.StartWithSize(c, &pty.Winsize{Rows: 30, Cols: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Process.Kill(); c.Wait(); tty.Close() }()
	screen := make(chan string, 1)
	go func() {
		var all bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			all.Write(buf[:n])
			// The last full frame starts after the last clear-screen.
			s := all.String()
			if i := strings.LastIndex(s, "\x1b[2J"); i >= 0 {
				frame := regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]`).ReplaceAllString(s[i:], "")
				select {
				case <-screen:
				default:
				}
				screen <- frame
			}
			if err != nil {
				return
			}
		}
	}()
	apiRow := regexp.MustCompile(`(?m)^api\s+\S+/svc/api\s+api-\S+\s+127\.0\.0\.1:\d+ \+1\s+ready\s+healthy`)
	// A missing target waits, and is tried again, saying why.
	ghostRow := regexp.MustCompile(`(?m)^ghost\s+\S+/svc/ghost\s+-\s+-\s+waiting\s+-.*not found`)
	var last string
	deadline := time.After(60 * time.Second)
	for {
		select {
		case last = <-screen:
		case <-deadline:
			t.Fatalf("the table never showed api ready and healthy and ghost waiting; last screen:\n%s", last)
		}
		if apiRow.MatchString(last) && ghostRow.MatchString(last) && strings.Contains(last, "NAME") {
			break
		}
	}
	c.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Error("kpf up did not stop on Ctrl-C")
	}
}

// TestTwoContextsInOneFile: forwards of one file through two kubeconfig
// contexts (two users of the sandbox) and two namespaces.
func TestTwoContextsInOneFile(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "adm", 1)
	name := httpAppInDev(t, sb, "ctx")
	k := newKpfCmd(t, sb)
	merged := adminAndDevKubeconfig(t, sb, k.dir)
	k.write(t, "kpf.yaml", fmt.Sprintf(`
forwards:
  - {name: as-admin, namespace: %s, target: svc/adm, ports: [":80"]}
  - {name: as-dev, context: kpf-sandbox-dev, target: deployment/%s, ports: [":8080"]}
`, ns, name))
	cmd := exec.Command(kpfBin, "--kubeconfig", merged, "up", "--wait", "--timeout", "60s")
	cmd.Env = append(os.Environ(), "KPF_HOME="+k.home)
	cmd.Dir = k.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kpf up --wait: %v\n%s", err, out)
	}
	for _, f := range k.status(t).Forwards {
		if _, err := fetch(f.Local[0], 1024); err != nil {
			t.Errorf("%s: %v", f.Name, err)
		}
	}
}

// adminAndDevKubeconfig writes one kubeconfig with both the admin's and
// dev's contexts into dir (the admin's is current), and returns its path.
func adminAndDevKubeconfig(t *testing.T, sb *sandboxtest.Sandbox, dir string) string {
	t.Helper()
	merged := filepath.Join(dir, "kubeconfig")
	c := exec.Command(sb.Kubectl, "config", "view", "--flatten")
	c.Env = append(os.Environ(), "KUBECONFIG="+sb.Kubeconfig(cluster.UserAdmin)+":"+sb.Kubeconfig(cluster.UserDev))
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := os.WriteFile(merged, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return merged
}

// TestOnePodWatchPerNamespace: thirty forwards of one file in one
// namespace open one pod watch on the API server, not thirty.
func TestOnePodWatchPerNamespace(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	var svcs, fws strings.Builder
	fws.WriteString("forwards:\n")
	for i := range 30 {
		fmt.Fprintf(&svcs, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n", i)
		fmt.Fprintf(&fws, "- {name: s%d, namespace: %s, target: svc/s%d, ports: [':80']}\n", i, ns, i)
	}
	sb.Apply(t, ns, svcs.String())
	watches := func() int {
		out, err := sb.KubectlRun(t, "get", "--raw", "/metrics")
		if err != nil {
			t.Fatalf("API server metrics: %v", err)
		}
		n := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "apiserver_longrunning_requests{") && strings.Contains(l, `resource="pods"`) && strings.Contains(l, `verb="WATCH"`) {
				f := strings.Fields(l)
				v, _ := strconv.Atoi(f[len(f)-1])
				n += v
			}
		}
		return n
	}
	before := watches()
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fws.String())
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	if got := watches() - before; got != 1 {
		t.Errorf("30 forwards in one namespace added %d pod watches, want 1", got)
	}
	if st := k.status(t); len(st.Forwards) != 30 || servedBy(t, st.Forwards[29].Local[0]) == "" {
		t.Errorf("status: %d forwards", len(st.Forwards))
	}
}
