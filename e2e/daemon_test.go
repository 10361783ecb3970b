package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// keepAliveClient is python's http.client on one connection: each line
// on its stdin makes a GET / on that same connection and prints the
// connection's local port, the status and the pod that answered.
const keepAliveClient = `
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=30)
for _ in sys.stdin:
    try:
        c.request("GET", "/", headers={"Connection": "keep-alive"})
        r = c.getresponse()
        body = r.read().decode().strip()
        print("conn %d status %d %s" % (c.sock.getsockname()[1], r.status, body), flush=True)
    except Exception as e:
        print("error %r" % e, flush=True)
`

// An HTTP keep-alive connection through a daemon forward survives kpf up
// -d of the same file run from another folder, with other variables set
// (OLDPWD, TERM, a secret of another tool): the identity is the same, so
// nothing restarts. The daemon used to compare every variable of the
// shell, and restarted every forward, cutting the connection.
func TestReapplyFromAnotherShellKeepsConnections(t *testing.T) {
	needPrograms(t, "python3")
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "keep", 1)
	k := newKpfCmd(t, sb)
	file := k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: web, namespace: %s, target: svc/keep, ports: [\":80\"]}\n", ns))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	addr := k.status(t).Forwards[0].Local[0]

	py := exec.Command("python3", "-c", keepAliveClient, addr)
	stdin, err := py.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := py.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	py.Stderr = os.Stderr
	if err := py.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); py.Process.Kill(); py.Wait() })
	lines := bufio.NewScanner(stdout)
	get := func() string {
		t.Helper()
		fmt.Fprintln(stdin, "go")
		got := make(chan string, 1)
		go func() {
			if lines.Scan() {
				got <- lines.Text()
			} else {
				got <- "python ended: " + fmt.Sprint(lines.Err())
			}
		}()
		select {
		case l := <-got:
			return l
		case <-time.After(40 * time.Second):
			t.Fatal("python's request did not finish")
			return ""
		}
	}
	first := get()
	if !strings.Contains(first, " status 200 pod ") {
		t.Fatalf("first request: %s", first)
	}

	// The same file, from another folder and another shell.
	up := k.cmd("up", "-d", "-f", file)
	up.Dir = t.TempDir()
	// A virtualenv's PATH too: the kubeconfig runs no exec plugin, so
	// where one would be found is not part of the identity.
	venv := filepath.Join(t.TempDir(), "venv", "bin")
	up.Env = append(up.Env, "PWD="+up.Dir, "OLDPWD="+k.dir, "TERM=screen-256color", "COLUMNS=91", "FOO=secret", "PATH="+venv+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := up.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "unchanged: web") || strings.Contains(string(out), "restarted") {
		t.Fatalf("kpf up -d from another shell: %v\n%s", err, out)
	}

	second := get()
	port := func(l string) string { f := strings.Fields(l); return f[1] }
	if !strings.Contains(second, " status 200 pod ") || !strings.HasPrefix(second, "conn ") || port(second) != port(first) {
		t.Fatalf("after the re-apply the keep-alive connection %s answered: %s", first, second)
	}
	st := k.status(t)
	if f := st.Forwards[0]; f.Local[0] != addr || f.Connections != 1 || f.OpenConnections != 1 {
		t.Fatalf("the forward after the re-apply: %+v (want its listener %s and the one connection still open)", f, addr)
	}
}

