package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

type httpLine struct {
	Kind, Method, Path, Pod, Conn, Reason string
	Status                                int
	RequestBytes, ResponseBytes           int64
	DurationSeconds                       float64
}

func readHTTPLog(t *testing.T, path string) ([]httpLine, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []httpLine
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var l httpLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out, string(b)
}

// TestHTTPLog: curl makes 100 keep-alive requests of mixed methods and
// sizes through a forward with --http-log, and a Python client pipelines
// 10 more: one line each, in order, with curl's own byte counts and
// statuses; no Authorization or Cookie value in the file. redis-benchmark
// through another port of the same forward is logged as "not HTTP" and
// runs as it would without the log.
func TestHTTPLog(t *testing.T) {
	needPrograms(t, "curl", "python3", "redis-server", "redis-benchmark")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: mixed, labels: {app: mixed}}
spec:
  containers:
  - {name: web, image: kpf.test/http, ports: [{containerPort: 8080}]}
  - name: redis
    image: redis
    command: [redis-server, --bind, $(KPF_POD_ADDR), --port, "6379", --save, "", --appendonly, "no"]
    ports: [{containerPort: 6379}]
    readinessProbe: {tcpSocket: {port: 6379}, periodSeconds: 1}
`)
	sb.ReadyPods(t, ns, "app=mixed", 1)
	logPath := filepath.Join(t.TempDir(), "http.log")
	p, ls := kpf(sb).start(t, 4, "-n", ns, "--http-log", logPath, "pod/mixed", ":8080", ":6379")
	web, redis := ls[0].Addr, ls[2].Addr

	// curl: 100 requests on one connection, reporting what it sent and got.
	type sent struct {
		method, path string
		status       int
		req, resp    int64
	}
	var want []sent
	args := []string{"-s", "-o", "/dev/null", "-H", "Authorization: Bearer kpf-http-log-secret", "-H", "Cookie: session=kpf-cookie-secret",
		"-w", `%{method} %{url_effective} %{http_code} %{size_request} %{size_upload} %{size_header} %{size_download} %{num_connects}\n`}
	body := filepath.Join(t.TempDir(), "body")
	os.WriteFile(body, []byte(strings.Repeat("x", 70000)), 0o600)
	for i := range 100 {
		if i > 0 {
			args = append(args, "--next", "-s", "-o", "/dev/null", "-H", "Authorization: Bearer kpf-http-log-secret",
				"-w", `%{method} %{url_effective} %{http_code} %{size_request} %{size_upload} %{size_header} %{size_download} %{num_connects}\n`)
		}
		switch i % 4 {
		case 0:
			args = append(args, fmt.Sprintf("http://%s/bytes/%d?i=%d", web, 1+i*997, i))
		case 1:
			args = append(args, "-X", "POST", "--data-binary", "@"+body, fmt.Sprintf("http://%s/echo?i=%d", web, i))
		case 2:
			args = append(args, "-I", fmt.Sprintf("http://%s/?i=%d", web, i))
		case 3:
			args = append(args, "-X", "PUT", "--data-binary", strings.Repeat("y", i), fmt.Sprintf("http://%s/sha256?i=%d", web, i))
		}
	}
	out, err := exec.Command("curl", args...).Output()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	connects := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 8 {
			t.Fatalf("curl -w: %q", line)
		}
		n := func(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }
		path := strings.TrimPrefix(f[1], "http://"+web)
		want = append(want, sent{f[0], path, int(n(f[2])), n(f[3]) + n(f[4]), n(f[5]) + n(f[6])})
		connects += int(n(f[7]))
	}
	if len(want) != 100 || connects != 1 {
		t.Fatalf("curl made %d requests on %d connections, want 100 on 1", len(want), connects)
	}

	// Python: 10 requests pipelined on one connection, then the answers.
	py := fmt.Sprintf(`
import socket, http.client
host, port = %q.rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.sendall(b"".join(b"GET /bytes/%%d?pipe=%%d HTTP/1.1\r\nHost: x\r\n\r\n" %% (100 + i, i) for i in range(10)))
f = s.makefile("rb")
for i in range(10):
    status = f.readline().split()
    assert status[1] == b"200", status
    headers = http.client.parse_headers(f)
    assert len(f.read(int(headers["Content-Length"]))) == 100 + i, i
