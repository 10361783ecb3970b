package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// needPodNetwork fails a test whose relay must reach another pod at its
// IP, which the sandbox gives pods only on its pod network (as root).
func needPodNetwork(t *testing.T) {
	t.Helper()
	if _, err := net.InterfaceByName("kpfsb0"); err != nil {
		t.Fatal("the sandbox runs without a pod network (pods in network namespaces of their own, which needs root): UDP's relay cannot reach the target pod")
	}
}

var (
	relayOnce   sync.Once
	relayErr    error
	ownRelayRef string // this build's relay image under a reference of its own
)

// loadRelayImage builds this kpf's relay image as the release does (an
// OCI image layout from cmd/kpf-relay-image, the kpf binary its
// entrypoint) and loads it into the sandbox, as a node pulls an image:
// under kpf relay image's reference, and under one of its own build
// (ownRelayImage).
func loadRelayImage(t *testing.T, sb *sandboxtest.Sandbox) {
	t.Helper()
	relayOnce.Do(func() { relayErr = buildRelayImage(sb) })
	if relayErr != nil {
		t.Fatal(relayErr)
	}
}

func buildRelayImage(sb *sandboxtest.Sandbox) error {
	ref, err := exec.Command(kpfBin, "relay", "image").Output()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(kpfBin)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	own := "kpf.example/relay:" + hex.EncodeToString(sum[:8])
	layout, err := os.MkdirTemp("", "kpf-relay-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(layout)
	build := exec.Command("go", "run", "./cmd/kpf-relay-image", "-out", layout, "-ref", strings.TrimSpace(string(ref)), "-created", "0", "linux/"+runtime.GOARCH+"="+kpfBin)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("kpf-relay-image: %v\n%s", err, out)
	}
	for _, r := range []string{strings.TrimSpace(string(ref)), own} {
		if out, err := exec.Command(sb.Bin, "image", "load", r, layout).CombinedOutput(); err != nil {
			return fmt.Errorf("kpf-sandbox image load %s: %v\n%s", r, err, out)
		}
	}
	ownRelayRef = own
	return nil
}

// ownRelayImage is this build's relay image, loaded under a reference of
// its own (its binary's hash) rather than kpf relay image's, which every
// kpf build on this machine shares: the sandbox may be shared, and a test
// of another build that loads its own kpf there in the meantime must not
// make these relays run another kpf.
func ownRelayImage(t *testing.T, sb *sandboxtest.Sandbox) string {
	t.Helper()
	loadRelayImage(t, sb)
	return ownRelayRef
}

