package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// echoesPod is one pod with a TCP echo (half-close aware) on 7070 and a
// UDP echo on 5300: the destination of an ip/ forward.
const echoesPod = `
apiVersion: v1
kind: Pod
metadata: {name: echoes, labels: {app: echoes}}
spec:
  containers:
  - {name: tcp, image: kpf.test/echo, ports: [{containerPort: 7070}], readinessProbe: {tcpSocket: {port: 7070}, periodSeconds: 1}}
  - {name: udp, image: kpf.test/udp-echo, ports: [{containerPort: 5300, protocol: UDP}]}
`

// startDestination runs kpf forward with a host/ or ip/ target and
// returns the process and the local address of each Forwarding line, in
// order ("ADDR" for TCP, "ADDR/udp" for UDP).
func startDestination(t *testing.T, sb *sandboxtest.Sandbox, want int, args ...string) (*sandboxtest.Proc, []string) {
	t.Helper()
	p := sandboxtest.Start(t, exec.Command(kpfBin, append([]string{"--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "forward", "--relay-image", ownRelayImage(t, sb)}, args...)...))
	deadline := time.Now().Add(150 * time.Second)
	var addrs []string
	for len(addrs) < want {
		p.WaitLine(t, `^Forwarding from 127\.0\.0\.1:`, time.Until(deadline))
		addrs = addrs[:0]
		for _, l := range strings.Split(p.Output(), "\n") {
			var a, to string
			if _, err := fmt.Sscanf(l, "Forwarding from %s -> %s", &a, &to); err == nil && strings.HasPrefix(a, "127.0.0.1:") {
				if strings.HasSuffix(to, "/udp") {
					a += "/udp"
				}
				addrs = append(addrs, a)
			}
		}
		if len(addrs) < want {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, addrs
}

// interrupt stops kpf as Ctrl-C does, and wants it to exit cleanly
// within 30 s (a race-built kpf that found a data race exits 66).
func interrupt(t *testing.T, p *sandboxtest.Proc) {
	t.Helper()
	p.Signal(syscall.SIGINT)
	err, exited := p.Wait(30 * time.Second)
	if !exited || err != nil || strings.Contains(p.Output(), "DATA RACE") {
		t.Errorf("kpf after Ctrl-C: exited %v, %v\n%s", exited, err, p.Output())
	}
}

// destinationRelays are the relay pods of host/ and ip/ targets in ns.
func destinationRelays(t *testing.T, sb *sandboxtest.Sandbox, ns string) []string {
	t.Helper()
	list, err := sb.Admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kpf.dev/relay=destination"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	return names
}

// echoRoundTrip sends n random bytes to a half-close-aware echo at addr
// while reading, closes its write side, and wants exactly the bytes back
// and then the end of the stream (the echo closes only when it has read
// the end of its input: the half-close went through, and its close came
// back).
func echoRoundTrip(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	msg := make([]byte, n)
	rand.Read(msg)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%d bytes back, want the %d sent, byte for byte", len(got), n)
	}
	return nil
}

// TestForwardIP: kpf forward ip/<another pod's IP> :7070 :5300/udp. A
// relay pod (labelled, non-root, read-only, no token) dials the pod's IP
// from inside the cluster: 8 MiB each way byte for byte with half-close,
// and UDP datagrams echoed. ip/ is not the IPAddress resource's short
// name here: with the lookup kubectl would make, the forward fails
// ("ipaddresses ... not found"). The relay pod deleted mid-run, new
// connections work within 10 s; Ctrl-C, the relay pods are gone. The
// audit log records each connection as of any forward: the target
// ip/ADDR, the relay pod as its pod, the bytes each way.
func TestForwardIP(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, echoesPod)
	ip := sb.ReadyPods(t, ns, "app=echoes", 1)[0].Status.PodIP
	auditLog := filepath.Join(t.TempDir(), "audit.log")
	ownRelayImage(t, sb)
	tStart := time.Now()
	p, addrs := startDestination(t, sb, 2, "-n", ns, "--audit-log", auditLog, "ip/"+ip, ":7070", ":5300/udp")
	if !strings.Contains(p.Output(), "-> 7070\n") || !strings.HasSuffix(addrs[1], "/udp") {
		t.Fatalf("forwarding lines:\n%s", p.Output())
	}
	tcp, udp := addrs[0], strings.TrimSuffix(addrs[1], "/udp")
	t.Logf("forwarding %s after kpf started", time.Since(tStart))
	t0 := time.Now()

	relays := destinationRelays(t, sb, ns)
	if len(relays) != 1 {
		t.Fatalf("relay pods: %v, want one", relays)
	}
	rp, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), relays[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if says := fmt.Sprintf("kpf: ip/%s is dialled from inside the cluster by the relay pod %s/%s, deleted when the forward stops", ip, ns, rp.Name); !strings.Contains(p.Output(), says) {
		t.Errorf("kpf does not say %q:\n%s", says, p.Output())
	}
	sc := rp.Spec.Containers[0].SecurityContext
	args := strings.Join(rp.Spec.Containers[0].Args, " ")
	if rp.Labels["kpf.dev/pid"] != fmt.Sprint(p.Cmd.Process.Pid) || *rp.Spec.AutomountServiceAccountToken || !*sc.ReadOnlyRootFilesystem || !*rp.Spec.SecurityContext.RunAsNonRoot || len(sc.Capabilities.Drop) != 1 ||
		!strings.Contains(args, "--tcp 4091="+ip+":7070") || !strings.Contains(args, "--allow "+ip+":5300") || !strings.Contains(args, "--listen 127.0.0.1:4090") {
		t.Errorf("relay pod %s: labels %v, args %q, security %+v / %+v", rp.Name, rp.Labels, args, sc, rp.Spec.SecurityContext)
	}

	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoRoundTrip(tcp, 4<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	echoPeers(t, udp, 2, 20)
	wg.Wait()
	t.Logf("8 MiB each way and 40 datagrams in %s", time.Since(t0))

	// The relay pod deleted: a new one carries new connections within 10 s.
	zero := int64(0)
	if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), rp.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	sandboxtest.WaitFor(t, 20*time.Second, "a new connection through a new relay pod", func() (bool, error) {
		return echoRoundTrip(tcp, 1024) == nil, nil
	})
	t.Logf("new connections through a new relay pod %s after the delete", time.Since(deleted))
	if d := time.Since(deleted); d > 10*time.Second {
		t.Errorf("new connections worked %s after the relay pod was deleted, want within 10 s", d)
	}
	echoPeers(t, udp, 1, 5)
	if now := destinationRelays(t, sb, ns); len(now) != 1 || now[0] == rp.Name {
		t.Errorf("relay pods after the delete: %v", now)
	} else if np, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), now[0], metav1.GetOptions{}); err != nil || np.Labels["kpf.dev/forward"] != rp.Labels["kpf.dev/forward"] || strings.Join(np.Spec.Containers[0].Args, " ") != args {
		t.Errorf("the new relay pod %s: %v, labels %v, args %v; want the forward's label %s and the same args", now[0], err, np.Labels, np.Spec.Containers[0].Args, rp.Labels["kpf.dev/forward"])
	}

	stopped := time.Now()
	interrupt(t, p)
	t.Logf("kpf exited %s after Ctrl-C", time.Since(stopped))
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pods deleted", func() (bool, error) {
		return len(destinationRelays(t, sb, ns)) == 0, nil
	})

	raw, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	big := 0
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec struct {
			Target, Pod, Result string
			RemotePort          int
			BytesIn, BytesOut   int64
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Target == "ip/"+ip && rec.Pod == rp.Name && rec.RemotePort == 7070 && rec.BytesIn == 4<<20 && rec.BytesOut == 4<<20 && rec.Result == "ok" {
			big++
		}
	}
	if big != 2 {
		t.Errorf("the audit log has %d records of a 4 MiB echo through %s, want 2:\n%s", big, rp.Name, raw)
	}
}

