package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// curlAPI makes one request of the daemon's API with curl over its unix
// socket and returns the HTTP status and body.
func curlAPI(t *testing.T, sock, method, path, body string, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"-sS", "--unix-socket", sock, "-X", method, "-o", "-", "-w", "\n%{http_code}"}, extra...)
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data", body)
	}
	out, err := runWithin(t, exec.Command("curl", append(args, "http://kpf"+path)...), 60*time.Second)
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	code, cerr := strconv.Atoi(s[i+1:])
	if cerr != nil && err != nil {
		t.Fatalf("curl %s %s: %v\n%s", method, path, err, out)
	}
	return code, s[:max(i, 0)]
}

// documentedOperations are METHOD PATH of docs/api/openapi.yaml.
func documentedOperations(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../docs/api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pathRE, methodRE := regexp.MustCompile(`^  (/v1/\S*):$`), regexp.MustCompile(`^    (get|post|delete|put|patch):`)
	var out []string
	path := ""
	for _, l := range strings.Split(string(b), "\n") {
		if m := pathRE.FindStringSubmatch(l); m != nil {
			path = m[1]
		} else if m := methodRE.FindStringSubmatch(l); m != nil && path != "" {
			out = append(out, strings.ToUpper(m[1])+" "+path)
		}
	}
	return out
}

// Every documented path answers curl over the unix socket as documented:
// with JSON, and errors as {code, message}.
func TestDaemonAPIWithCurl(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "apiweb", 1)
	k := newKpfCmd(t, sb)
	port := freePort(t)
	file := k.write(t, "kpf.yaml", fmt.Sprintf(`forwards:
  - {name: web, namespace: %s, target: svc/apiweb, ports: [":80"], httpLog: web.log}
proxies:
  - {name: px, listen: "127.0.0.1:%d"}
`, ns, port))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s"); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	sock := filepath.Join(k.home, "kpf.sock")
	var web statusRow
	for _, f := range k.status(t).Forwards {
		if f.Name == "web" {
			web = f
		}
	}
	if _, err := fetch(web.Local[0], 1024); err != nil {
		t.Fatal(err)
	}
	f := "file=" + file
	type call struct {
		op, path, body string
		want           int
		has            string
	}
	calls := []call{
		{"GET /v1/status", "/v1/status", "", 200, `"totals":{"forwards":2`},
		{"GET /v1/files", "/v1/files", "", 200, `"proxies":["px"]`},
		{"GET /v1/forwards", "/v1/forwards?" + f, "", 200, `"name":"web"`},
		{"GET /v1/forwards/{name}", "/v1/forwards/web", "", 200, `"state":"ready"`},
		{"GET /v1/proxies", "/v1/proxies", "", 200, `"kind":"proxy"`},
		{"GET /v1/proxies/{name}", "/v1/proxies/px", "", 200, `"name":"px"`},
		{"POST /v1/apply", "/v1/apply", `{"file":"kpf.yaml"}`, 400, `{"code":"bad_request","message":"bad request: file \"kpf.yaml\" is not an absolute path"}`},
		{"POST /v1/forwards", "/v1/forwards", `{"target":"svc/apiweb","ports":["80"],"address":"0.0.0.0"}`, 400, `"message":"address \"0.0.0.0\": a forward started without a file listens on loopback only`},
		{"GET /v1/forwards/{name}/doctor", "/v1/forwards/web/doctor", "", 200, `"step":"transports"`},
		{"GET /v1/forwards/{name}/logs", "/v1/forwards/web/logs?lines=5", "", 200, `ready`},
		{"GET /v1/forwards/{name}/httplog", "/v1/forwards/web/httplog?lines=5", "", 200, `\"method\":\"GET\"`},
		{"GET /v1/logs", "/v1/logs?lines=5&" + f, "", 200, `"lines":[`},
		{"POST /v1/forwards/{name}/restart", "/v1/forwards/web/restart", "", 200, `"names":["web"]`},
		{"POST /v1/wait", "/v1/wait?timeout=60s&" + f, "", 200, `"state":"ready"`},
		{"POST /v1/restart", "/v1/restart", fmt.Sprintf(`{"file":%q,"names":["px"]}`, file), 200, `"names":["px"]`},
		{"DELETE /v1/forwards/{name}", "/v1/forwards/web", "", 200, `"state":"stopped"`},
		{"GET /v1/forwards/{name}", "/v1/forwards/nope", "", 404, `{"code":"not_found","message":"the daemon runs no forward \"nope\" (running: none)"}`},
		{"POST /v1/down", "/v1/down", `{"all":true}`, 200, `"daemonExits":true`},
	}
	var made []string
	for _, c := range calls {
		method, _, _ := strings.Cut(c.op, " ")
		code, body := curlAPI(t, sock, method, c.path, c.body)
		if code != c.want || !strings.Contains(body, c.has) {
			t.Errorf("curl -X %s %s: %d %s\nwant %d with %s", method, c.path, code, body, c.want, c.has)
		}
		if !json.Valid([]byte(body)) {
			t.Errorf("curl -X %s %s: not JSON: %s", method, c.path, body)
		}
		made = append(made, c.op)
	}
	// The event stream, read by curl until it gives up.
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s"); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	out, _ := runWithin(t, exec.Command("curl", "-sS", "-N", "--max-time", "2", "--unix-socket", sock, "http://kpf/v1/events?counters=1"), 30*time.Second)
	if !strings.Contains(string(out), ": kpf daemon events") || !strings.Contains(string(out), "event: counters\ndata: {") {
		t.Errorf("curl /v1/events: %s", out)
	}
	made = append(made, "GET /v1/events")
	for _, op := range documentedOperations(t) {
		if !slices.Contains(made, op) {
			t.Errorf("%s is documented but not tried here", op)
		}
	}
}

