package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/tunnel"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// cluster is a fake API server with a service api in shop (port 80 to
// targetPort 8080, two ready pods), a headless db with pod db-0, and
// nothing in other namespaces.
func cluster(t *testing.T) *fakeapi.Server {
	s := fakeapi.New(t)
	web := map[string]string{"app": "api"}
	s.Pod(t, "shop", "api-1", web, true, fakeapi.Echo(t, "api-1"))
	s.Pod(t, "shop", "api-2", web, true, fakeapi.Echo(t, "api-2"))
	db := s.Pod(t, "shop", "db-0", map[string]string{"app": "db"}, true, fakeapi.Echo(t, "db-0"))
	db.Spec.Hostname, db.Spec.Subdomain = "db-0", "db"
	db.Status.PodIP = "10.1.0.7"
	if _, err := s.Client.CoreV1().Pods("shop").Update(context.Background(), db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := func(name, ip string, sel map[string]string, ports ...corev1.ServicePort) {
		_, err := s.Client.CoreV1().Services("shop").Create(context.Background(), &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Spec:       corev1.ServiceSpec{ClusterIP: ip, Selector: sel, Ports: ports},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	svc("api", "10.96.0.10", web, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	svc("db", "None", map[string]string{"app": "db"}, corev1.ServicePort{Name: "pg", Port: 5432})
	return s
}

// start runs a proxy on the fake cluster; it stops with the test.
func start(t *testing.T, s *fakeapi.Server, o Options) string {
	t.Helper()
	o.Client = s.Client
	o.Namespace = "shop"
	o.Watches = follow.NewWatches(s.Client)
	o.ReconnectWait = 2 * time.Second
	o.Log = slog.New(slog.DiscardHandler)
	o.Dial = func(ctx context.Context, ns, pod string, tr tunnel.Transport) (*tunnel.Conn, error) {
		return tunnel.Dial(ctx, tunnel.APIServer{Config: s.Config}, ns, pod, tunnel.SPDY, tunnel.DefaultDataPath)
	}
	p := New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10s of its context ending")
		}
	})
	return ln.Addr().String()
}

// viaSOCKS connects to host:port through the proxy and reads the echo
// server's greeting (the pod's name).
func viaSOCKS(t *testing.T, proxyAddr, host string, port uint16, user, pass string) (string, error) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := socksDial(c, host, port, user, pass); err != nil {
		return "", err
	}
	return echoes(c)
}