// TestForwardHostRefusesOtherDestination: the relay pod of a host/
// target dials only the destination it was made for. Through kubectl
// port-forward to the relay's own stream port (4090), as anyone who may
// port-forward to the relay pod could, the test speaks the relay
// protocol: a PING's payload comes back byte for byte, and a HELLO for a
// destination the relay was not made for is refused, naming the one it
// was made for. And the relay pod's own loopback is no destination:
// ip/127.0.0.1, ip/::1, host/localhost are refused before any pod is
// made (a connection there made the relay dial its own listener without
// end).
func TestForwardHostRefusesOtherDestination(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	for _, loop := range []string{"ip/127.0.0.1", "ip/::1", "ip/127.1.2.3", "host/localhost"} {
		out, err := runWithin(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "forward", "-n", ns, loop, "19000:9000"), 30*time.Second)
		if err == nil || !strings.Contains(string(out), loop) || !strings.Contains(string(out), "the relay pod's own loopback") {
			t.Errorf("kpf forward %s: %v, want refused as the relay pod's own loopback:\n%s", loop, err, out)
		}
	}
	if r := destinationRelays(t, sb, ns); len(r) != 0 {
		t.Fatalf("relay pods for loopback destinations: %v", r)
	}
	p, _ := startDestination(t, sb, 2, "-n", ns, "host/orders.example", "5432", ":53/udp")
	relays := destinationRelays(t, sb, ns)
	if len(relays) != 1 {
		t.Fatalf("relay pods: %v, want one", relays)
	}
	kc, ls := kubectl(sb).start(t, 1, "-n", ns, "pod/"+relays[0], ":4090")
	defer kc.Signal(syscall.SIGINT)
	c, err := net.DialTimeout("tcp", ls[0].Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	frame := func(typ byte, payload []byte) []byte {
		h := make([]byte, 8, 8+len(payload))
		h[0] = typ
		binary.BigEndian.PutUint16(h[2:], uint16(len(payload)))
		return append(h, payload...)
	}
	ping := make([]byte, 1000)
	rand.Read(ping)
	c.Write(append(append([]byte("KPFRELAY\x02"), frame(6, ping)...), frame(1, []byte("10.9.9.9:53"))...))
	opening := make([]byte, 9)
	if _, err := io.ReadFull(c, opening); err != nil || string(opening) != "KPFRELAY\x02" {
		t.Fatalf("opening %q, %v\n%s", opening, err, p.Output())
	}
	read := func() (byte, []byte) {
		h := make([]byte, 8)
		if _, err := io.ReadFull(c, h); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(h[2:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return h[0], b
	}
	if typ, b := read(); typ != 7 || !bytes.Equal(b, ping) {
		t.Fatalf("answer to PING: type %d, %d bytes, want PONG with the 1000 sent", typ, len(b))
	}
	typ, b := read()
	if want := `destination "10.9.9.9:53" is not allowed: this relay sends only to orders.example:53 (its --allow, fixed when kpf made it)`; typ != 3 || string(b) != want {
		t.Fatalf("answer to HELLO 10.9.9.9:53: type %d %q, want ERROR %q", typ, b, want)
	}
	interrupt(t, p)
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pods deleted", func() (bool, error) {
		return len(destinationRelays(t, sb, ns)) == 0, nil
	})
}

