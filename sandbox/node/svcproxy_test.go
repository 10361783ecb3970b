package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// within polls cond until it holds or d passes.
func within(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// namedTCP answers each connection with its name, after reading to EOF.
func namedTCP(t *testing.T, name string) int {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				io.WriteString(c, name)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// namedUDP answers each datagram with its name and the datagram.
func namedUDP(t *testing.T, name string) int {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

func testService(clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports},
	}
}

// testSlice is an EndpointSlice of Service ns/web: the addresses, ready or
// not, with one port.
func testSlice(name, portName string, proto corev1.Protocol, port int, ready map[string]bool) *discoveryv1.EndpointSlice {
	p := int32(port)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		Ports:      []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p}},
	}
	for a, r := range ready {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	return es
}

func tcpAsk(addr string) (string, error) {
	c, err := net.DialTimeout("tcp4", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(c, "hi")
	c.(*net.TCPConn).CloseWrite() // the backend answers after EOF: half-close goes through
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestServiceProxyFollowsEndpoints(t *testing.T) {
	svcs := newServices()
	p := newServiceProxy(slog.New(slog.NewTextHandler(io.Discard, nil)), svcs)
	svcs.notify = p.sync
	t.Cleanup(p.stop)
	// Two backends on the same address but different ports cannot be told
	// apart by a slice's one port: use one slice per backend.
	a, b := namedTCP(t, "a"), namedTCP(t, "b")
	const vip = "127.31.0.1"
	addr := vip + ":80"
	svcs.setService(testService(vip, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}), false)
	if _, err := tcpAsk(addr); err == nil {
		t.Fatal("a Service without endpoints accepts connections; want refused")
	}
	svcs.setSlice(testSlice("web-a", "http", corev1.ProtocolTCP, a, map[string]bool{"127.0.0.1": true}), false)
	within(t, 2*time.Second, "the ClusterIP to reach backend a", func() error {
		got, err := tcpAsk(addr)
		if err == nil && got != "a" {
			err = errors.New("got " + got)
		}
		return err
	})
	// Both ready: connections go to each in turn.
	svcs.setSlice(testSlice("web-b", "http", corev1.ProtocolTCP, b, map[string]bool{"127.0.0.1": true}), false)
	var got []string
	for range 4 {
		g, err := tcpAsk(addr)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, g)
	}
	if got[0] == got[1] || got[1] == got[2] || got[2] == got[3] {
		t.Errorf("four connections went to %v: want each backend in turn", got)
	}
	// Backend a not ready, b ready: every new connection goes to b.
	svcs.setSlice(testSlice("web-a", "http", corev1.ProtocolTCP, a, map[string]bool{"127.0.0.1": false}), false)
	for i := range 5 {
		if got, err := tcpAsk(addr); err != nil || got != "b" {
			t.Fatalf("connection %d: %q, %v; want b", i, got, err)
		}
	}
	svcs.setService(testService(vip), true)
	if _, err := tcpAsk(addr); err == nil {
		t.Error("a deleted Service's ClusterIP still accepts connections")
	}
}

func TestServiceProxyUDP(t *testing.T) {
	svcs := newServices()
	p := newServiceProxy(slog.New(slog.NewTextHandler(io.Discard, nil)), svcs)
	svcs.notify = p.sync
	t.Cleanup(p.stop)
	a, b := namedUDP(t, "a"), namedUDP(t, "b")
	const vip = "127.31.0.2"
	svcs.setService(testService(vip, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}), false)
	svcs.setSlice(testSlice("web-a", "dns", corev1.ProtocolUDP, a, map[string]bool{"127.0.0.1": true}), false)
	c, err := net.Dial("udp4", vip+":53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(msg string) (string, error) {
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := io.WriteString(c, msg); err != nil {
			return "", err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	for i := range 3 {
		msg := "ping" + strconv.Itoa(i)
		within(t, 2*time.Second, "an answer from a", func() error {
			got, err := ask(msg)
			if err == nil && got != "a:"+msg {
				err = errors.New("got " + got)
			}
			return err
		})
	}
	// The client's session moves when its backend is no longer ready.
	svcs.setSlice(testSlice("web-a", "dns", corev1.ProtocolUDP, a, map[string]bool{"127.0.0.1": false}), false)
	svcs.setSlice(testSlice("web-b", "dns", corev1.ProtocolUDP, b, map[string]bool{"127.0.0.1": true}), false)
	within(t, 2*time.Second, "an answer from b", func() error {
		got, err := ask("x")
		if err == nil && !strings.HasPrefix(got, "b:") {
			err = errors.New("got " + got)
		}
		return err
	})
}

// The route that makes a Service range the node's comes and goes (tried on
// a range of its own, not to disturb a running sandbox's).
func TestServiceRoute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN)")
	}
	const cidr = "10.254.0.0/16"
	has := func() bool {
		out, err := exec.Command("ip", "route", "show", "table", "local", cidr).Output()
		return err == nil && strings.Contains(string(out), "local "+cidr)
	}
	if err := addServiceRoute(cidr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeServiceRoute(cidr) })
	if err := addServiceRoute(cidr); err != nil {
		t.Fatalf("adding the route again: %v (an agent restarted after a crash does)", err)
	}
	if !has() {
		t.Fatal("no local route for " + cidr)
	}
	ln, err := net.Listen("tcp4", "10.254.1.2:0")
	if err != nil {
		t.Fatalf("listen on an address of the range: %v", err)
	}
	ln.Close()
	removeServiceRoute(cidr)
	if has() {
		t.Error("the route is still there after removeServiceRoute")
	}
}

// The agent's service proxy and DNS start, serve a Service, and stop
// (once, the route gone) when the agent does.
func TestStartServicesStops(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN)")
	}
	const cidr = "10.253.0.0/16"
	backend := namedTCP(t, "a")
	svc := testService("10.253.0.7", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	cs := fake.NewClientset(svc, testSlice("web-a", "http", corev1.ProtocolTCP, backend, map[string]bool{"127.0.0.1": true}))
	a := &Agent{cfg: Config{NodeName: "n", Services: cs}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	stop, err := a.startServices(context.Background(), cidr, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeServiceRoute(cidr) })
	within(t, 2*time.Second, "the ClusterIP to answer", func() error {
		_, err := tcpAsk("10.253.0.7:80")
		return err
	})
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}
	if _, err := tcpAsk("10.253.0.7:80"); err == nil {
		t.Error("the ClusterIP still answers after stop")
	}
	if out, _ := exec.Command("ip", "route", "show", "table", "local", cidr).Output(); len(out) > 0 {
		t.Errorf("route left after stop: %s", out)
	}
}