print("ok")
`, web)
	if out, err := exec.Command("python3", "-c", py).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python pipelining: %v\n%s", err, out)
	}

	// redis-benchmark through the same forward, its own port.
	rhost, rport, _ := strings.Cut(redis, ":")
	bench, err := exec.Command("redis-benchmark", "-h", rhost, "-p", rport, "-n", "2000", "-c", "4", "-t", "set,get", "-q").CombinedOutput()
	if err != nil || strings.Count(string(bench), "requests per second") != 2 {
		t.Fatalf("redis-benchmark: %v\n%s", err, bench)
	}
	p.Stop()

	lines, raw := readHTTPLog(t, logPath)
	var reqs, pipelined []httpLine
	notHTTP := 0
	for _, l := range lines {
		switch {
		case l.Kind == "request" && strings.Contains(l.Path, "pipe="):
			pipelined = append(pipelined, l)
		case l.Kind == "request":
			reqs = append(reqs, l)
		case l.Kind == "not HTTP":
			notHTTP++
		}
	}
	if len(reqs) != 100 {
		t.Fatalf("%d request lines for curl's 100", len(reqs))
	}
	for i, w := range want {
		g := reqs[i]
		if g.Method != w.method || g.Path != w.path || g.Status != w.status || g.Pod != "mixed" {
			t.Errorf("request %d: logged %+v, curl says %+v", i, g, w)
		}
		switch i % 4 {
		case 0, 2:
			// No request body, a Content-Length response: curl's counts
			// are the bytes on the wire.
			if g.RequestBytes != w.req || g.ResponseBytes != w.resp {
				t.Errorf("request %d: logged %d/%d bytes, curl %d/%d", i, g.RequestBytes, g.ResponseBytes, w.req, w.resp)
			}
		default:
			// curl counts a small body twice (in size_request and
			// size_upload) and decoded chunked bodies; the log counts the
			// wire, chunk framing included.
			bodyLen := int64(i)
			if i%4 == 1 {
				bodyLen = 70000
			}
			if g.RequestBytes < bodyLen+100 || g.RequestBytes > w.req || g.ResponseBytes < w.resp || g.ResponseBytes > w.resp+64 {
				t.Errorf("request %d: logged %d/%d bytes, curl %d/%d, body %d", i, g.RequestBytes, g.ResponseBytes, w.req, w.resp, bodyLen)
			}
		}
	}
	for i, l := range pipelined {
		if l.Path != fmt.Sprintf("/bytes/%d?pipe=%d", 100+i, i) || l.Status != 200 {
			t.Errorf("pipelined %d: %+v", i, l)
		}
	}
	if len(pipelined) != 10 {
		t.Errorf("%d pipelined lines, want 10", len(pipelined))
	}
	if notHTTP < 1 {
		t.Errorf("redis-benchmark's connections were not logged as not HTTP:\n%s", raw)
	}
	for _, secret := range []string{"kpf-http-log-secret", "kpf-cookie-secret", "Bearer"} {
		if strings.Contains(raw, secret) {
			t.Errorf("the HTTP log holds %q", secret)
		}
	}
	t.Logf("%d requests, %d pipelined, %d not-HTTP connections; redis-benchmark: %s", len(reqs), len(pipelined), notHTTP, strings.Join(strings.Fields(string(bench)), " "))
}

// TestDaemonHTTPLog: httpLog: in kpf.yaml (relative to the file) in the
// daemon, read back with kpf logs --http NAME.
func TestDaemonHTTPLog(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n- name: web\n  namespace: %s\n  target: deployment/web\n  ports: [\"%d:8080\"]\n  httpLog: web-http.log\n", ns, freePort(t)))
	if out, code := k.run(t, "up", "-d", "--wait"); code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	addr := k.status(t).Forwards[0].Local[0]
	if out, err := exec.Command("curl", "-fsS", "-o", "/dev/null", "http://"+addr+"/bytes/123?from=daemon").CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	var out string
	sandboxtest.WaitFor(t, 10*time.Second, "the request in kpf logs --http web", func() (bool, error) {
		out, _ = k.run(t, "logs", "--http", "web")
		return strings.Contains(out, `"path":"/bytes/123?from=daemon"`), nil
	})
	if _, err := os.Stat(filepath.Join(k.dir, "web-http.log")); err != nil {
		t.Errorf("the log is not next to kpf.yaml: %v", err)
	}
	if !strings.Contains(out, `"status":200`) || !strings.Contains(out, `"forward":"web"`) {
		t.Errorf("kpf logs --http web:\n%s", out)
	}
	if out, code := k.run(t, "logs", "--http", "nosuch"); code == 0 || !strings.Contains(out, `no forward "nosuch"`) {
		t.Errorf("kpf logs --http nosuch: exit %d\n%s", code, out)
	}
}