// TestForwardIPIsNoIPAddress: ip/ADDR, for kpf forward, is a destination,
// not the IPAddress resource whose short name ip also is: as a user who
// may do nothing, kpf forward ip/10.1.2.3 fails at creating its relay
// pod, with the Role that allows it, and never at reading an IPAddress
// ("ipaddresses ... is forbidden", what kubectl's lookup gives).
func TestForwardIPIsNoIPAddress(t *testing.T) {
	sb := sandboxtest.Get(t)
	out, err := runWithin(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserNobody), "forward", "-n", "kpf-e2e-none", "ip/10.1.2.3", "8080:80"), 60*time.Second)
	if err == nil || strings.Contains(string(out), "ipaddresses") ||
		!strings.Contains(string(out), `error: the relay pod of ip/10.1.2.3: kpf may not create pods in namespace "kpf-e2e-none"`) ||
		!strings.Contains(string(out), "name: kpf-destination-relay") {
		t.Fatalf("kpf forward ip/10.1.2.3 as a user with no rights: %v\n%s", err, out)
	}
}

// TestDoctorDestination: kpf doctor ip/ADDR checks what its relay pod
// needs (create and delete on pods: the sandbox's dev user may port-
// forward in its namespace but not create pods), names the fix, and reads
// no IPAddress; as admin, every right is there.
func TestDoctorDestination(t *testing.T) {
	sb := sandboxtest.Get(t)
	r := doctor(t, nil, sb.Kubeconfig(cluster.UserDev), "-n", cluster.DevNamespace, "ip/10.1.2.3", "80")
	rb, tg := r.step(t, "rbac"), r.step(t, "target")
	if rb.Status != "fail" || !strings.Contains(rb.Summary, "you may not create, delete pods") || !strings.Contains(rb.Fix, "kpf rbac ip/10.1.2.3") ||
		tg.Status != "skip" || !strings.Contains(tg.Summary, "ip/10.1.2.3: dialled from inside the cluster by the relay pod") || strings.Contains(r.Out, "ipaddresses") {
		t.Fatalf("kpf doctor ip/10.1.2.3 as dev:\n%s", r.Out)
	}
	if rb := doctor(t, nil, sb.Kubeconfig(cluster.UserAdmin), "-n", cluster.DevNamespace, "host/orders.example", "5432").step(t, "rbac"); rb.Status != "ok" || !strings.Contains(rb.Summary, "create, delete") {
		t.Fatalf("kpf doctor host/orders.example as admin: %+v", rb)
	}
}