// startUDP runs kpf forward and returns the local address of each /udp
// port, in order.
func startUDP(t *testing.T, sb *sandboxtest.Sandbox, want int, args ...string) (*sandboxtest.Proc, []string) {
	t.Helper()
	// This build's own relay image (a test's own --relay-image, later in
	// args, wins).
	cmd := exec.Command(kpfBin, append([]string{"--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "forward", "--relay-image", ownRelayImage(t, sb)}, args...)...)
	p := sandboxtest.Start(t, cmd)
	var addrs []string
	for len(addrs) < want {
		m := p.WaitLine(t, `^Forwarding from (127\.0\.0\.1:\d+) -> \d+/udp$`, 150*time.Second)
		addrs = nil
		for _, l := range strings.Split(p.Output(), "\n") {
			var a string
			if _, err := fmt.Sscanf(l, "Forwarding from %s ->", &a); err == nil && strings.HasPrefix(a, "127.0.0.1:") && strings.HasSuffix(l, "/udp") {
				addrs = append(addrs, a)
			}
		}
		_ = m
	}
	return p, addrs
}

const udpEchoApp = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: uecho}
spec:
  replicas: 1
  selector: {matchLabels: {app: uecho}}
  template:
    metadata: {labels: {app: uecho}}
    spec:
      containers:
      - {name: echo, image: kpf.test/udp-echo, ports: [{name: dns, containerPort: 5300, protocol: UDP}, {name: web, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: uecho}
spec:
  selector: {app: uecho}
  ports: [{name: dns, port: 53, targetPort: dns, protocol: UDP}]
`

// udpEchoForward runs kpf forward svc/uecho :53/udp in a namespace of the
// test's, and returns its relay pod.
func udpEchoForward(t *testing.T) (*sandboxtest.Sandbox, string, *sandboxtest.Proc, []string, corev1.Pod) {
	t.Helper()
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, udpEchoApp)
	sb.ReadyPods(t, ns, "app=uecho", 1)
	p, addrs := startUDP(t, sb, 1, "-n", ns, "svc/uecho", ":53/udp")
	relays, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=udp"})
	if err != nil || len(relays.Items) != 1 {
		t.Fatalf("relay pods: %v, %v", relays, err)
	}
	return sb, ns, p, addrs, relays.Items[0]
}

// TestUDPEcho: 10,000 datagrams of random sizes (1 to 65,507 bytes) from
// 8 local peers at once through kpf forward svc/uecho :53/udp: every one
// comes back to the peer that sent it, byte for byte. The relay pod is
// labelled with who made it, non-root and read-only, and goes when kpf
// stops.
func TestUDPEcho(t *testing.T) {
	sb, ns, p, addrs, rp := udpEchoForward(t)
	sc := rp.Spec.Containers[0].SecurityContext
	if rp.Labels["kpf.dev/pid"] != fmt.Sprint(p.Cmd.Process.Pid) || *rp.Spec.AutomountServiceAccountToken || !*sc.ReadOnlyRootFilesystem || !*rp.Spec.SecurityContext.RunAsNonRoot || rp.Spec.ActiveDeadlineSeconds == nil {
		t.Errorf("relay pod %s: labels %v, token %v, security %+v / %+v", rp.Name, rp.Labels, *rp.Spec.AutomountServiceAccountToken, sc, rp.Spec.SecurityContext)
	}

	echoPeers(t, addrs[0], 8, 1250)
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pod deleted", func() (bool, error) {
		_, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), rp.Name, metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), nil
	})
}

// echoPeers sends each datagrams of random sizes (1 to 65,507 bytes) from
// peers local peers at once to a UDP echo at addr: every one must come
// back to the peer that sent it, byte for byte.
func echoPeers(t *testing.T, addr string, peers, each int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, peers)
	for i := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.(*net.UDPConn).SetReadBuffer(4 << 20)
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			buf := make([]byte, 65536)
			var resent [][]byte // datagrams sent more than once
			for k := range each {
				n := 1 + rng.IntN(65507)
				if k == 0 {
					n = 65507
				}
				msg := make([]byte, n)
				for j := range msg {
					msg[j] = byte(rng.Uint32())
				}
				copy(msg, fmt.Sprintf("peer %d #%d", i, k))
				// UDP may lose a datagram; a peer sends again after a
				// second, and what comes back must be its own, whole. A
				// datagram sent twice may be echoed twice: a late echo of
				// an earlier datagram of this peer is passed over.
				for try := 0; ; try++ {
					c.Write(msg)
					deadline := time.Now().Add(time.Second)
					matched := false
					for !matched {
						c.SetReadDeadline(deadline)
						got, err := c.Read(buf)
						if err != nil {
							break
						}
						switch {
						case bytes.Equal(buf[:got], msg):
							matched = true
						case slices.ContainsFunc(resent, func(b []byte) bool { return bytes.Equal(b, buf[:got]) }):
							// a late echo of an earlier datagram sent twice
						default:
							errs <- fmt.Errorf("peer %d datagram %d: %d bytes back %.16q, want %d bytes %.16q", i, k, got, buf[:got], n, msg)
							return
						}
					}
					if matched {
						break
					}
					resent = append(resent, msg)
					if try == 5 {
						errs <- fmt.Errorf("peer %d datagram %d (%d bytes): no answer after 6 tries", i, k, n)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestUDPRepliesSyslogAndTCP: one command forwards a server that answers
// each datagram three times, a syslog-like collector that never answers
// (nc -u sends it lines), and a TCP port of the same pod.
func TestUDPRepliesSyslogAndTCP(t *testing.T) {
	needPodNetwork(t)
	needPrograms(t, "python3", "nc", "curl")
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	dir, err := os.MkdirTemp("", "kpf-syslog-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	logFile := filepath.Join(dir, "lines")
	sb.Apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: udp, labels: {app: udp}}
spec:
  containers:
  - name: three
    image: python
    command: [python3, -c, "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',6000))\nwhile True:\n  b,a=s.recvfrom(65535)\n  for i in range(3): s.sendto(b+b' %%d'%%i,a)"]
    ports: [{containerPort: 6000, protocol: UDP}]
  - name: syslog
    image: python
    command: [python3, -c, "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',514))\nf=open('%s','ab',0)\nwhile True:\n  b,a=s.recvfrom(65535)\n  f.write(b.rstrip(b'\\n')+b'\\n')"]
    ports: [{containerPort: 514, protocol: UDP}]
  - {name: web, image: kpf.test/http, ports: [{containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}}
`, logFile))
	sb.ReadyPods(t, ns, "app=udp", 1)
	p, addrs := startUDP(t, sb, 2, "-n", ns, "pod/udp", ":6000/udp", ":514/udp", ":8080")
	_ = p
	c, err := net.Dial("udp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for i := range 10 {
		q := fmt.Sprintf("q%d", i)
		c.Write([]byte(q))
		for k := range 3 {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if want := fmt.Sprintf("%s %d", q, k); err != nil || string(buf[:n]) != want {
				t.Fatalf("reply %d to %s: %q, %v; want %q", k, q, buf[:n], err, want)
			}
		}
	}
	host, port, _ := net.SplitHostPort(addrs[1])
	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("<14>kpf test line %d", i))
	}
	// One nc, as a shell script would pipe its log into it; nc sends what
	// each read of its input gave as a datagram.
	nc := exec.Command("nc", "-u", "-q1", host, port)
	nc.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := nc.CombinedOutput(); err != nil {
		t.Fatalf("nc -u: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := sb.KubectlRun(t, "logs", "-n", ns, "udp", "-c", "syslog")
			ls, _ := exec.Command("sh", "-c", "ls -la "+dir+"; od -c "+logFile+" | head -5").CombinedOutput()
			t.Logf("the collector's log:\n%s\n%s", out, ls)
		}
	})
	sandboxtest.WaitFor(t, 20*time.Second, "20 lines at the collector", func() (bool, error) {
		b, _ := os.ReadFile(logFile)
		return strings.Count(string(b), "\n") >= 20, nil
	})
	if b, _ := os.ReadFile(logFile); string(b) != strings.Join(lines, "\n")+"\n" {
		t.Errorf("the collector recorded:\n%s", b)
	}
	var tcp string
	for _, l := range strings.Split(p.Output(), "\n") {
		if strings.HasPrefix(l, "Forwarding from 127.0.0.1:") && strings.HasSuffix(l, "-> 8080") {
			fmt.Sscanf(l, "Forwarding from %s ->", &tcp)
		}
	}
	if out, code := curlVia(t, "-f", "http://"+tcp+"/"); code != 0 || !strings.HasPrefix(out, "pod udp") {
		t.Errorf("the TCP port of the same command: exit %d %q", code, out)
	}
}

