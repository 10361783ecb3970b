package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// term is kpf ui running in a tmux server of its own, at a given size.
type term struct {
	t      *testing.T
	socket string
}

func newTerm(t *testing.T, k *kpfCmd, width, height int, env ...string) *term {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is not installed: run scripts/deps.sh (%v)", err)
	}
	tm := &term{t: t, socket: fmt.Sprintf("kpf-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())}
	argv := append([]string{"env", "KPF_HOME=" + k.home}, env...)
	argv = append(argv, kpfBin, "--kubeconfig", k.sb.Kubeconfig(cluster.UserAdmin), "ui")
	tm.tmux("new-session", "-d", "-s", "ui", "-x", strconv.Itoa(width), "-y", strconv.Itoa(height), "-c", k.dir, strings.Join(quoteAll(argv), " "))
	t.Cleanup(func() { exec.Command("tmux", "-L", tm.socket, "kill-server").Run() })
	return tm
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}

func (tm *term) tmux(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", tm.socket}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// keys sends tmux key names (Enter, Tab, BSpace, Down) and, with -l,
// text.
func (tm *term) keys(keys ...string) {
	tm.t.Helper()
	tm.tmux(append([]string{"send-keys", "-t", "ui"}, keys...)...)
}
func (tm *term) text(s string)  { tm.t.Helper(); tm.tmux("send-keys", "-t", "ui", "-l", s) }
func (tm *term) screen() string { tm.t.Helper(); return tm.tmux("capture-pane", "-p", "-t", "ui") }

// await polls the screen until re matches it, and returns the match.
func (tm *term) await(what string, re *regexp.Regexp) []string {
	tm.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := tm.screen()
		if m := re.FindStringSubmatch(s); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("kpf ui did not show %s (%s) within 20s:\n%s", what, re, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kpf ui in tmux at 80×24 and 200×50, by the keyboard only: find the
// test's namespace and its service, forward its port (kept), see it
// ready with a rate while curl pulls through it, forward it again tied
// to the UI and stop that one, write the set to kpf.yaml, quit: the kept
// forward is still served by the daemon, and kpf up -f runs the file.
func TestUITmux(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "uiweb", 1)
	// A StatefulSet of no pods, for the list.
	sts := strings.Replace(httpApp("uidb", 0), "kind: Deployment", "kind: StatefulSet", 1)
	sb.Apply(t, ns, strings.Replace(sts, "spec:\n  replicas", "spec:\n  serviceName: uidb\n  replicas", 1))
	// A service with a UDP port, for the list (nothing answers it).
	sb.Apply(t, ns, `apiVersion: v1
kind: Service
metadata: {name: uidns}
spec:
  selector: {app: uiweb}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
`)
	// --print: the first screen, once, at the size asked; it starts no
	// daemon and says none runs.
	k := newKpfCmd(t, sb)
	out, code := k.run(t, "ui", "--print", "-n", ns, "--width", "100", "--height", "10")
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); code != 0 || len(lines) != 10 || !strings.Contains(out, "  svc/uiweb ") || !strings.Contains(out, "no kpf daemon runs") || strings.Contains(out, "started the kpf daemon") {
		t.Fatalf("kpf ui --print: exit %d, %d lines\n%s", code, len(lines), out)
	}
	for _, size := range []struct{ w, h int }{{80, 24}, {200, 50}} {
		t.Run(fmt.Sprintf("%dx%d", size.w, size.h), func(t *testing.T) {
			k := newKpfCmd(t, sb)
			tm := newTerm(t, k, size.w, size.h, "NO_COLOR=1")
			tm.await("the namespaces", regexp.MustCompile(`(?m)^> \S`))
			tm.await("the daemon it started", regexp.MustCompile(`context kpf-sandbox · user \S+ on kpf-sandbox · daemon pid \d+`))
			tm.text("?")
			tm.await("the help, with each action's command", regexp.MustCompile(`(?m)^w +write the set to a kpf.yaml +kpf status --save FILE`))
			tm.text("x")
			tm.await("the namespaces again", regexp.MustCompile(`(?m)^> \S`))
			tm.text("/" + ns)
			tm.keys("Enter")
			tm.await("the namespace, filtered", regexp.MustCompile(`> `+ns))
			tm.keys("Enter")
			tm.await("the service's port", regexp.MustCompile(`svc/uiweb +80/TCP \(main\)`))
			tm.await("the UDP port", regexp.MustCompile(`svc/uidns +53/UDP \(dns\) -> 5353`))
			tm.await("the statefulset", regexp.MustCompile(`statefulset/uidb +8080/TCP \(main\) +0/0 ready`))
			tm.await("the deployment and its pod", regexp.MustCompile(`(?s)deployment/uiweb .*1/1 ready.*pod/uiweb-\S+ .*Running`))
			// NO_COLOR: attributes at most, no colour.
			if s := tm.tmux("capture-pane", "-p", "-e", "-t", "ui"); regexp.MustCompile(`\x1b\[[0-9;]*(3[0-9]|9[0-7])[;m]`).MatchString(s) {
				t.Errorf("colour under NO_COLOR:\n%q", s)
			}
			tm.text("/svc/uiweb")
			tm.keys("Enter", "Enter")
			tm.await("the local port prompt", regexp.MustCompile(`local port: \d+_`))
			kept := freePort(t)
			tm.keys("BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace")
			tm.text(strconv.Itoa(kept))
			tm.keys("Enter")
			tm.await("the forward started", regexp.MustCompile(`started uiweb \(kept when kpf ui exits\)`))
			tm.keys("Tab")
			addr := fmt.Sprintf("127.0.0.1:%d", kept)
			tm.await("the forward ready", regexp.MustCompile(`uiweb +ready .*`+regexp.QuoteMeta(addr)))

			// curl pulls through it until the table shows a rate.
			ctx, cancel := context.WithCancel(context.Background())
			pulled := make(chan error, 1)
			go func() {
				var err error
				for ctx.Err() == nil && err == nil {
					err = exec.CommandContext(ctx, "curl", "-sSf", "-o", "/dev/null", "--limit-rate", "2M", fmt.Sprintf("http://%s/bytes/%d", addr, 1<<20)).Run()
				}
				if ctx.Err() != nil {
					err = nil
				}
				pulled <- err
			}()
			tm.await("a rate", regexp.MustCompile(`uiweb +ready +.*\d(\.\d)?[KM]/s`))
			cancel()
			if err := <-pulled; err != nil {
				t.Fatalf("curl through %s: %v", addr, err)
			}
			tm.keys("h")
			tm.await("curl's requests in the HTTP log", regexp.MustCompile(`GET /bytes/1048576 200 .* 1\.0M out`))
			tm.keys("Left")
			tm.await("the forwards again", regexp.MustCompile(`(?m)^uiweb: `))
			if size.w < 120 {
				// It resizes: wider, the wide columns; back, the narrow.
				tm.tmux("resize-window", "-t", "ui", "-x", "130", "-y", "30")
				tm.await("the wide columns after a resize", regexp.MustCompile(`NAME +STATE +HEALTH +POD`))
				tm.tmux("resize-window", "-t", "ui", "-x", strconv.Itoa(size.w), "-y", strconv.Itoa(size.h))
				tm.await("the narrow columns after a resize", regexp.MustCompile(`NAME +STATE +LOCAL`))
			}
			if size.w >= 120 {
				tm.await("the wide columns", regexp.MustCompile(`NAME +STATE +HEALTH +POD +LOCAL +CONN +IN +OUT .*RECON +ENDS +LAST ERROR`))
			}

			// Again, tied to this UI; then stop that one.
			tm.keys("Tab", "Enter")
			tm.await("the local port prompt", regexp.MustCompile(`local port: \d+_ \[tab\] kept when kpf ui exits`))
			tm.keys("Tab")
			tm.await("the choice to stop it with the UI", regexp.MustCompile(`\[tab\] stops when kpf ui exits`))
			tm.keys("Enter")
			tm.await("the tied forward started", regexp.MustCompile(`started uiweb-2 \(stops when kpf ui exits\)`))
			tm.keys("Tab")
			tm.await("the tied forward ready, with ui", regexp.MustCompile(`uiweb-2 +ready .*with ui`))
			tm.keys("Down")
			tm.await("the tied forward selected", regexp.MustCompile(`(?m)^uiweb-2: `))
			tm.keys("s")
			tm.await("the tied forward stopped", regexp.MustCompile(`stopped uiweb-2`))
			if st := k.status(t); len(st.Forwards) != 1 {
				t.Fatalf("after s: %+v", st.Forwards)
			}

			tm.keys("w")
			tm.await("the write prompt", regexp.MustCompile(`write the set to: kpf.yaml_`))
			// A paste (bracketed, as terminals send one) is text, its
			// line break left out: not Enter, and q does not quit.
			tm.tmux("set-buffer", "x\nq")
			tm.tmux("paste-buffer", "-p", "-t", "ui")
			tm.await("the paste, as text", regexp.MustCompile(`write the set to: kpf.yamlxq_`))
			tm.keys("BSpace", "BSpace")
			tm.await("the write prompt", regexp.MustCompile(`write the set to: kpf.yaml_`))
			tm.keys("Enter")
			file := filepath.Join(k.dir, "kpf.yaml")
			tm.await("the set written", regexp.MustCompile(`wrote `+regexp.QuoteMeta(file)))
			// One more tied to the UI, left running when it quits.
			tm.keys("Tab", "Enter")
			tm.await("the local port prompt", regexp.MustCompile(`local port: \d+_ \[tab\] kept when kpf ui exits`))
			tm.keys("Tab", "Enter")
			tm.await("the tied forward started", regexp.MustCompile(`started uiweb-2 \(stops when kpf ui exits\)`))
			tm.keys("q")
			sandboxtest.WaitFor(t, 10*time.Second, "kpf ui to exit", func() (bool, error) {
				return exec.Command("tmux", "-L", tm.socket, "has-session", "-t", "ui").Run() != nil, nil
			})

			// The tied forward stops with the UI; the kept one outlives it.
			var st statusJSON
			sandboxtest.WaitFor(t, 10*time.Second, "the tied forward to stop", func() (bool, error) {
				st = k.status(t)
				return len(st.Forwards) == 1, nil
			})
			if st.Forwards[0].Name != "uiweb" {
				t.Fatalf("after kpf ui exited: %+v", st.Forwards)
			}
			if _, err := fetch(addr, 1024); err != nil {
				t.Fatalf("the kept forward after kpf ui exited: %v", err)
			}
			if out, _ := k.run(t, "status"); !strings.Contains(out, "(started by ui, no file)") {
				t.Errorf("kpf status:\n%s", out)
			}

			// The commands the help names for l, h and r do the same.
			if out, code := k.run(t, "logs", "uiweb"); code != 0 || !strings.Contains(out, "uiweb: ready") {
				t.Errorf("kpf logs uiweb: exit %d\n%s", code, out)
			}
			if out, code := k.run(t, "logs", "--http", "uiweb"); code != 0 || !strings.Contains(out, `"path":"/bytes/1048576"`) {
				t.Errorf("kpf logs --http uiweb: exit %d\n%s", code, out)
			}
			if out, code := k.run(t, "restart", "uiweb"); code != 0 || !strings.Contains(out, "uiweb") {
				t.Errorf("kpf restart uiweb: exit %d\n%s", code, out)
			}

			// kpf status --save writes the same file (w's command).
			if out, code := k.run(t, "status", "--save", "saved.yaml"); code != 0 {
				t.Fatalf("kpf status --save: exit %d\n%s", code, out)
			}
			saved, _ := os.ReadFile(filepath.Join(k.dir, "saved.yaml"))
			if written, _ := os.ReadFile(file); string(saved) != string(written) {
				t.Errorf("kpf status --save wrote:\n%s\nkpf ui's w wrote:\n%s", saved, written)
			}

			// The file it wrote runs the same set.
			if out, code := k.run(t, "down", "uiweb"); code != 0 {
				t.Fatalf("kpf down uiweb: exit %d\n%s", code, out)
			}
			if out, code := k.run(t, "up", "-d", "--wait", "-f", file); code != 0 {
				b, _ := os.ReadFile(file)
				t.Fatalf("kpf up -d --wait -f %s: exit %d\n%s\n%s", file, code, out, b)
			}
			if _, err := fetch(addr, 1024); err != nil {
				t.Fatalf("through the forward of the written file: %v", err)
			}
			if size.w < 120 {
				return
			}

			// A on the namespace: kpf up --all -n NS -d, every service.
			tm = newTerm(t, k, size.w, size.h, "NO_COLOR=1")
			tm.await("the namespaces", regexp.MustCompile(`(?m)^> \S`))
			tm.text("/" + ns)
			tm.keys("Enter")
			tm.await("the namespace, filtered", regexp.MustCompile(`> `+ns))
			tm.text("A")
			tm.await("the namespace forwarded", regexp.MustCompile(`forwarding every service of `+ns+`, kept in step \(kpf down -f \S+ stops it\)`))
			tm.keys("Tab")
			tm.await("its forwards", regexp.MustCompile(`(?s)uiweb\.`+ns+`:80 .*file`))
			tm.keys("q")
			all, _ := filepath.Glob(filepath.Join(k.home, "all", "*", ns+".yaml"))
			if len(all) != 1 || !slices.Contains(k.status(t).Files, all[0]) {
				t.Fatalf("the daemon's files %v, want the one of kpf up --all -n %s (%v)", k.status(t).Files, ns, all)
			}
		})
	}
}