// TestRunDestination: kpf.yaml's target ip/ADDR under kpf run: its HTTP
// health check passes through the relay (kpf run starts the command only
// when it does), the command reaches the server at KPF_WEB_ADDR, and the
// HTTP log has the request, served by the relay pod. A tcp check of a
// port where nothing listens fails (the relay resets the connection it
// cannot carry), and kpf run does not start its command.
func TestRunDestination(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	pod := sb.ReadyPods(t, ns, "app=web", 1)[0]
	k := newKpfCmd(t, sb)
	httpLog := filepath.Join(k.dir, "http.log")
	file := k.write(t, "kpf.yaml", fmt.Sprintf(`
forwards:
  - name: web
    namespace: %s
    target: ip/%s
    ports: ["8080"]
    health: {path: /healthz, interval: 1s}
    httpLog: %s
`, ns, pod.Status.PodIP, httpLog))
	image := ownRelayImage(t, sb)
	dead := k.write(t, "dead.yaml", fmt.Sprintf("forwards:\n  - {name: dead, namespace: %s, target: ip/%s, ports: [\":9999\"], health: {type: tcp, interval: 1s}}\n", ns, pod.Status.PodIP))
	marker := filepath.Join(k.dir, "marker")
	if out, code := k.run(t, "run", "-f", dead, "--relay-image", image, "--timeout", "10s", "--", "touch", marker); code == 0 || !strings.Contains(out, "dead: unhealthy: ip/"+pod.Status.PodIP+" port 9999, through the relay pod: ") {
		t.Errorf("kpf run with a tcp check of ip/%s:9999, where nothing listens: exit %d, want it unhealthy\n%s", pod.Status.PodIP, code, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("kpf run started its command with its forward unhealthy")
	}
	got := filepath.Join(k.dir, "got")
	start := time.Now()
	out, err := runWithin(t, k.cmd("run", "-f", file, "--relay-image", image, "--timeout", "60s", "--", "sh", "-c", "curl -fsS http://$KPF_WEB_ADDR/ >"+got), 90*time.Second)
	if err != nil {
		t.Fatalf("kpf run: %v\n%s", err, out)
	}
	t.Logf("kpf run took %s", time.Since(start))
	b, _ := os.ReadFile(got)
	if !strings.Contains(string(b), pod.Name) {
		t.Fatalf("GET / through ip/%s: %q, want the pod %s to answer\n%s", pod.Status.PodIP, b, pod.Name, out)
	}
	sandboxtest.WaitFor(t, 10*time.Second, "the HTTP log line", func() (bool, error) {
		l, _ := os.ReadFile(httpLog)
		return strings.Contains(string(l), `"path":"/"`) && strings.Contains(string(l), `"pod":"kpf-relay-`), nil
	})
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pods deleted", func() (bool, error) {
		return len(destinationRelays(t, sb, ns)) == 0, nil
	})
}