// TestUDPRelayAfterKpfIsKilled: kpf killed with SIGKILL leaves its relay
// pod, which exits by itself within 90 s; kpf relay gc then deletes it.
func TestUDPRelayAfterKpfIsKilled(t *testing.T) {
	sb, ns, p, _, relay := udpEchoForward(t)
	rp := relay.Name
	p.Signal(syscall.SIGKILL)
	start := time.Now()
	sandboxtest.WaitFor(t, 90*time.Second, "the relay pod to end", func() (bool, error) {
		q, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), rp, metav1.GetOptions{})
		return err != nil || q.Status.Phase == corev1.PodSucceeded || q.Status.Phase == corev1.PodFailed, nil
	})
	t.Logf("the relay ended %s after kpf was killed", time.Since(start).Round(time.Second))
	out, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "-n", ns, "relay", "gc").CombinedOutput()
	if err != nil || !strings.Contains(string(out), rp) || !strings.Contains(string(out), "deleted") {
		t.Fatalf("kpf relay gc: %v\n%s", err, out)
	}
	if _, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), rp, metav1.GetOptions{}); err == nil {
		t.Errorf("relay pod %s still there after kpf relay gc", rp)
	}
}

// TestUDPInAFile: a /udp port in kpf.yaml runs in the daemon: kpf status
// counts its peers and datagrams, and kpf down deletes its relay pod.
func TestUDPInAFile(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	loadRelayImage(t, sb)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, udpEchoApp)
	sb.ReadyPods(t, ns, "app=uecho", 1)
	k := newKpfCmd(t, sb)
	file := k.write(t, "kpf.yaml", "forwards:\n- {name: dns, namespace: "+ns+", target: svc/uecho, ports: [\":53/udp\"]}\n")
	if out, code := k.run(t, "up", "-d", "--wait", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	var row struct {
		Local        []string
		UDPPeers     int    `json:"udpPeers"`
		DatagramsIn  int64  `json:"datagramsIn"`
		DatagramsOut int64  `json:"datagramsOut"`
		Relay        string `json:"relayPod"`
	}
	statusRow := func() {
		out, code := k.run(t, "status", "--json")
		var st struct{ Forwards []json.RawMessage }
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Forwards) != 1 {
			t.Fatalf("kpf status --json: exit %d\n%s", code, out)
		}
		json.Unmarshal(st.Forwards[0], &row)
	}
	statusRow()
	if len(row.Local) == 0 || !strings.HasSuffix(row.Local[0], "/udp") || row.Relay == "" {
		t.Fatalf("status: %+v", row)
	}
	c, err := net.Dial("udp", strings.TrimSuffix(row.Local[0], "/udp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for i := range 5 {
		c.Write([]byte(fmt.Sprintf("ping %d", i)))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != fmt.Sprintf("ping %d", i) {
			t.Fatalf("echo %d: %q, %v", i, buf[:n], err)
		}
	}
	statusRow()
	if row.UDPPeers != 1 || row.DatagramsIn != 5 || row.DatagramsOut != 5 {
		t.Errorf("status after 5 echoes: %+v", row)
	}
	if out, _ := k.run(t, "status"); !strings.Contains(out, "UDP PEERS DGRAMS IN/OUT") || !strings.Contains(out, "1 5/5") {
		t.Errorf("kpf status table:\n%s", out)
	}
	relay := row.Relay
	if out, code := k.run(t, "down", "-f", file); code != 0 {
		t.Fatalf("kpf down: exit %d\n%s", code, out)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pod deleted", func() (bool, error) {
		_, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), relay, metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), nil
	})
}

