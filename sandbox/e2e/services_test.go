package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// clusterNetApps: a client pod (kpf.test/http, which dials and resolves
// from inside the pod on request), TCP and UDP echo Services, a headless
// Service, two pods a Service switches between, and a pod with its own
// DNS settings.
const clusterNetApps = `
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: main, image: kpf.test/http, ports: [{name: main, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: main}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: custom-dns, labels: {app: custom-dns}}
spec:
  dnsPolicy: None
  dnsConfig: {nameservers: [192.0.2.1], searches: [x.example], options: [{name: ndots, value: "1"}]}
  containers:
  - {name: main, image: kpf.test/http, ports: [{name: main, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: main}, periodSeconds: 1}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: udp}
spec:
  replicas: 1
  selector: {matchLabels: {app: udp}}
  template:
    metadata: {labels: {app: udp}}
    spec:
      containers: [{name: main, image: kpf.test/udp-echo, ports: [{name: main, containerPort: 5300, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp}
  ports: [{name: main, port: 53, targetPort: main, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-pods}
spec:
  clusterIP: None
  selector: {app: echo}
  ports: [{name: main, port: 7070}]
---
apiVersion: v1
kind: Pod
metadata: {name: one, labels: {app: follow, which: one}}
spec:
  containers:
  - {name: main, image: kpf.test/http, ports: [{name: main, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: main}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: two, labels: {app: follow, which: two}}
spec:
  containers:
  - {name: main, image: kpf.test/http, ports: [{name: main, containerPort: 8080}], readinessProbe: {httpGet: {path: /healthz, port: main}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {name: follow}
spec:
  selector: {which: one}
  ports: [{name: http, port: 80, targetPort: main}]
`

// podClient asks a kpf.test/http pod to act from inside it.
type podClient struct{ base string }

func (c podClient) get(path string) (int, string, error) {
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(c.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// dial connects from the pod to addr, sends send and returns the answer.
func (c podClient) dial(network, addr, send string) (string, error) {
	code, body, err := c.get("/dial?" + url.Values{"net": {network}, "addr": {addr}, "send": {send}}.Encode())
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("dial %s %s from the pod: %d %s", network, addr, code, strings.TrimSpace(body))
	}
	return body, err
}

// lookup resolves name in the pod: its addresses, or the HTTP status.
func (c podClient) lookup(name string) ([]string, int, error) {
	code, body, err := c.get("/lookup/" + url.PathEscape(name))
	if err != nil || code != http.StatusOK {
		return nil, code, err
	}
	return strings.Fields(body), code, nil
}

func (c podClient) resolvConf(t *testing.T) string {
	code, body, err := c.get("/resolv.conf")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/resolv.conf: %d %v", code, err)
	}
	return body
}

