package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/kpf-dev/kpf/sandbox/workload"
)

// The proxies are real ones from Debian (scripts/deps.sh installs them):
// tinyproxy for HTTP CONNECT, microsocks for SOCKS5, both with a user and
// password, as in front of a private cluster.
const proxyUser, proxyPass = "alice", "pr0xy-s3cret"

// TestThroughProxies: with a proxy-url in the kubeconfig, kpf forwards
// byte-exact over both transports and, like kubectl side by side, has no
// connection to the API server but through the proxy.
func TestThroughProxies(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	api := portOf(t, sb.APIServer)
	for _, px := range []struct {
		name string
		url  string
	}{
		{"http", startTinyproxy(t, proxyUser+" "+proxyPass)},
		{"socks5", startMicrosocks(t, proxyUser, proxyPass)},
	} {
		cfg := kubeconfigVia(t, sb, px.url)
		proxyPort := portOf(t, px.url)
		for _, transport := range []string{"websocket", "spdy"} {
			t.Run(px.name+"/"+transport, func(t *testing.T) {
				ws := strconv.FormatBool(transport == "websocket")
				for _, f := range []struct {
					forwarder
					args []string
				}{
					// -v 10: not even client-go's tracing prints the password.
					{forwarder{name: "kpf", argv: func(args ...string) []string {
						return append([]string{kpfBin, "--kubeconfig", cfg, "-v", "10", "forward"}, args...)
					}}, []string{"--transport", transport}},
					{forwarder{name: "kubectl", env: []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=" + ws}, argv: func(args ...string) []string {
						return append([]string{sb.Kubectl, "--kubeconfig", cfg, "port-forward"}, args...)
					}}, nil},
				} {
					p, ls := f.start(t, 2, append(f.args, "-n", ns, "pod/bulk", ":9000")...)
					if err := workload.BulkDownload(ls[0].Addr, 8<<20, 30*time.Second); err != nil {
						t.Fatalf("%s: download: %v", f.name, err)
					}
					if err := workload.BulkUpload(ls[0].Addr, 8<<20, 30*time.Second); err != nil {
						t.Fatalf("%s: upload: %v", f.name, err)
					}
					// Request and answer on a new connection: proxies that
					// relay with Nagle's algorithm on (both of these) hold
					// a small segment until the one before is acknowledged,
					// which a delayed ACK puts off by 40 ms (kubectl pays it
					// on every round trip of its stream setup).
					p50 := echoP50(t, ls[0].Addr, 21)
					t.Logf("%s: new-connection echo p50 %v", f.name, p50)
					if f.name == "kpf" && p50 >= 20*time.Millisecond {
						t.Errorf("kpf: new-connection echo p50 %v through the proxy: a delayed ACK (40 ms) is back", p50)
					}
					// The tunnel that carried them is still open (kpf keeps
					// tunnels for reuse; kubectl has one for its life).
					remote := remotePorts(t, p.Cmd.Process.Pid)
					if remote[api] > 0 || remote[proxyPort] == 0 {
						t.Errorf("%s: %d connections to the API server's port %d, %d to the proxy's %d; want none and some",
							f.name, remote[api], api, remote[proxyPort], proxyPort)
					}
					p.Stop()
					basic := base64.StdEncoding.EncodeToString([]byte(proxyUser + ":" + proxyPass))
					if out := p.Output(); strings.Contains(out, proxyPass) || strings.Contains(out, basic) {
						t.Errorf("%s printed the proxy's password:\n%s", f.name, out)
					}
				}
			})
		}
	}
}

