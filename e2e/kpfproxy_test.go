package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/pattern"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// startProxy runs kpf proxy on a free loopback port and returns it with
// the address it serves.
func startProxy(t *testing.T, sb *sandboxtest.Sandbox, args ...string) (*sandboxtest.Proc, string) {
	t.Helper()
	argv := append([]string{"--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "proxy", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, args...)
	p := sandboxtest.Start(t, exec.Command(kpfBin, argv...))
	return p, p.WaitLine(t, `^Proxying from (\S+) `, 30*time.Second)[1]
}

// curlVia runs curl with proxy arguments and returns its output and exit
// code.
func curlVia(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "60"}, args...)...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// checkPattern checks that file holds exactly n pattern bytes.
func checkPattern(t *testing.T, file string, n int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v pattern.Verifier
	if _, err := v.Write(b); err != nil || len(b) != n {
		t.Fatalf("%s: %d bytes (want %d), %v", file, len(b), n, err)
	}
}

// TestProxyReachesServicesByName: curl through SOCKS5 (remote names), HTTP
// CONNECT and plain HTTP reaches a service by each of its names, a
// StatefulSet pod by its headless name, byte for byte; unknown names and
// ports say what exists.
func TestProxyReachesServicesByName(t *testing.T) {
	needPrograms(t, "curl")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, httpApp("api", 2))
	sts := strings.Replace(httpApp("db", 1), "kind: Deployment", "kind: StatefulSet", 1)
	sts = strings.Replace(sts, "spec:\n  replicas", "spec:\n  serviceName: db\n  replicas", 1)
	sts = strings.Replace(sts, "spec:\n  selector: {app: db}", "spec:\n  clusterIP: None\n  selector: {app: db}", 1)
	sb.Apply(t, ns, sts)
	sb.ReadyPods(t, ns, "app=api", 2)
	sb.ReadyPods(t, ns, "app=db", 1)
	p, addr := startProxy(t, sb, "-n", ns)

	modes := map[string][]string{
		"socks5":  {"--socks5-hostname", addr},
		"connect": {"-p", "-x", "http://" + addr},
		"http":    {"-x", "http://" + addr},
	}
	for mode, via := range modes {
		for _, name := range []string{"api", "api." + ns, "api." + ns + ".svc.cluster.local:80"} {
			out, code := curlVia(t, append(via, "http://"+name+"/")...)
			if code != 0 || !strings.HasPrefix(out, "pod api-") || !strings.Contains(out, "namespace "+ns) {
				t.Errorf("%s %s: exit %d: %q", mode, name, code, out)
			}
		}
		file := filepath.Join(t.TempDir(), "body")
		const n = 64 << 20
		out, code := curlVia(t, append(via, "-o", file, fmt.Sprintf("http://db-0.db.%s.svc.cluster.local:8080/bytes/%d", ns, n))...)
		if code != 0 {
			t.Fatalf("%s: 64 MiB from db-0: exit %d: %s", mode, code, out)
		}
		checkPattern(t, file, n)
	}

	// Unknown names and ports: the HTTP answers say what exists; SOCKS5
	// has only codes, and kpf's log says the rest.
	out, _ := curlVia(t, "-x", "http://"+addr, "http://apx."+ns+"/")
	if want := fmt.Sprintf(`no service "apx" in namespace %q (api, db)`, ns); !strings.Contains(out, want) {
		t.Errorf("unknown service: %q, want %q", out, want)
	}
	out, _ = curlVia(t, "-x", "http://"+addr, "http://api."+ns+":81/")
	if want := fmt.Sprintf(`no port 81 on service/api in namespace %q (80/main)`, ns); !strings.Contains(out, want) {
		t.Errorf("unknown port: %q, want %q", out, want)
	}
	out, code := curlVia(t, "--socks5-hostname", addr, "http://apx."+ns+"/")
	if code != 97 || !strings.Contains(p.Output(), `dest=apx.`+ns+`:80`) {
		t.Errorf("SOCKS5 unknown service: exit %d %q; kpf said:\n%s", code, out, p.Output())
	}
	out, code = curlVia(t, "-p", "-x", "http://"+addr, "http://example.com/")
	if code == 0 || !strings.Contains(out, "403") {
		t.Errorf("a name outside the cluster: exit %d %q, want CONNECT refused with 403", code, out)
	}
}