// TestUDPEphemeral: --udp-relay ephemeral adds kpf's relay to the target
// pod as an ephemeral container, so it reaches a UDP server bound to the
// pod's localhost, which a relay pod could not, and makes no pod. 10,000
// datagrams from 8 peers come back whole; when the pod is replaced the
// forward adds a relay to the new one and carries on; once kpf stops, its
// relays exit (they cannot be removed from the pods' specs).
func TestUDPEphemeral(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: local}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      containers:
      - name: echo
        image: kpf.test/udp-echo
        env: [{name: KPF_POD_ADDR, value: 127.0.0.1}]
        ports: [{containerPort: 5300, protocol: UDP}]
`)
	first := sb.ReadyPods(t, ns, "app=local", 1)[0]
	p, addrs := startUDP(t, sb, 1, "-n", ns, "--udp-relay", "ephemeral", "deploy/local", ":5300/udp")
	p.WaitLine(t, `ephemeral container kpf-relay-\w+ in pod `+first.Name+`; .*stay in a pod's spec`, 10*time.Second)
	relayOf := func(pod string) (corev1.ContainerStatus, bool) {
		q, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil || len(q.Spec.EphemeralContainers) != 1 || !strings.HasPrefix(q.Spec.EphemeralContainers[0].Name, "kpf-relay-") || len(q.Status.EphemeralContainerStatuses) != 1 {
			return corev1.ContainerStatus{}, false
		}
		return q.Status.EphemeralContainerStatuses[0], true
	}
	if st, ok := relayOf(first.Name); !ok || st.State.Running == nil {
		t.Fatalf("pod %s: no running ephemeral relay (%+v)", first.Name, st)
	}
	if relays, _ := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=udp"}); len(relays.Items) != 0 {
		t.Errorf("--udp-relay ephemeral made relay pods: %d", len(relays.Items))
	}
	echoPeers(t, addrs[0], 8, 1250)

	// The pod replaced: the forward follows to the new one, with a relay
	// of its own there.
	if out, err := sb.KubectlRun(t, "delete", "pod", "-n", ns, first.Name, "--wait=false"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitEcho(t, addrs[0], "after", 90*time.Second, "an echo from the new pod")
	second := sb.ReadyPods(t, ns, "app=local", 1)[0]
	if second.Name == first.Name {
		t.Fatal("the pod was not replaced")
	}
	if st, ok := relayOf(second.Name); !ok || st.State.Running == nil {
		t.Fatalf("new pod %s: no running ephemeral relay (%+v)", second.Name, st)
	}
	echoPeers(t, addrs[0], 2, 100)

	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	sandboxtest.WaitFor(t, 90*time.Second, "the relay to exit once kpf is gone", func() (bool, error) {
		st, ok := relayOf(second.Name)
		return ok && st.State.Terminated != nil, nil
	})
}