// Two kpf up -d started at once leave one daemon: both files run in it,
// and the daemon that lost the race said why in the log.
func TestTwoUpDetachedAtOnceStartOneDaemon(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "twice", 1)
	k := newKpfCmd(t, sb)
	var files []string
	for i := range 2 {
		files = append(files, k.write(t, fmt.Sprintf("f%d.yaml", i), fmt.Sprintf("forwards:\n  - {name: web%d, namespace: %s, target: svc/twice, ports: [\":80\"]}\n", i, ns)))
	}
	var cmds []*exec.Cmd
	outs := make([]strings.Builder, 2)
	for i, f := range files {
		c := k.cmd("up", "-d", "--wait", "--timeout", "60s", "-f", f)
		c.Stdout, c.Stderr = &outs[i], &outs[i]
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("kpf up -d -f %s: %v\n%s", files[i], err, outs[i].String())
		}
	}
	st := k.status(t)
	if len(st.Files) != 2 || len(st.Forwards) != 2 {
		t.Fatalf("status: %+v", st)
	}
	// Every kpf daemon process of this home: exactly one.
	var daemons []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		env, err := os.ReadFile("/proc/" + p.Name() + "/environ")
		if err != nil || !strings.Contains(string(env), "KPF_HOME="+k.home+"\x00") {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if args := strings.Split(string(cmdline), "\x00"); len(args) > 1 && args[1] == "daemon" && !zombieProc(atoi(p.Name())) {
			daemons = append(daemons, p.Name())
		}
	}
	if len(daemons) != 1 || daemons[0] != fmt.Sprint(st.PID) {
		t.Fatalf("daemon processes %v, want only %d", daemons, st.PID)
	}
	if started := strings.Count(outs[0].String()+outs[1].String(), "started the kpf daemon"); started == 2 {
		log, _ := os.ReadFile(k.home + "/daemon.log")
		if !strings.Contains(string(log), "another kpf daemon runs for this user") {
			t.Fatalf("two daemons were started and the log does not say why one went:\n%s", log)
		}
	}
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// The daemon lives through churn: files whose forwards connect through
// two contexts are applied wholly and partly, re-applied as another
// identity and stopped, over and over, while kpf status --watch and kpf
// status --json poll it. Under make e2e's race-built kpf a data race in
// the daemon fails the run too. A Go map read by status while a re-apply
// wrote it once ended the daemon, and every forward of every file with it.
func TestDaemonLivesThroughChurn(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "churn", 1)
	name := httpAppInDev(t, sb, "churn")
	k := newKpfCmd(t, sb)
	k.kubeconfig = adminAndDevKubeconfig(t, sb, k.dir)
	files := make([]string, 2)
	for i := range files {
		files[i] = k.write(t, fmt.Sprintf("kpf-%d.yaml", i), fmt.Sprintf(`
forwards:
  - {name: admin-%[1]d, namespace: %[2]s, target: svc/churn, ports: [":80"]}
  - {name: dev-%[1]d, context: kpf-sandbox-dev, target: deployment/%[3]s, ports: [":8080"]}
`, i, ns, name))
	}
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", files[0]); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	pid := k.status(t).PID

	watch := k.cmd("status", "--watch")
	watch.Stdout, watch.Stderr = io.Discard, io.Discard
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	stop := make(chan struct{})
	polled := make(chan int)
	go func() {
		n := 0
		defer func() { polled <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, code := k.run(t, "status", "--json"); code == 0 {
				n++
			}
		}
	}()
	for round := range 6 {
		f := files[round%2]
		steps := [][]string{
			{"up", "-d", "-f", f},
			{"up", "-d", "-f", f, fmt.Sprintf("dev-%d", round%2)},
			{"--context", "kpf-sandbox-dev", "up", "-d", "-f", f}, // another identity: the whole file restarts
			{"up", "-d", "-f", f},
			{"restart", "-f", f},
		}
		if round%2 == 1 {
			steps = append(steps, []string{"down", "-f", f})
		}
		for _, s := range steps {
			if out, code := k.run(t, s...); code != 0 {
				t.Errorf("kpf %s: exit %d\n%s", strings.Join(s, " "), code, out)
			}
		}
	}
	close(stop)
	if n := <-polled; n == 0 {
		t.Error("no kpf status --json answered during the churn")
	}
	st := k.status(t)
	if st.PID != pid {
		t.Fatalf("the daemon changed under the churn: pid %d, then %d", pid, st.PID)
	}
	if watch.ProcessState != nil {
		t.Errorf("kpf status --watch ended during the churn: %v", watch.ProcessState)
	}
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", files[0]); code != 0 {
		t.Fatalf("after the churn, kpf up -d --wait: exit %d\n%s", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(k.home, "daemon.log")); err == nil && (bytes.Contains(b, []byte("panic:")) || bytes.Contains(b, []byte("fatal error:")) || bytes.Contains(b, []byte("DATA RACE"))) {
		t.Errorf("the daemon's log:\n%s", b)
	}
}