// TestForwardHostByClusterDNS: kpf forward host/SVC.NS.svc.cluster.local,
// a name only the cluster's DNS knows (this machine cannot resolve it):
// the relay pod resolves it inside the cluster and dials the Service's
// ClusterIP, which carries 4 MiB each way byte for byte with half-close,
// and UDP datagrams.
func TestForwardHostByClusterDNS(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, echoesPod+`---
apiVersion: v1
kind: Service
metadata: {name: echoes}
spec:
  selector: {app: echoes}
  ports:
  - {name: tcp, port: 7070}
  - {name: udp, port: 5300, protocol: UDP}
`)
	sb.ReadyPods(t, ns, "app=echoes", 1)
	name := "echoes." + ns + ".svc.cluster.local"
	if addrs, err := net.DefaultResolver.LookupHost(context.Background(), name); err == nil {
		t.Fatalf("this machine resolves %s (%v): the test would not show the relay resolving it in the cluster", name, addrs)
	}
	p, addrs := startDestination(t, sb, 2, "-n", ns, "host/"+name, ":7070", ":5300/udp")
	tcp, udp := addrs[0], strings.TrimSuffix(addrs[1], "/udp")
	// The Service's endpoints may trail the pod's readiness by a moment.
	sandboxtest.WaitFor(t, 20*time.Second, "a connection through the Service's name", func() (bool, error) {
		return echoRoundTrip(tcp, 1024) == nil, nil
	})
	if err := echoRoundTrip(tcp, 4<<20); err != nil {
		t.Error(err)
	}
	echoPeers(t, udp, 2, 10)
	interrupt(t, p)
}

// TestForwardDestinationFollowsOnlyItsRelays: a pod that carries a
// forward's kpf.dev/forward label but that kpf did not make (anyone who
// may create pods could) never gets the forward's traffic. The relay pod
// deleted with such a pod ready (an HTTP server on the relay's route
// port, 4091), kpf makes a new relay, and every request still reaches
// the destination (an echo: the request comes back byte for byte, never
// the HTTP answer of the impostor); kpf never switches to it, and leaves
// it alone when it stops.
func TestForwardDestinationFollowsOnlyItsRelays(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, echoesPod)
	ip := sb.ReadyPods(t, ns, "app=echoes", 1)[0].Status.PodIP
	p, addrs := startDestination(t, sb, 1, "-n", ns, "ip/"+ip, ":7070")
	relays := destinationRelays(t, sb, ns)
	if len(relays) != 1 {
		t.Fatalf("relay pods: %v, want one", relays)
	}
	rp, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), relays[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := rp.Labels["kpf.dev/forward"]
	sb.Apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: evil, labels: {app: evil, kpf.dev/forward: %q}}
spec:
  containers:
  - {name: http, image: kpf.test/http, ports: [{containerPort: 4091}], readinessProbe: {tcpSocket: {port: 4091}, periodSeconds: 1}}