// TestUDPRelayPodReplaced: a relay pod deleted under a running forward
// (kpf relay gc --all elsewhere, an eviction) is replaced by a new one,
// and datagrams flow again; the new one goes when kpf stops.
func TestUDPRelayPodReplaced(t *testing.T) {
	sb, ns, p, addrs, rp := udpEchoForward(t)
	echoPeers(t, addrs[0], 1, 20)
	if out, err := sb.KubectlRun(t, "delete", "pod", "-n", ns, rp.Name, "--wait=false"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	p.WaitLine(t, `^kpf: the UDP relay pod `+rp.Name+` is gone; its datagrams go through a new one, kpf-relay-\w+$`, 90*time.Second)
	waitEcho(t, addrs[0], "again", 30*time.Second, "an echo through the new relay")
	echoPeers(t, addrs[0], 4, 100)
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	sandboxtest.WaitFor(t, 30*time.Second, "no relay pod left", func() (bool, error) {
		l, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=udp"})
		return err == nil && len(l.Items) == 0, err
	})
}

// waitEcho sends msg to the UDP echo at addr until it comes back.
func waitEcho(t *testing.T, addr, msg string, timeout time.Duration, what string) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	sandboxtest.WaitFor(t, timeout, what, func() (bool, error) {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		return err == nil && string(buf[:n]) == msg, err
	})
}

// relayHello opens a stream to a relay at addr as kpf does (the opening,
// then HELLO naming target; docs/relay-protocol.md) and returns the
// relay's answer: its frame type (2 OK, 3 ERROR) and payload.
func relayHello(t *testing.T, addr, target string) (byte, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	hello := append([]byte("KPFRELAY\x02"), 1, 0, byte(len(target)>>8), byte(len(target)), 0, 0, 0, 0)
	if _, err := c.Write(append(hello, target...)); err != nil {
		t.Fatal(err)
	}
	var head [9 + 8]byte
	if _, err := io.ReadFull(c, head[:]); err != nil || string(head[:9]) != "KPFRELAY\x02" {
		t.Fatalf("HELLO %s: the relay's opening %q: %v", target, head[:], err)
	}
	payload := make([]byte, int(head[11])<<8|int(head[12]))
	if _, err := io.ReadFull(c, payload); err != nil {
		t.Fatalf("HELLO %s: the relay's answer: %v", target, err)
	}
	return head[9], string(payload)
}

// TestUDPRelayIsNoOpenRelay: the relay pod is no open relay. Its
// arguments name the target pod's IP and /udp port as its only
// destination; from another pod of the namespace nothing answers at the
// relay pod's IP and port (it listens on its loopback, where port-forward
// reaches it), while the same probe reaches a TCP server of the namespace;
// and a stream through port-forward (what anyone allowed to port-forward
// to it could open) that asks for another destination is refused with the
// reason, the target's own is accepted.
func TestUDPRelayIsNoOpenRelay(t *testing.T) {
	sb, ns, _, addrs, rp := udpEchoForward(t)
	echo := sb.ReadyPods(t, ns, "app=uecho", 1)[0]
	allowed := net.JoinHostPort(echo.Status.PodIP, "5300")
	args := strings.Join(rp.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--listen 127.0.0.1:4090 --allow "+allowed+" ") || strings.Count(args, "--allow") != 1 {
		t.Errorf("relay pod %s's args: %s; want it on loopback, allowed only %s", rp.Name, args, allowed)
	}
	waitEcho(t, addrs[0], "through the relay", 20*time.Second, "an echo through the forward")

	// From another pod: the relay's port, and a TCP server's, as a control.
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo, labels: {app: tcp-echo}}
spec:
  containers:
  - {name: echo, image: kpf.test/echo, ports: [{containerPort: 7070}], readinessProbe: {tcpSocket: {port: 7070}, periodSeconds: 1}}