// TestClusterNetworkFromAPod checks what a pod sees of the cluster's
// network: Services by ClusterIP and by name (TCP and UDP), headless
// Services, endpoint changes followed, the pod's resolv.conf, names only
// the cluster resolves, and other names forwarded to the node's resolver.
func TestClusterNetworkFromAPod(t *testing.T) {
	sb := sandboxtest.Get(t)
	if _, err := net.InterfaceByName("kpfsb0"); err != nil {
		t.Skip("no pod network (kpfsb0): the sandbox serves ClusterIPs and the cluster DNS on a pod network only")
	}
	ns := sb.Namespace(t)
	sb.Apply(t, ns, sandboxtest.App("echo", "kpf.test/echo", 2, 7070)+"---"+clusterNetApps)
	ctx := context.Background()
	svc := func(name string) *corev1.Service {
		s, err := sb.Admin.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	echoPods := sb.ReadyPods(t, ns, "app=echo", 2)
	sb.ReadyPods(t, ns, "app=udp", 1)
	sb.ReadyPods(t, ns, "app=follow", 2)
	clientPod := sb.ReadyPods(t, ns, "app=client", 1)[0]
	client := podClient{"http://" + net.JoinHostPort(localAddr(t, sb, &clientPod), "8080")}

	t.Run("TCP by ClusterIP and by name", func(t *testing.T) {
		for _, host := range []string{svc("echo").Spec.ClusterIP, "echo", "echo." + ns, "echo." + ns + ".svc.cluster.local"} {
			addr := net.JoinHostPort(host, "80")
			sandboxtest.WaitFor(t, 10*time.Second, "echo through "+addr, func() (bool, error) {
				got, err := client.dial("tcp", addr, "hello "+host)
				return got == "hello "+host, err
			})
		}
	})
	t.Run("UDP by ClusterIP and by name", func(t *testing.T) {
		for _, host := range []string{svc("udp").Spec.ClusterIP, "udp." + ns} {
			addr := net.JoinHostPort(host, "53")
			sandboxtest.WaitFor(t, 10*time.Second, "UDP echo through "+addr, func() (bool, error) {
				got, err := client.dial("udp", addr, "ping "+host)
				return got == "ping "+host, err
			})
		}
	})
	t.Run("headless Service is its ready pods", func(t *testing.T) {
		var want []string
		for _, p := range echoPods {
			want = append(want, p.Status.PodIP)
		}
		slices.Sort(want)
		// The EndpointSlice may trail the pods' readiness by a moment.
		sandboxtest.WaitFor(t, 5*time.Second, fmt.Sprintf("echo-pods to resolve to the pod IPs %v in the pod", want), func() (bool, error) {
			got, code, err := client.lookup("echo-pods")
			if err == nil && !slices.Equal(got, want) {
				err = fmt.Errorf("got %v (HTTP %d)", got, code)
			}
			return err == nil, err
		})
	})
	t.Run("ClusterIP follows endpoint changes", func(t *testing.T) {
		addr := net.JoinHostPort(svc("follow").Spec.ClusterIP, "80")
		whoAnswers := func() (string, error) {
			body, err := client.dial("tcp", addr, "GET / HTTP/1.0\r\n\r\n")
			if err != nil {
				return "", err
			}
			_, rest, _ := strings.Cut(body, "\r\n\r\n")
			return strings.TrimSpace(rest), nil
		}
		sandboxtest.WaitFor(t, 10*time.Second, "pod one to answer", func() (bool, error) {
			got, err := whoAnswers()
			return got == "pod one namespace "+ns, err
		})
		patch := []byte(`{"spec":{"selector":{"which":"two"}}}`)
		start := time.Now()
		if _, err := sb.Admin.CoreV1().Services(ns).Patch(ctx, "follow", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		sandboxtest.WaitFor(t, 3*time.Second, "pod two to answer after the selector changed", func() (bool, error) {
			got, err := whoAnswers()
			return got == "pod two namespace "+ns, err
		})
		t.Logf("the ClusterIP followed the new endpoints in %s", time.Since(start).Round(10*time.Millisecond))
	})
	t.Run("resolv.conf", func(t *testing.T) {
		want := "nameserver 10.96.0.10\nsearch " + ns + ".svc.cluster.local svc.cluster.local cluster.local"
		if got := client.resolvConf(t); !strings.HasPrefix(got, want) || !strings.Contains(got, "\noptions ndots:5\n") {
			t.Errorf("ClusterFirst pod's /etc/resolv.conf:\n%s\nwant it to start with\n%s\nand have options ndots:5", got, want)
		}
		custom := sb.ReadyPods(t, ns, "app=custom-dns", 1)[0]
		c := podClient{"http://" + net.JoinHostPort(localAddr(t, sb, &custom), "8080")}
		if got, want := c.resolvConf(t), "nameserver 192.0.2.1\nsearch x.example\noptions ndots:1\n"; got != want {
			t.Errorf("dnsPolicy None pod's /etc/resolv.conf:\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("names only the cluster resolves", func(t *testing.T) {
		for name, want := range map[string]string{
			"kube-dns.kube-system":                   "10.96.0.10",
			"kube-dns.kube-system.svc.cluster.local": "10.96.0.10",
			"10-1-2-3." + ns + ".pod.cluster.local":  "10.1.2.3",
		} {
			if got, code, err := client.lookup(name); err != nil || !slices.Equal(got, []string{want}) {
				t.Errorf("lookup %s in the pod: %v (HTTP %d, %v); want %s", name, got, code, err, want)
			}
			if !strings.HasSuffix(name, ".cluster.local") {
				continue
			}
			if addrs, err := net.DefaultResolver.LookupHost(ctx, name); err == nil {
				t.Errorf("this machine resolves %s to %v: want it known inside the cluster only", name, addrs)
			}
		}
		if got, code, err := client.lookup("nothing-here." + ns + ".svc.cluster.local"); err != nil || code != http.StatusNotFound {
			t.Errorf("lookup of a missing Service in the pod: %v (HTTP %d, %v); want not found (404)", got, code, err)
		}
	})
	t.Run("other names go to the node's resolver", func(t *testing.T) {
		const name = "proxy.golang.org"
		hostAddrs, err := net.DefaultResolver.LookupHost(ctx, name)
		if err != nil {
			t.Skipf("this machine cannot resolve %s (%v): nothing to compare with", name, err)
		}
		var want []string
		for _, a := range hostAddrs {
			if ip := net.ParseIP(a); ip != nil && ip.To4() != nil {
				want = append(want, a)
			}
		}
		slices.Sort(want)
		got, code, err := client.lookup(name)
		if err != nil || code != http.StatusOK {
			t.Fatalf("lookup %s in the pod: HTTP %d, %v", name, code, err)
		}
		common := false
		for _, a := range got {
			common = common || slices.Contains(want, a)
		}
		if len(want) > 0 && !common {
			t.Errorf("lookup %s in the pod: %v; this machine has %v: want an address in common", name, got, want)
		}
	})
}
