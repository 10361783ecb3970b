package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/pattern"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestBlackholeUnderDaemonForward (issue 26): the path between kpf and
// the API server drops every packet for 60 s, without a reset (Wi-Fi gone,
// a VPN reconnecting), under a daemon forward with an idle keep-alive
// connection and an active download. The download fails with an error
// within the liveness bound, not a hang; new connections work within 10 s
// of the network returning; the idle keep-alive connection neither hangs
// nor loses a request; and the daemon is the same process throughout, its
// forward ready again without a restart.
func TestBlackholeUnderDaemonForward(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "hole", 1)
	fp := newFaultPath(t, sb)
	k := newKpfCmd(t, sb)
	k.kubeconfig = fp.kubeconfig
	port := freePort(t)
	file := k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: hole, namespace: %s, target: deployment/hole, ports: [\"%d:8080\"]}\n", ns, port))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	pid := k.status(t).PID
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// The idle keep-alive connection: one request, then left open.
	keep := &http.Client{Timeout: hangAfter, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer keep.CloseIdleConnections()
	keepGet := func() error {
		resp, err := keep.Get("http://" + addr + "/bytes/1024")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var v pattern.Verifier
		if n, err := io.Copy(&v, resp.Body); err != nil || n != 1024 {
			return fmt.Errorf("%d bytes, %v", n, err)
		}
		return nil
	}
	if err := keepGet(); err != nil {
		t.Fatal(err)
	}

	// The active download: a checked stream far longer than the test,
	// read at a steady pace.
	dl, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	fmt.Fprintf(dl, "GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n", int64(1)<<40)
	type result struct {
		n   int64
		err error
		at  time.Time
	}
	got := make(chan int64, 1)
	done := make(chan result, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var n int64
		var v pattern.Verifier
		head := true
		for {
			dl.SetReadDeadline(time.Now().Add(hangAfter))
			k, err := dl.Read(buf)
			b := buf[:k]
			if head {
				if i := strings.Index(string(b), "\r\n\r\n"); i >= 0 {
					b, head = b[i+4:], false
				} else {
					b = nil
				}
			}
			if _, verr := v.Write(b); verr != nil {
				done <- result{n, fmt.Errorf("%w: %v", errCorrupt, verr), time.Now()}
				return
			}
			n += int64(len(b))
			if n >= 1<<20 {
				select {
				case got <- n:
				default:
				}
			}
			if err != nil {
				done <- result{n, err, time.Now()}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	select {
	case <-got:
	case r := <-done:
		t.Fatalf("the download ended before the fault after %d bytes: %v", r.n, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the download moved no MiB in 30 s")
	}

	logFile := filepath.Join(k.home, "daemon.log")
	before, _ := os.ReadFile(logFile)
	hole := both("timeout", map[string]any{"timeout": 0})
	fp.add(hole...)
	holed := time.Now()
	removed := false
	defer func() {
		if !removed {
			fp.remove(hole...)
		}
	}()
	r := <-done // the read deadline bounds this
	took := r.at.Sub(holed)
	switch {
	case isTimeout(r.err):
		t.Errorf("the download hung: no byte and no error for %s into the blackhole", hangAfter)
	case r.err == nil || strings.Contains(r.err.Error(), errCorrupt.Error()):
		t.Errorf("the download ended with %v", r.err)
	case !errors.Is(r.err, syscall.ECONNRESET):
		// A FIN would read as the stream's end: a client without a
		// length (a copy to EOF) would keep a truncated copy as whole.
		t.Errorf("the download ended with %v, want a reset", r.err)
	case took > livenessBound:
		t.Errorf("the download failed %s into the blackhole, beyond the liveness bound (%s)", took.Round(100*time.Millisecond), livenessBound)
	}
	t.Logf("the download failed %s into the blackhole, after %d bytes: %v", took.Round(100*time.Millisecond), r.n, r.err)

	// The hole lasts 60 s: the time is what is tested.
	time.Sleep(time.Until(holed.Add(60 * time.Second)))
	fp.remove(hole...)
	removed = true
	back := time.Now()
	var last error
	for {
		if last = getChecked(direct, addr, 64<<10, 5*time.Second); last == nil {
			break
		}
		if time.Since(back) > recoveryBound {
			t.Fatalf("no new connection worked within %s of the network returning: %v\n%+v", recoveryBound, last, k.status(t).Forwards)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a new connection worked %s after the network returned", time.Since(back).Round(100*time.Millisecond))

	// The keep-alive client's next request works, at once.
	start := time.Now()
	if err := keepGet(); err != nil {
		t.Errorf("the keep-alive client's request after the blackhole: %v", err)
	} else if d := time.Since(start); d > recoveryBound {
		t.Errorf("the keep-alive client's request after the blackhole took %s", d)
	}

	st := k.status(t)
	if st.PID != pid || len(st.Forwards) != 1 || st.Forwards[0].State != "ready" {
		t.Errorf("after the blackhole: daemon pid %d (was %d), forwards %+v", st.PID, pid, st.Forwards)
	}
	after, _ := os.ReadFile(logFile)
	lines, conns := said(strings.Split(string(after[min(len(before), len(after)):]), "\n"), 0)
	t.Logf("the daemon said %d lines (and %d about single connections):\n%s", len(lines), len(conns), strings.Join(append(lines, conns...), "\n"))
	for _, l := range lines {
		if strings.Contains(l, ": ready:  (") {
			t.Errorf("the daemon said it was ready again without where: %q", l)
		}
	}
	if len(lines) > chatter {
		t.Errorf("the daemon said %d lines about one blackhole, want at most %d", len(lines), chatter)
	}
}