`)
	control := sb.ReadyPods(t, ns, "app=tcp-echo", 1)[0]
	sb.Apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: knock}
spec:
  restartPolicy: Never
  containers:
  - name: knock
    image: python
    command: [python3, -c, "import socket,sys\nfor a in sys.argv[1:]:\n  h,p=a.rsplit(':',1)\n  s=socket.socket()\n  s.settimeout(5)\n  print(a, s.connect_ex((h,int(p))), flush=True)\n  s.close()", "%s:4090", "%s:7070"]
`, rp.Status.PodIP, control.Status.PodIP))
	sandboxtest.WaitFor(t, 60*time.Second, "the knock pod to finish", func() (bool, error) {
		p, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), "knock", metav1.GetOptions{})
		return err == nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed), nil
	})
	out, err := sb.KubectlRun(t, "logs", "-n", ns, "knock")
	if err != nil {
		t.Fatalf("kubectl logs knock: %v\n%s", err, out)
	}
	want := fmt.Sprintf("%s:4090 %d\n%s:7070 0\n", rp.Status.PodIP, syscall.ECONNREFUSED, control.Status.PodIP)
	if out != want {
		t.Errorf("connections from another pod (errno, 0: connected):\n%s\nwant the relay refused, the control reached:\n%s", out, want)
	}

	// Through port-forward, as kpf reaches it.
	_, ls := kpf(sb).start(t, 1, "-n", ns, "pod/"+rp.Name, ":4090")
	const refusal = "is not allowed: this relay sends only to "
	for _, tc := range []struct {
		target string
		typ    byte
		msg    string
	}{
		{allowed, 2, ""},
		{net.JoinHostPort(echo.Status.PodIP, "53"), 3, refusal + allowed},
		{net.JoinHostPort(control.Status.PodIP, "5300"), 3, refusal + allowed},
		{"8.8.8.8:53", 3, refusal + allowed},
	} {
		typ, msg := relayHello(t, ls[0].Addr, tc.target)
		if typ != tc.typ || !strings.Contains(msg, tc.msg) {
			t.Errorf("HELLO %s: frame type %d %q, want type %d %q", tc.target, typ, msg, tc.typ, tc.msg)
		}
	}
}

// loadSlowRelayImage loads a relay image, named for this test process,
// whose relay listens only some seconds after its container runs (as on
// a busy node): a shell script that waits, then runs kpf relay serve.
func loadSlowRelayImage(t *testing.T, sb *sandboxtest.Sandbox, delay time.Duration) string {
	t.Helper()
	return loadScriptRelayImage(t, sb, "slow", fmt.Sprintf("sleep %d\nexec %s \"$@\"\n", int(delay.Seconds()), kpfBin))
}

// loadScriptRelayImage loads a relay image, named for this test process
// and name, whose entrypoint is a shell script of body.
func loadScriptRelayImage(t *testing.T, sb *sandboxtest.Sandbox, name, body string) string {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "kpf")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	ref := fmt.Sprintf("example.com/kpf-%s-relay:%d", name, os.Getpid())
	build := exec.Command("go", "run", "./cmd/kpf-relay-image", "-out", filepath.Join(dir, "layout"), "-ref", ref, "-created", "0", "linux/"+runtime.GOARCH+"="+script)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("kpf-relay-image: %v\n%s", err, out)
	}
	if out, err := exec.Command(sb.Bin, "image", "load", ref, filepath.Join(dir, "layout")).CombinedOutput(); err != nil {
		t.Fatalf("kpf-sandbox image load: %v\n%s", err, out)
	}
	return ref
}