// echoes reads the greeting and checks that bytes come back as sent.
func echoes(c net.Conn) (string, error) {
	br := bufio.NewReader(c)
	name, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	msg := []byte("hello through the proxy")
	if _, err := c.Write(msg); err != nil {
		return "", err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(br, got); err != nil {
		return "", err
	}
	if !bytes.Equal(got, msg) {
		return "", fmt.Errorf("echo %q, want %q", got, msg)
	}
	return strings.TrimSpace(name), nil
}

func TestNamesReachTheirPods(t *testing.T) {
	s := cluster(t)
	addr := start(t, s, Options{})
	for _, tc := range []struct {
		host string
		port uint16
		want []string // any of
	}{
		{"api", 80, []string{"api-1", "api-2"}},
		{"api.shop", 80, []string{"api-1", "api-2"}},
		{"api.shop.svc", 80, []string{"api-1", "api-2"}},
		{"API.shop.svc.cluster.local.", 80, []string{"api-1", "api-2"}},
		{"10.96.0.10", 80, []string{"api-1", "api-2"}},
		{"db-0.db.shop.svc.cluster.local", 5432, []string{"db-0"}},
		{"db", 9999, []string{"db-0"}}, // headless: any port, as DNS gives the pods' addresses
		{"10.1.0.7", 1234, []string{"db-0"}},
	} {
		got, err := viaSOCKS(t, addr, tc.host, tc.port, "", "")
		if err != nil || !contains(tc.want, got) {
			t.Errorf("%s:%d: reached %q, %v; want one of %v", tc.host, tc.port, got, err, tc.want)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestNewConnectionsSpreadOverReadyPods(t *testing.T) {
	s := cluster(t)
	addr := start(t, s, Options{})
	seen := map[string]int{}
	for range 8 {
		got, err := viaSOCKS(t, addr, "api.shop", 80, "", "")
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["api-1"] == 0 || seen["api-2"] == 0 {
		t.Fatalf("8 connections reached %v; want both ready pods", seen)
	}
}

func TestUnknownNamesAndPortsAreRefusedWithWhatExists(t *testing.T) {
	s := cluster(t)
	addr := start(t, s, Options{})
	for _, tc := range []struct {
		host   string
		port   uint16
		socks  string // the SOCKS reply
		status int    // the HTTP CONNECT status
		says   string // in the HTTP body
	}{
		{"apx.shop", 80, "reply 4", 404, `no service "apx" in namespace "shop" (api, db); names outside the cluster pass only with --direct`},
		{"api.shop", 81, "reply 4", 404, `no port 81 on service/api in namespace "shop" (80/http)`},
		{"api.shop.svc.cluster.local", 81, "reply 4", 404, `(80/http)`},
		{"db-9.db.shop.svc", 5432, "reply 4", 404, `no pod with hostname "db-9" under service "db" in namespace "shop" (db-0)`},
		{"example.com", 443, "reply 2", 403, `example.com: not a cluster name`},
		{"a.b.example.com", 443, "reply 2", 403, `run it with --direct`},
		{"127.0.0.1", 22, "reply 2", 403, `not a cluster name`},
	} {
		_, err := viaSOCKS(t, addr, tc.host, tc.port, "", "")
		if err == nil || !strings.Contains(err.Error(), tc.socks) {
			t.Errorf("SOCKS5 %s:%d: %v, want %s", tc.host, tc.port, err, tc.socks)
		}
		status, body := connectVia(t, addr, fmt.Sprintf("%s:%d", tc.host, tc.port), "")
		if status != tc.status || !strings.Contains(body, tc.says) {
			t.Errorf("CONNECT %s:%d: %d %q, want %d and %q", tc.host, tc.port, status, body, tc.status, tc.says)
		}
	}
}

// connectVia sends CONNECT and returns the status and body of a refusal;
// on 200 it checks the tunnel echoes.
func connectVia(t *testing.T, proxyAddr, hostport, auth string) (int, string) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "CONNECT " + hostport + " HTTP/1.1\r\nHost: " + hostport + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: Basic " + auth + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if _, err := echoes(&readerConn{c, br}); err != nil {
		return 0, err.Error()
	}
	return 200, ""
}

type readerConn struct {
	net.Conn
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestDirectPassesOtherNames(t *testing.T) {
	s := cluster(t)
	outside := fakeapi.Echo(t, "outside")
	addr := start(t, s, Options{Direct: true})
	_, port, _ := net.SplitHostPort(outside)
	var n uint16
	fmt.Sscan(port, &n)
	got, err := viaSOCKS(t, addr, "127.0.0.1", n, "", "")
	if err != nil || got != "outside" {
		t.Fatalf("direct: %q, %v", got, err)
	}
	// A cluster name still goes to the cluster.
	if got, err := viaSOCKS(t, addr, "db-0.db.shop.svc", 1, "", ""); err != nil || got != "db-0" {
		t.Fatalf("cluster name with --direct: %q, %v", got, err)
	}
}

func TestAuthIsRequiredOfEveryClient(t *testing.T) {
	s := cluster(t)
	addr := start(t, s, Options{Auth: &Auth{"ann", "s3cret"}})
	if _, err := viaSOCKS(t, addr, "api", 80, "", ""); err == nil {
		t.Error("SOCKS5 without a password was let in")
	}
	if _, err := viaSOCKS(t, addr, "api", 80, "ann", "wrong"); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("SOCKS5 wrong password: %v", err)
	}
	if got, err := viaSOCKS(t, addr, "api", 80, "ann", "s3cret"); err != nil || !strings.HasPrefix(got, "api-") {
		t.Errorf("SOCKS5 right password: %q, %v", got, err)
	}
	if status, _ := connectVia(t, addr, "api:80", ""); status != http.StatusProxyAuthRequired {
		t.Errorf("CONNECT without a password: %d", status)
	}
	if status, _ := connectVia(t, addr, "api:80", "YW5uOndyb25n"); status != http.StatusProxyAuthRequired { // ann:wrong
		t.Errorf("CONNECT wrong password: %d", status)
	}
	if status, body := connectVia(t, addr, "api:80", "YW5uOnMzY3JldA=="); status != 200 { // ann:s3cret
		t.Errorf("CONNECT right password: %d %s", status, body)
	}
}

func TestPlainHTTPRequestsGoToThePod(t *testing.T) {
	s := fakeapi.New(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s host=%s auth=%q", r.Method, r.URL.Path, r.Host, r.Header.Get("Proxy-Authorization"))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.Pod(t, "shop", "web-1", map[string]string{"app": "web"}, true, ln.Addr().String())
	s.Client.CoreV1().Services("shop").Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.11", Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	addr := start(t, s, Options{Auth: &Auth{"ann", "s3cret"}})
	px, _ := url.Parse("http://ann:s3cret@" + addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(px)}, Timeout: 10 * time.Second}
	for range 3 { // kept-alive connections to the pod are reused
		resp, err := client.Get("http://web.shop/hello")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := `GET /hello host=web.shop auth=""`; string(b) != want {
			t.Fatalf("got %q, want %q (the proxy's credentials must not reach the pod)", b, want)
		}
	}
	resp, err := client.Get("http://web.shop:81/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 404 || !strings.Contains(string(b), "no port 81 on service/web") {
		t.Fatalf("unknown port: %d %q", resp.StatusCode, b)
	}
}

func TestStopEndsOpenConnections(t *testing.T) {
	s := cluster(t)
	p := New(Options{Client: s.Client, Namespace: "shop", Log: slog.New(slog.DiscardHandler), ReconnectWait: time.Second,
		Dial: func(ctx context.Context, ns, pod string, tr tunnel.Transport) (*tunnel.Conn, error) {
			return tunnel.Dial(ctx, tunnel.APIServer{Config: s.Config}, ns, pod, tunnel.SPDY, tunnel.DefaultDataPath)
		}})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Serve(ctx, ln); close(done) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := socksDial(c, "api", 80, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Open != 1 || st.Total != 1 {
		t.Errorf("status with one connection open: %+v", st)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve kept running with a connection open after its context ended")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after stop: %v", err)
	}
}

// socksDial is a SOCKS5 client handshake on c, for tests and the bench.
func socksDial(c net.Conn, host string, port uint16, user, password string) error {
	method := byte(methodNone)
	if user != "" {
		method = methodPass
	}
	if _, err := c.Write([]byte{socksVersion, 1, method}); err != nil {
		return err
	}
	var r [2]byte
	if _, err := io.ReadFull(c, r[:]); err != nil {
		return err
	}
	if r[1] != method {
		return fmt.Errorf("socks5: method %#x refused", method)
	}
	if user != "" {
		b := append([]byte{authVersion, byte(len(user))}, user...)
		b = append(append(b, byte(len(password))), password...)
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, r[:]); err != nil {
			return err
		}
		if r[1] != 0 {
			return errors.New("socks5: authentication failed")
		}
	}
	req := append([]byte{socksVersion, cmdConnect, 0, atypDomain, byte(len(host))}, host...)
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return err
	}
	if rep[1] != repOK {
		return fmt.Errorf("socks5: reply %d", rep[1])
	}
	return nil
}