// TestProxyRolloutLosesNoRequest: requests through the proxy while the
// service's deployment rolls: none fails, and they end on the new pods.
func TestProxyRolloutLosesNoRequest(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "roll", 2)
	_, addr := startProxy(t, sb, "-n", ns)
	px, _ := url.Parse("socks5h://" + addr)
	tr := startTrafficWith(func() (string, error) {
		return fetchWith(&http.Transport{Proxy: http.ProxyURL(px), DisableKeepAlives: true}, "roll."+ns, 256<<10)
	})
	waitSuccesses(t, tr, 5)
	rollout(t, sb, ns, "deployment/roll")
	newPods := sb.ReadyPods(t, ns, "app=roll", 2)
	waitSuccesses(t, tr, tr.ok.Load()+5)
	last := tr.finish(t)
	if last != newPods[0].Name && last != newPods[1].Name {
		t.Errorf("the last request went to %s, not a new pod", last)
	}
}

// TestProxyEnvAndCommand: Python's urllib reaches an HTTPS service with
// the variables kpf proxy --env prints (CONNECT, TLS to the pod), and kpf
// proxy -- COMMAND exits with the command's code, leaving nothing behind.
func TestProxyEnvAndCommand(t *testing.T) {
	needPrograms(t, "curl", "python3")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	dir := t.TempDir()
	writeSelfSigned(t, dir, "tls."+ns)
	sb.Apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: tls, labels: {app: tls}}
spec:
  containers:
  - name: tls
    image: python
    command: [python3, -c, "import http.server,ssl,os; s=http.server.HTTPServer((os.environ['KPF_POD_ADDR'],8443), http.server.SimpleHTTPRequestHandler); c=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('%[1]s/cert.pem','%[1]s/key.pem'); s.socket=c.wrap_socket(s.socket, server_side=True); os.chdir('%[1]s'); s.serve_forever()"]
    ports: [{containerPort: 8443}]
    readinessProbe: {tcpSocket: {port: 8443}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: tls}
spec:
  selector: {app: tls}
  ports: [{port: 443, targetPort: 8443}]