// TestUDPForwardingFromMeansReady: "Forwarding from" is printed once the
// relay answers, in both relay modes, with a relay that listens 4 s after
// its container runs: 4 peers send 2,000 datagrams as soon as the line
// appears, the first reply comes within 2 s, and at least 99% of each
// peer's come back.
func TestUDPForwardingFromMeansReady(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	slow := loadSlowRelayImage(t, sb, 4*time.Second)
	for _, mode := range []string{"pod", "ephemeral"} {
		t.Run(mode, func(t *testing.T) {
			ns := sb.Namespace(t)
			sb.Apply(t, ns, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: burst}
spec:
  replicas: 1
  selector: {matchLabels: {app: burst}}
  template:
    metadata: {labels: {app: burst}}
    spec:
      containers:
      - {name: echo, image: kpf.test/udp-echo, ports: [{containerPort: 5300, protocol: UDP}]}
`)
			sb.ReadyPods(t, ns, "app=burst", 1)
			_, addrs := startUDP(t, sb, 1, "-n", ns, "--udp-relay", mode, "--relay-image", slow, "deploy/burst", ":5300/udp")
			got, first := burst(t, addrs[0], 4, 500)
			total := 0
			for i, n := range got {
				total += n
				if n < 495 {
					t.Errorf("peer %d: %d of 500 datagrams came back", i, n)
				}
			}
			if first > 2*time.Second {
				t.Errorf("the first reply came %s after Forwarding from: the relay was not ready", first.Round(time.Millisecond))
			}
			t.Logf("%s: %d of 2000 came back (per peer %v), the first after %s", mode, total, got, first.Round(time.Millisecond))
		})
	}
}

// TestUDPEphemeralRelayThatExitsIsReplaced: an ephemeral relay that
// exits while kpf runs (here each lives 10 s) cannot be restarted: kpf
// adds another to the pod, says so, and datagrams flow again through it.
func TestUDPEphemeralRelayThatExitsIsReplaced(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	short := loadScriptRelayImage(t, sb, "short", fmt.Sprintf("%s \"$@\" &\nsleep 10\nkill $!\n", kpfBin))
	ns := sb.Namespace(t)
	sb.Apply(t, ns, udpEchoApp)
	pod := sb.ReadyPods(t, ns, "app=uecho", 1)[0]
	p, addrs := startUDP(t, sb, 1, "-n", ns, "--udp-relay", "ephemeral", "--relay-image", short, "svc/uecho", ":53/udp")
	first := p.WaitLine(t, `ephemeral container (kpf-relay-\w+) in pod `+pod.Name+`;`, 10*time.Second)[1]
	waitEcho(t, addrs[0], "before", 10*time.Second, "an echo through the first relay")
	p.WaitLine(t, `^kpf: the UDP relay `+first+` in pod `+pod.Name+` exited; adding another$`, 60*time.Second)
	sandboxtest.WaitFor(t, 30*time.Second, "another relay added", func() (bool, error) {
		return strings.Count(p.Output(), "kpf: the UDP relay runs as ephemeral container kpf-relay-") >= 2, nil
	})
	waitEcho(t, addrs[0], "after", 10*time.Second, "an echo through the relay that replaced it")
}

// burst sends each datagrams from peers local peers at once to the UDP
// echo at addr, as a client with a window does: 16 at first, then one per
// reply, and another 16 when none came for a second (those in flight
// count as lost). It returns each peer's distinct replies, and when the
// first reply came. (A flood of
// all 2,000 at once overflows the echo server's own socket buffer, sent
// through kpf or straight to the pod.)
func burst(t *testing.T, addr string, peers, each int) ([]int, time.Duration) {
	t.Helper()
	const window = 16
	got := make([]int, peers)
	start := time.Now()
	var firstOnce sync.Once
	var first time.Duration
	var wg sync.WaitGroup
	for i := range peers {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.UDPConn).SetReadBuffer(4 << 20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := 0
			send := func(n int) {
				for ; n > 0 && next < each; n-- {
					c.Write([]byte(fmt.Sprintf("peer %d #%d %s", i, next, strings.Repeat("x", 100))))
					next++
				}
			}
			send(window)
			seen := map[string]bool{}
			buf := make([]byte, 2048)
			for len(seen) < each {
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, err := c.Read(buf)
				if err != nil {
					if next >= each {
						break
					}
					send(window)
					continue
				}
				if msg := string(buf[:n]); strings.HasPrefix(msg, fmt.Sprintf("peer %d #", i)) && !seen[msg] {
					firstOnce.Do(func() { first = time.Since(start) })
					seen[msg] = true
					send(1)
				}
			}
			got[i] = len(seen)
		}()
	}
	wg.Wait()
	return got, first
}

// TestUDPRelayPodIsMadeForEachTargetPod: a relay pod sends only to the pod
// it was made for, so when the forward follows another pod (the target
// replaced), kpf makes a relay pod allowed only the new pod's IP, moves
// the flows to it, and deletes the old one.
func TestUDPRelayPodIsMadeForEachTargetPod(t *testing.T) {
	sb, ns, _, addrs, rp := udpEchoForward(t)
	old := sb.ReadyPods(t, ns, "app=uecho", 1)[0]
	waitEcho(t, addrs[0], "before", 20*time.Second, "an echo from the first pod")
	if out, err := sb.KubectlRun(t, "delete", "pod", "-n", ns, old.Name, "--wait=false"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var now corev1.Pod
	sandboxtest.WaitFor(t, 90*time.Second, "a new echo pod, ready", func() (bool, error) {
		l, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=uecho"})
		if err != nil {
			return false, err
		}
		for _, q := range l.Items {
			if q.Name != old.Name && sandboxtest.PodReady(&q) && q.Status.PodIP != "" {
				now = q
				return true, nil
			}
		}
		return false, nil
	})
	waitEcho(t, addrs[0], "after", 90*time.Second, "an echo from the new pod")
	sandboxtest.WaitFor(t, 30*time.Second, "one relay pod, made for the new pod", func() (bool, error) {
		l, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=udp"})
		if err != nil || len(l.Items) != 1 {
			return false, err
		}
		args := strings.Join(l.Items[0].Spec.Containers[0].Args, " ")
		return l.Items[0].Name != rp.Name && strings.Contains(args, "--allow "+net.JoinHostPort(now.Status.PodIP, "5300")+" ") && strings.Count(args, "--allow") == 1, nil
	})
}

// TestUDPEphemeralRelaysOfTwoForwardsInOnePod: two kpf forwards of one pod
// with --udp-relay ephemeral, to two UDP ports (two terminals, or a file
// and a forward): each relay listens on a port of its own, so neither
// kpf reaches the other's relay (which sends only to the other's port and
// refuses it); both echo.
func TestUDPEphemeralRelaysOfTwoForwardsInOnePod(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `
apiVersion: v1
kind: Pod
metadata: {name: two, labels: {app: two}}
spec:
  containers:
  - name: echo
    image: python
    command: [python3, -u, -c, "import socket,threading,time\ndef echo(p):\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n  s.bind(('0.0.0.0',p))\n  while True:\n    d,a=s.recvfrom(70000)\n    s.sendto(d,a)\nfor p in (5300,5301): threading.Thread(target=echo,args=(p,),daemon=True).start()\nwhile True: time.sleep(3600)"]
    ports: [{containerPort: 5300, protocol: UDP}, {containerPort: 5301, protocol: UDP}]
`)
	sb.ReadyPods(t, ns, "app=two", 1)
	_, first := startUDP(t, sb, 1, "-n", ns, "--udp-relay", "ephemeral", "pod/two", ":5300/udp")
	_, second := startUDP(t, sb, 1, "-n", ns, "--udp-relay", "ephemeral", "pod/two", ":5301/udp")
	waitEcho(t, first[0], "to 5300", 20*time.Second, "an echo through the first forward")
	waitEcho(t, second[0], "to 5301", 20*time.Second, "an echo through the second forward")
}

// TestUDPRelayFollowsOnlyItsPod: a pod that takes the name of a deleted
// relay pod (anyone who may create pods could make one) is not the
// relay: kpf makes a new relay pod and never sends the forward's stream
// to the impostor, which it leaves alone when it stops.
func TestUDPRelayFollowsOnlyItsPod(t *testing.T) {
	sb, ns, p, addrs, rp := udpEchoForward(t)
	echoPeers(t, addrs[0], 1, 5)
	zero := int64(0)
	pods := sb.Admin.CoreV1().Pods(ns)
	if err := pods.Delete(context.Background(), rp.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	impostor := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: rp.Name, Labels: map[string]string{"app": "impostor"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "http", Image: "kpf.test/http", Ports: []corev1.ContainerPort{{ContainerPort: 4090}},
		}}},
	}
	sandboxtest.WaitFor(t, 30*time.Second, "a pod named "+rp.Name+" made again", func() (bool, error) {
		_, err := pods.Create(context.Background(), impostor, metav1.CreateOptions{})
		return err == nil, err
	})
	p.WaitLine(t, `^kpf: the UDP relay pod `+rp.Name+` is gone; its datagrams go through a new one, kpf-relay-\w+$`, 60*time.Second)
	waitEcho(t, addrs[0], "again", 30*time.Second, "an echo through the new relay")
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	if got, err := pods.Get(context.Background(), rp.Name, metav1.GetOptions{}); err != nil || got.Labels["app"] != "impostor" {
		t.Errorf("kpf deleted a pod it did not make: %v", err)
	}
}