// A pod deleted under a forward: the event stream, read by curl, tells
// the switch to another pod within a second.
func TestEventStreamTellsAPodSwitch(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "apiswitch", 2)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: web, namespace: %s, target: svc/apiswitch, ports: [\":80\"]}\n", ns))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s"); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	pod := k.status(t).Forwards[0].Pod
	curl := sandboxtest.Start(t, exec.Command("curl", "-sS", "-N", "--unix-socket", filepath.Join(k.home, "kpf.sock"), "http://kpf/v1/events"))
	curl.WaitLine(t, "^: kpf daemon events", 10*time.Second)
	deleted := time.Now()
	if out, err := sb.KubectlRun(t, "delete", "pod", "-n", ns, pod, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	m := curl.WaitLine(t, `^data: (\{"id":\d+,.*"type":"pod".*\})$`, 10*time.Second)
	took := time.Since(deleted)
	var e struct{ Forward, Pod, Message string }
	json.Unmarshal([]byte(m[1]), &e)
	if e.Forward != "web" || e.Pod == pod || e.Pod == "" {
		t.Fatalf("pod event %s: want web on another pod than %s", m[1], pod)
	}
	if took > time.Second {
		t.Errorf("the switch event came %s after the delete, want within 1s", took.Round(time.Millisecond))
	}
	t.Logf("switch event (%s) %s after the delete began", e.Message, took.Round(time.Millisecond))
}

// The TCP listener: without the token 401, from a web page of another
// site 403, with the token the API; no CORS headers.
func TestDaemonAPIOverTCP(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "apitcp", 1)
	k := newKpfCmd(t, sb)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: web, namespace: %s, target: svc/apitcp, ports: [\":80\"]}\n", ns))
	if out, code := k.run(t, "up", "-d", "--api-addr", "0.0.0.0:7070"); code == 0 || !strings.Contains(out, `--api-addr "0.0.0.0:7070": the daemon's API listens on loopback only`) {
		t.Fatalf("kpf up -d --api-addr 0.0.0.0:7070: exit %d\n%s", code, out)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "60s", "--api-addr", addr); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	token, err := os.ReadFile(filepath.Join(k.home, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(k.home, "api-token")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("api-token mode %v, want 0600", fi.Mode().Perm())
	}
	bearer := "Authorization: Bearer " + strings.TrimSpace(string(token))
	for _, c := range []struct {
		name    string
		headers []string
		want    int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"another site", []string{bearer, "Origin: https://evil.example"}, http.StatusForbidden},
		{"token", []string{bearer}, http.StatusOK},
	} {
		args := []string{"-sS", "-D", "-", "-o", "/dev/null", "-w", "%{http_code}"}
		for _, h := range c.headers {
			args = append(args, "-H", h)
		}
		out, err := runWithin(t, exec.Command("curl", append(args, "http://"+addr+"/v1/status")...), 30*time.Second)
		if err != nil {
			t.Fatalf("%s: curl: %v\n%s", c.name, err, out)
		}
		s := string(out)
		if !strings.HasSuffix(s, strconv.Itoa(c.want)) || strings.Contains(strings.ToLower(s), "access-control-allow") {
			t.Errorf("%s: %s\nwant %d and no CORS headers", c.name, s, c.want)
		}
	}
}