// TestProxyErrorsNameTheProxy: a proxy that is down, or refuses the user,
// is named (without its password) as what failed, not the API server.
func TestProxyErrorsNameTheProxy(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	good := startTinyproxy(t, proxyUser+" "+proxyPass)
	wrongPass := strings.Replace(good, proxyPass, "not-the-"+proxyPass, 1)
	down := fmt.Sprintf("http://%s:%s@127.0.0.1:%d", proxyUser, proxyPass, freePort(t))
	socks := startMicrosocks(t, proxyUser, proxyPass)
	socksWrongPass := strings.Replace(socks, proxyPass, "not-the-"+proxyPass, 1)
	for _, tc := range []struct {
		name, proxy, want string
	}{
		{"proxy down", down, "the proxy refused the connection (is the proxy running? check proxy-url in your kubeconfig)"},
		{"wrong password", wrongPass, "the proxy refused: Unauthorized (are the user and password in the proxy's URL right? check proxy-url in your kubeconfig)"},
		{"socks5 wrong password", socksWrongPass, "username/password authentication failed (check proxy-url in your kubeconfig)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := kubeconfigVia(t, sb, tc.proxy)
			f := forwarder{name: "kpf", argv: func(args ...string) []string {
				return append([]string{kpfBin, "--kubeconfig", cfg, "forward"}, args...)
			}}
			out, code := f.run(t, "-n", ns, "pod/bulk", ":9000")
			u, _ := url.Parse(tc.proxy)
			want := "error: cannot reach the API server at " + sb.APIServer + " through the proxy " + u.Redacted() + ": "
			if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d:\n%s\nwant %q ... %q", code, out, want, tc.want)
			}
			if strings.Contains(out, proxyPass) {
				t.Errorf("printed the proxy's password:\n%s", out)
			}
		})
	}
}

// echoP50 is the median time of n 64-byte echoes, each on a new
// connection to addr.
func echoP50(t *testing.T, addr string, n int) time.Duration {
	t.Helper()
	payload := make([]byte, 64)
	var ds []time.Duration
	for range n {
		start := time.Now()
		if err := workload.BulkEcho(addr, payload, 10*time.Second); err != nil {
			t.Fatalf("echo through %s: %v", addr, err)
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// TestForwardOutlivesItsProxy: while the proxy is down, a new connection
// waits, and the log says it waits for a tunnel (naming the proxy), not
// for a pod; once the proxy is back the connection goes through.
func TestForwardOutlivesItsProxy(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	port := freePort(t)
	proxy, px, _ := runTinyproxy(t, port, "")
	cfg := kubeconfigVia(t, sb, proxy)
	f := forwarder{name: "kpf", argv: func(args ...string) []string {
		return append([]string{kpfBin, "--kubeconfig", cfg, "forward"}, args...)
	}}
	p, ls := f.start(t, 2, "-n", ns, "--reconnect-wait", "90s", "pod/bulk", ":9000")
	payload := []byte("through the proxy, before and after")
	if err := workload.BulkEcho(ls[0].Addr, payload, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	px.Stop()
	// Once kpf has seen its tunnels go with the proxy: a connection made in
	// that instant can land on a tunnel that is dying, and fail (see the
	// known limits in the README).
	p.WaitLine(t, `tunnel failed" pod=bulk err="tunnel lost"`, 30*time.Second)
	result := make(chan error, 1)
	go func() { result <- workload.BulkEcho(ls[0].Addr, payload, 90*time.Second) }()
	p.WaitLine(t, `waiting for a tunnel" pod=bulk`, 30*time.Second)
	p.WaitLine(t, `tunnel failed" pod=bulk err="proxy http://127\.0\.0\.1:`+strconv.Itoa(port)+`: .*connection refused"`, 30*time.Second)
	if strings.Contains(p.Output(), "waiting for a ready pod") {
		t.Errorf("a pod that is ready was reported missing:\n%s", p.Output())
	}
	runTinyproxy(t, port, "")
	awaitWaitingConn(t, p, result, 90*time.Second)
}

// TestRunThroughAProxy: kpf run, as in a CI job, with health checks and
// the job's own requests through an HTTP proxy with a password.
func TestRunThroughAProxy(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "api", 1)
	port := freePort(t)
	proxy, _, log := runTinyproxy(t, port, proxyUser+" "+proxyPass)
	k := newKpfCmd(t, sb)
	k.kubeconfig = kubeconfigVia(t, sb, proxy)
	k.write(t, "kpf.yaml", fmt.Sprintf("forwards:\n  - {name: my-api, namespace: %s, target: svc/api, ports: [\":80\"], health: {path: /healthz}}\n", ns))
	c := k.cmd("run", "--", "sh", "-c", `curl -fsS "http://$KPF_MY_API_ADDR/" && exit 7`)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if exitCode(err) != 7 || !strings.Contains(out.String(), "pod api-") {
		t.Fatalf("kpf run through the proxy: exit %d, want 7:\n%s", exitCode(err), out.String())
	}
	if strings.Contains(out.String(), proxyPass) {
		t.Errorf("kpf run printed the proxy's password:\n%s", out.String())
	}
	b, err := os.ReadFile(log)
	api := strings.TrimPrefix(sb.APIServer, "https://")
	if err != nil || !strings.Contains(string(b), "CONNECT "+api+" ") {
		t.Errorf("the proxy's log has no CONNECT %s (%v):\n%s", api, err, b)
	}
}

// needTool finds a program the tests need; CI must have it (scripts/deps.sh
// installs it), elsewhere the test is skipped with what to install.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed: run scripts/deps.sh", name)
		}
		t.Skipf("%s is not installed (scripts/deps.sh installs it)", name)
	}
	return p
}