`, id))
	sb.ReadyPods(t, ns, "app=evil", 1)
	// What the forward answers: the request back (the echo behind the
	// relay), or the impostor's HTTP answer.
	ask := func() (string, error) {
		c, err := net.DialTimeout("tcp", addrs[0], 5*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return "", err
		}
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	const req = "GET / HTTP/1.0\r\n\r\n"
	if got, err := ask(); got != req {
		t.Fatalf("before the delete: %q, %v; want the echo", got, err)
	}
	zero := int64(0)
	if err := sb.Admin.CoreV1().Pods(ns).Delete(context.Background(), rp.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	impostor := ""
	sandboxtest.WaitFor(t, 30*time.Second, "an echo through a new relay pod", func() (bool, error) {
		got, _ := ask()
		if strings.Contains(got, "evil") {
			impostor = got
		}
		return got == req || impostor != "", nil
	})
	if impostor != "" {
		t.Fatalf("the forward's bytes reached the impostor pod evil: %q\n%s", impostor, p.Output())
	}
	for range 5 {
		if got, err := ask(); got != req {
			t.Fatalf("after the new relay: %q, %v; want the echo", got, err)
		}
	}
	if now := destinationRelays(t, sb, ns); len(now) != 1 || now[0] == rp.Name || now[0] == "evil" {
		t.Errorf("relay pods after the delete: %v, want one new one kpf made", now)
	}
	if strings.Contains(p.Output(), "evil") {
		t.Errorf("kpf speaks of the impostor pod evil:\n%s", p.Output())
	}
	interrupt(t, p)
	sandboxtest.WaitFor(t, 30*time.Second, "the relay pods deleted", func() (bool, error) {
		return len(destinationRelays(t, sb, ns)) == 0, nil
	})
	if _, err := sb.Admin.CoreV1().Pods(ns).Get(context.Background(), "evil", metav1.GetOptions{}); err != nil {
		t.Errorf("kpf deleted a pod it did not make: %v", err)
	}
}

// TestForwardIPRefusedIsReset: a destination that refuses (nothing
// listens on its port) reaches the local client as a reset, an error,
// not a clean close that looks like an empty answer; so does a pod/
// target's closed port.
func TestForwardIPRefusedIsReset(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, echoesPod)
	ip := sb.ReadyPods(t, ns, "app=echoes", 1)[0].Status.PodIP
	reset := func(what, addr string) {
		t.Helper()
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		t.Logf("%s: %d bytes, %v after %s", what, len(b), err, time.Since(start))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: the client read %d bytes and %v, want a reset", what, len(b), err)
		}
	}
	p, addrs := startDestination(t, sb, 1, "-n", ns, "ip/"+ip, ":1")
	reset("ip/"+ip+" port 1", addrs[0])
	interrupt(t, p)
	kp, ls := kpf(sb).start(t, 1, "-n", ns, "pod/echoes", ":1")
	reset("pod/echoes port 1", ls[0].Addr)
	interrupt(t, kp)
}

// TestForwardDestinationWithItsRole: kpf rbac ip/ADDR's Role (no get on
// pods) is all a host/ or ip/ forward needs: as a service account bound
// to it, bytes go through the relay, and Ctrl-C deletes the relay pod.
// With list taken out of it, Ctrl-C still deletes the relay pod (kpf
// deletes the pods it made by name; it listed them, and left them
// running).
func TestForwardDestinationWithItsRole(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, echoesPod+"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: forwarder}\n")
	ip := sb.ReadyPods(t, ns, "app=echoes", 1)[0].Status.PodIP
	cfg, _ := serviceAccountKubeconfig(t, sb, ns, "forwarder")
	out, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "rbac", "-n", ns, "ip/"+ip, "--subject", "sa:"+ns+"/forwarder").Output()
	if err != nil {
		t.Fatalf("kpf rbac: %v", err)
	}
	role := string(out)
	image := ownRelayImage(t, sb)
	for _, c := range []struct{ what, role string }{{"kpf rbac's Role", role}, {"its Role without list on pods", withoutVerb(t, role, "pods", "list")}} {
		sb.Apply(t, ns, c.role)
		// The Role takes effect within moments.
		sandboxtest.WaitFor(t, 30*time.Second, c.what+" in effect", func() (bool, error) {
			create, _ := sb.KubectlRun(t, "auth", "can-i", "create", "pods", "-n", ns, "--as", "system:serviceaccount:"+ns+":forwarder")
			list, _ := sb.KubectlRun(t, "auth", "can-i", "list", "pods", "-n", ns, "--as", "system:serviceaccount:"+ns+":forwarder")
			return strings.TrimSpace(string(create)) == "yes" && strings.Contains(c.what, "without list") == (strings.TrimSpace(string(list)) == "no"), nil
		})
		p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", cfg, "forward", "--relay-image", image, "ip/"+ip, ":7070"))
		addr := p.WaitLine(t, `^Forwarding from (127\.0\.0\.1:\d+) -> 7070$`, 150*time.Second)[1]
		if err := echoRoundTrip(addr, 64<<10); err != nil {
			t.Errorf("with %s: %v\n%s", c.what, err, p.Output())
		}
		interrupt(t, p)
		sandboxtest.WaitFor(t, 30*time.Second, "the relay pods deleted after Ctrl-C with "+c.what, func() (bool, error) {
			return len(destinationRelays(t, sb, ns)) == 0, nil
		})
	}
}