`, dir))
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello over TLS\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sb.ReadyPods(t, ns, "app=tls", 1)
	_, addr := startProxy(t, sb, "-n", ns)

	env, err := exec.Command(kpfBin, "proxy", "--env", "--listen", addr).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"export HTTPS_PROXY=http://" + addr + "\n", "export ALL_PROXY=socks5h://" + addr + "\n", "export no_proxy=localhost,127.0.0.1,::1\n"} {
		if !strings.Contains(string(env), want) {
			t.Errorf("kpf proxy --env lacks %q:\n%s", want, env)
		}
	}
	py := fmt.Sprintf(`import ssl, urllib.request; print(urllib.request.urlopen("https://tls.%s/hello.txt", context=ssl.create_default_context(cafile=%q), timeout=30).read().decode().strip())`, ns, filepath.Join(dir, "cert.pem"))
	out, err := exec.Command("sh", "-c", string(env)+"\nexec python3 -c '"+py+"'").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hello over TLS" {
		t.Errorf("urllib with kpf proxy --env: %v\n%s", err, out)
	}

	// kpf proxy -- COMMAND: the command's exit code, nothing left running.
	port := freePort(t)
	cmd := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "-n", ns, "proxy", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--",
		"sh", "-c", `curl -fsS --cacert "$1" "https://tls.$2/hello.txt" && exit 7`, "sh", filepath.Join(dir, "cert.pem"), ns)
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 || !strings.Contains(string(out), "hello over TLS") {
		t.Errorf("kpf proxy -- sh -c 'curl ... && exit 7': %v\n%s", err, out)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Errorf("something still listens on the proxy's port after the command ended")
	}
}

// TestProxyListenNeedsAuth: a non-loopback --listen without --auth is
// refused; with it, a wrong password is refused and the right one works.
func TestProxyListenNeedsAuth(t *testing.T) {
	needPrograms(t, "curl")
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	out, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "proxy", "--listen", "0.0.0.0:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--listen 0.0.0.0:0 is reachable from other machines") || !strings.Contains(string(out), "--auth USER:PASSWORD") {
		t.Fatalf("non-loopback without --auth: %v\n%s", err, out)
	}
	port := freePort(t)
	cmd := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "-n", ns, "proxy", "--listen", fmt.Sprintf("0.0.0.0:%d", port))
	cmd.Env = append(os.Environ(), "KPF_PROXY_AUTH=ann:s3cret")
	p := sandboxtest.Start(t, cmd)
	p.WaitLine(t, `^Proxying from `, 30*time.Second)
	if !strings.Contains(p.Output(), "reachable from other machines") {
		t.Errorf("no warning for a non-loopback proxy:\n%s", p.Output())
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--socks5-hostname", addr}, false},
		{[]string{"--socks5-hostname", addr, "--proxy-user", "ann:wrong"}, false},
		{[]string{"--socks5-hostname", addr, "--proxy-user", "ann:s3cret"}, true},
		{[]string{"-x", "http://" + addr}, false},
		{[]string{"-x", "http://ann:wrong@" + addr}, false},
		{[]string{"-x", "http://ann:s3cret@" + addr}, true},
	} {
		out, code := curlVia(t, append(tc.args, "-f", "http://api/")...)
		if ok := code == 0 && strings.HasPrefix(out, "pod api-"); ok != tc.ok {
			t.Errorf("curl %v: exit %d %q, want success %v", tc.args, code, out, tc.ok)
		}
	}
	if strings.Contains(p.Output(), "s3cret") {
		t.Errorf("kpf printed the password:\n%s", p.Output())
	}
}

// writeSelfSigned writes cert.pem and key.pem for name into dir.
func writeSelfSigned(t *testing.T, dir, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// TestProxyFromFile: a proxies: entry of kpf.yaml runs in the daemon next
// to a forward; curl reaches a service through it; kpf status shows its
// connections and bytes, the metrics endpoint its counters; kpf down stops
// it and frees its port.
func TestProxyFromFile(t *testing.T) {
	needPrograms(t, "curl")
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	k := newKpfCmd(t, sb)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	file := k.write(t, "kpf.yaml", fmt.Sprintf("defaults: {namespace: %s}\nmetrics: %q\nproxies:\n- {name: shop, listen: %q}\nforwards:\n- {name: api, target: svc/api, ports: [\":80\"]}\n", ns, metricsAddr, listen))
	if out, code := k.run(t, "up", "-d", "--wait", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	for range 3 {
		if out, code := curlVia(t, "-f", "--socks5-hostname", listen, "http://api/"); code != 0 || !strings.HasPrefix(out, "pod api-") {
			t.Fatalf("curl through the file's proxy: exit %d %q", code, out)
		}
	}
	var row *statusRow
	st := k.status(t)
	for i := range st.Forwards {
		if st.Forwards[i].Name == "shop" {
			row = &st.Forwards[i]
		}
	}
	if row == nil || row.State != "ready" || len(row.Local) != 1 || row.Local[0] != listen || row.Connections != 3 || row.BytesIn == 0 || row.BytesOut == 0 {
		t.Fatalf("status of the proxy: %+v", row)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`kpf_proxy_connections_total{file=%q,forward="shop"} 3`, file); !strings.Contains(string(b), want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(string(b), "kpf_proxy_"))
	}
	// The daemon's audit log has a line per proxied connection, with the
	// name the client asked for and the bytes each way.
	var lines int
	var moved int64
	logText, _ := os.ReadFile(filepath.Join(k.home, "audit.log"))
	for _, l := range strings.Split(string(logText), "\n") {
		var rec struct {
			Name                      string `json:"forward"`
			Dest, Target, Pod, Result string
			BytesIn                   int64
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Name == "shop" && rec.Dest == "api:80" {
			if rec.Target != "service/api" || !strings.HasPrefix(rec.Pod, "api-") || rec.Result != "ok" {
				t.Errorf("audit line: %s", l)
			}
			lines++
			moved += rec.BytesIn
		}
	}
	if lines != 3 || moved != row.BytesIn {
		t.Errorf("audit log: %d lines for the proxy with %d bytes to the client, want 3 with %d:\n%s", lines, moved, row.BytesIn, logText)
	}
	if out, code := k.run(t, "down", "-f", file); code != 0 {
		t.Fatalf("kpf down: exit %d\n%s", code, out)
	}
	if c, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		c.Close()
		t.Error("the proxy's port still answers after kpf down")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