// startTinyproxy runs tinyproxy on a free loopback port, requiring the
// basic auth "user password" if given, and returns its URL (with them).
func startTinyproxy(t *testing.T, auth string) string {
	u, _, _ := runTinyproxy(t, freePort(t), auth)
	return u
}

// runTinyproxy runs tinyproxy on port, as startTinyproxy; it also returns
// the process and its log (one line per CONNECT).
func runTinyproxy(t *testing.T, port int, auth string) (string, *sandboxtest.Proc, string) {
	bin := needTool(t, "tinyproxy")
	dir := t.TempDir()
	log := filepath.Join(dir, "tinyproxy.log")
	conf := fmt.Sprintf("Port %d\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 100\nLogLevel Connect\nLogFile %q\n", port, log)
	userinfo := ""
	if auth != "" {
		conf += "BasicAuth " + auth + "\n"
		userinfo = strings.Replace(auth, " ", ":", 1) + "@"
	}
	if err := os.WriteFile(filepath.Join(dir, "tinyproxy.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := sandboxtest.Start(t, exec.Command(bin, "-d", "-c", filepath.Join(dir, "tinyproxy.conf")))
	waitListening(t, "tinyproxy", port)
	return fmt.Sprintf("http://%s127.0.0.1:%d", userinfo, port), p, log
}

// startMicrosocks runs microsocks on a free loopback port with a user and
// password, and returns its URL (with them).
func startMicrosocks(t *testing.T, user, pass string) string {
	bin := needTool(t, "microsocks")
	port := freePort(t)
	sandboxtest.Start(t, exec.Command(bin, "-i", "127.0.0.1", "-p", strconv.Itoa(port), "-u", user, "-P", pass))
	waitListening(t, "microsocks", port)
	return fmt.Sprintf("socks5://%s:%s@127.0.0.1:%d", user, pass, port)
}

func waitListening(t *testing.T, what string, port int) {
	sandboxtest.WaitFor(t, 10*time.Second, what+" listening", func() (bool, error) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
}

// kubeconfigVia is the admin kubeconfig with proxy-url set on its clusters.
func kubeconfigVia(t *testing.T, sb *sandboxtest.Sandbox, proxy string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := sandboxtest.WriteKubeconfigVia(sb.Kubeconfig(cluster.UserAdmin), proxy, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func portOf(t *testing.T, rawURL string) int {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("no port in %s", rawURL)
	}
	return p
}

// remotePorts counts process pid's established TCP connections by remote
// port (from /proc: its socket descriptors, and the kernel's TCP tables).
func remotePorts(t *testing.T, pid int) map[int]int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	ports := map[int]int{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(fields[2], ":")
			if port, err := strconv.ParseInt(portHex, 16, 32); err == nil {
				ports[int(port)]++
			}
		}
		f.Close()
	}
	return ports
}
