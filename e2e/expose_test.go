package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const exposeClientPod = `
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: main, image: kpf.test/http, ports: [{name: main, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: main}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {name: taken}
spec:
  selector: {app: client}
  ports: [{port: 80, targetPort: 8080}]
`

// localEcho is a server on this machine's loopback: each connection's
// input back with a prefix, and a trailer once the input ended (so the
// client's half-close must reach it, and its answer after that must come
// back).
func localEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				b, _ := io.ReadAll(c)
				c.SetDeadline(time.Now().Add(20 * time.Second))
				fmt.Fprintf(c, "laptop got %s|end", b)
			}()
		}
	}()
	return ln.Addr().String()
}

// dialFrom has the kpf.test/http pod at podIP connect to addr, send send
// (and end its input), and return the answer.
func dialFrom(podIP, addr, send string) (string, error) {
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + net.JoinHostPort(podIP, "8080") + "/dial?" + url.Values{"net": {"tcp"}, "addr": {addr}, "send": {send}}.Encode())
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), err
}

// kpf expose svc/laptop 80:PORT: from a pod, the Service by its
// ClusterIP and by its name reaches the server on this machine's
// loopback, 100 connections (10 at once), each its own, the client's
// half-close passed on; 64 MiB byte-exact each way; the relay pod deleted, new connections work
// within 10 s; Ctrl-C, the Service and the relay pods are gone. An
// existing Service kpf did not make is refused and left as it was. kpf
// runs as a service account with only the Role kpf rbac --expose prints.
// A killed kpf's relay pod goes with kpf relay gc, and its Service with it.
func TestExpose(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, exposeClientPod)
	client := sb.ReadyPods(t, ns, "app=client", 1)[0].Status.PodIP
	local := localEcho(t)
	_, port, _ := net.SplitHostPort(local)
	img := ownRelayImage(t, sb)
	ctx := context.Background()

	// As a service account with only what kpf rbac --expose prints.
	sb.Apply(t, ns, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: exposer}\n")
	role, err := exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "rbac", "--expose", "-n", ns, "--subject", "sa:"+ns+"/exposer").Output()
	if err != nil {
		t.Fatalf("kpf rbac --expose: %v", err)
	}
	cfg, _ := serviceAccountKubeconfig(t, sb, ns, "exposer")
	if out, err := runWithin(t, exec.Command(kpfBin, "--kubeconfig", cfg, "expose", "-n", ns, "svc/laptop", "80:"+port), 60*time.Second); err == nil || !strings.Contains(string(out), "kpf rbac --expose -n "+ns) {
		t.Errorf("kpf expose without the Role: %v, want it to name kpf rbac --expose:\n%s", err, out)
	}
	sb.Apply(t, ns, string(role))
	sandboxtest.WaitFor(t, 15*time.Second, "the Role in effect", func() (bool, error) {
		out, _ := exec.Command(sb.Kubectl, "--kubeconfig", cfg, "auth", "can-i", "create", "services", "-n", ns).Output()
		return strings.TrimSpace(string(out)) == "yes", nil
	})

	before, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "taken", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	outb, err := runWithin(t, exec.Command(kpfBin, "--kubeconfig", cfg, "expose", "--relay-image", img, "-n", ns, "svc/taken", "80:"+port), 60*time.Second)
	out, code := string(outb), 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code == 0 || !strings.Contains(out, "kpf did not make it") || !strings.Contains(out, "never changes a Service it did not create") {
		t.Errorf("kpf expose of an existing Service: exit %d\n%s", code, out)
	}
	after, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "taken", metav1.GetOptions{})
	if err != nil || after.ResourceVersion != before.ResourceVersion {
		t.Errorf("the existing Service changed: %v, resourceVersion %s -> %s", err, before.ResourceVersion, after.ResourceVersion)
	}
	if pods, _ := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay"}); len(pods.Items) != 0 {
		t.Errorf("a refused expose left relay pods: %d", len(pods.Items))
	}

	p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", cfg, "expose", "--relay-image", img, "-n", ns, "svc/laptop", "80:"+port))
	p.WaitLine(t, `^Exposing svc/laptop\.`+ns+`:80 -> 127\.0\.0\.1:`+port+`$`, 150*time.Second)
	svc, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "laptop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.OwnerReferences) != 1 || svc.OwnerReferences[0].Kind != "Pod" || svc.Labels["app.kubernetes.io/managed-by"] != "kpf" {
		t.Errorf("the Service: owners %+v, labels %v", svc.OwnerReferences, svc.Labels)
	}
	byIP, byName := net.JoinHostPort(svc.Spec.ClusterIP, "80"), "laptop:80"

	// Wait for the Service's endpoints to reach the relay.
	wantAnswer := func(addr, send string) error {
		got, err := dialFrom(client, addr, send)
		if err != nil {
			return err
		}
		if want := "laptop got " + send + "|end"; got != want {
			return fmt.Errorf("%s answered %q, want %q", addr, got, want)
		}
		return nil
	}
	within := func(d time.Duration, addr string) time.Duration {
		start := time.Now()
		var err error
		for time.Since(start) < d {
			if err = wantAnswer(addr, "ping"); err == nil {
				return time.Since(start)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("%s did not answer within %s: %v\n%s", addr, d, err, p.Output())
		return 0
	}
	within(30*time.Second, byIP)

	var wg sync.WaitGroup
	slots := make(chan struct{}, 10) // 100 requests, 10 at once
	for i := range 100 {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			addr := byIP
			if i%2 == 1 {
				addr = byName
			}
			if err := wantAnswer(addr, fmt.Sprintf("request-%d-%s", i, strings.Repeat("x", i*20))); err != nil {
				t.Errorf("request %d: %v", i, err)
			}
		}()
	}
	wg.Wait()

	// Bulk, 64 MiB byte-exact both ways: kpf forward to the relay pod's
	// exposed port (a connection inside its pod; the Service selects no
	// pod, so kpf forward svc/laptop has none to choose), which kpf expose
	// carries to this machine and back.
	bulkRelay, err := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"})
	if err != nil || len(bulkRelay.Items) != 1 {
		t.Fatalf("relay pods: %v %v", bulkRelay, err)
	}
	fw, ls := kpf(sb).start(t, 1, "-n", ns, "pod/"+bulkRelay.Items[0].Name, ":4190")
	body := make([]byte, 64<<20)
	rand.Read(body)
	c, err := net.Dial("tcp", ls[0].Addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	bulkStart := time.Now()
	go func() {
		c.Write(body)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	c.Close()
	if want := append(append([]byte("laptop got "), body...), "|end"...); err != nil || !bytes.Equal(got, want) {
		t.Errorf("64 MiB through kpf forward and kpf expose: %v, got %d bytes, want the %d sent, framed", err, len(got), len(want))
	}
	t.Logf("64 MiB each way through kpf forward and kpf expose in %s", time.Since(bulkStart))
	interrupt(t, fw)

	relays, err := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"})
	if err != nil || len(relays.Items) != 1 {
		t.Fatalf("relay pods: %v %v", relays, err)
	}
	zero := int64(0)
	if err := sb.Admin.CoreV1().Pods(ns).Delete(ctx, relays.Items[0].Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	took := within(10*time.Second, byName)
	t.Logf("the relay pod deleted, the Service answered by name again after %s", took)

	interrupt(t, p)
	if _, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "laptop", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after Ctrl-C the Service laptop: %v, want not found", err)
	}
	if pods, _ := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"}); len(pods.Items) != 0 {
		t.Errorf("after Ctrl-C, relay pods left: %d", len(pods.Items))
	}

	// Killed: the relay pod and the Service stay (the relay exits within a
	// minute, its pod object does not go); kpf relay gc deletes the pod,
	// and the garbage collector the Service it owns.
	k := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "expose", "--relay-image", img, "-n", ns, "svc/killed", "80:"+port))
	k.WaitLine(t, `^Exposing svc/killed\.`, 150*time.Second)
	if _, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "killed", metav1.GetOptions{}); err != nil {
		t.Fatalf("the Service killed while kpf exposes it: %v", err)
	}
	k.Signal(syscall.SIGKILL)
	k.Wait(10 * time.Second)
	gc, err := runWithin(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "relay", "gc", "-n", ns), 60*time.Second)
	if err != nil || !strings.Contains(string(gc), "deleted") {
		t.Fatalf("kpf relay gc: %v\n%s", err, gc)
	}
	start := time.Now()
	for {
		_, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "killed", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			t.Logf("kpf relay gc: the Service went %s after its relay pod", time.Since(start))
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the Service of a killed kpf expose outlived its relay pod by 30 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestExposeServesOnlyItsRelays: a pod that carries an exposure's
// kpf.dev/forward label but that kpf did not make (anyone who may create
// pods could) gets none of its traffic: the Service selects no pod by
// label (kpf writes its EndpointSlice, naming only the relay kpf made),
// and kpf holds its control stream only to its relays. The impostor, an
// echo on the relay's ports, would answer a request with the request
// itself. The relay deleted, kpf makes a new one and the Service answers
// from this machine again; Ctrl-C leaves the impostor alone.
func TestExposeServesOnlyItsRelays(t *testing.T) {
	needPodNetwork(t)
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	ctx := context.Background()
	sb.Apply(t, ns, exposeClientPod)
	client := sb.ReadyPods(t, ns, "app=client", 1)[0].Status.PodIP
	_, port, _ := net.SplitHostPort(localEcho(t))
	p := sandboxtest.Start(t, exec.Command(kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "expose", "--relay-image", ownRelayImage(t, sb), "-n", ns, "svc/laptop", "80:"+port))
	p.WaitLine(t, `^Exposing svc/laptop\.`, 150*time.Second)
	relays, err := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"})
	if err != nil || len(relays.Items) != 1 {
		t.Fatalf("relay pods: %v %v", relays, err)
	}
	relay := relays.Items[0]
	svc, err := sb.Admin.CoreV1().Services(ns).Get(ctx, "laptop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.Selector) != 0 {
		t.Errorf("the Service selects pods by label: %v", svc.Spec.Selector)
	}
	sb.Apply(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: evil, labels: {app: evil, kpf.dev/forward: %q}}
spec:
  containers:
  - {name: echo, image: kpf.test/echo, ports: [{containerPort: 4090}, {containerPort: 4190}], readinessProbe: {tcpSocket: {port: 4190}, periodSeconds: 1}}
`, relay.Labels["kpf.dev/forward"]))
	sb.ReadyPods(t, ns, "app=evil", 1)
	// ask sends one request through the Service, by name (the garbage
	// collector may take the Service with the deleted relay, and kpf make
	// it again): nil when this machine answered it; the test fails at once
	// when the impostor did.
	addr := "laptop:80"
	n := 0
	ask := func() error {
		n++
		send := fmt.Sprintf("req-%d", n)
		got, err := dialFrom(client, addr, send)
		if got == send {
			t.Fatalf("the impostor pod evil answered a request to the Service: %q\n%s", got, p.Output())
		}
		if err == nil && got != "laptop got "+send+"|end" {
			err = fmt.Errorf("answer %q", got)
		}
		return err
	}
	for range 10 { // the old Service (selector) would spread these over both pods
		if err := ask(); err != nil {
			t.Fatalf("before the delete: %v", err)
		}
	}
	zero := int64(0)
	if err := sb.Admin.CoreV1().Pods(ns).Delete(ctx, relay.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "the Service answered from this machine through a new relay", func() (bool, error) {
		err := ask()
		return err == nil, err
	})
	for range 10 {
		if err := ask(); err != nil {
			t.Fatalf("after the new relay: %v", err)
		}
	}
	now, err := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"})
	if err != nil || len(now.Items) != 1 || now.Items[0].Name == relay.Name {
		t.Fatalf("relay pods after the delete: %v %v, want one new one", now, err)
	}
	es, err := sb.Admin.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=laptop"})
	if err != nil || len(es.Items) != 1 || len(es.Items[0].Endpoints) != 1 || es.Items[0].Endpoints[0].Addresses[0] != now.Items[0].Status.PodIP {
		t.Errorf("the Service's EndpointSlices: %+v %v, want one naming only the new relay %s", es, err, now.Items[0].Status.PodIP)
	}
	if strings.Contains(p.Output(), "evil") {
		t.Errorf("kpf speaks of the impostor pod evil:\n%s", p.Output())
	}
	interrupt(t, p)
	if pods, _ := sb.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "kpf.dev/relay=expose"}); len(pods.Items) != 0 {
		t.Errorf("after Ctrl-C, relay pods left: %d", len(pods.Items))
	}
	if es, _ := sb.Admin.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=laptop"}); len(es.Items) != 0 {
		t.Errorf("after Ctrl-C, EndpointSlices left: %d", len(es.Items))
	}
	if _, err := sb.Admin.CoreV1().Pods(ns).Get(ctx, "evil", metav1.GetOptions{}); err != nil {
		t.Errorf("kpf deleted a pod it did not make: %v", err)
	}
}
