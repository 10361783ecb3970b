package proxydial

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
	"k8s.io/client-go/rest"
)

// proxyPeer answers one CONNECT on s with answer, after checking the
// request, and reports the request it read.
func proxyPeer(t *testing.T, s io.ReadWriter, answer string) <-chan *http.Request {
	got := make(chan *http.Request, 1)
	go func() {
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil {
			t.Errorf("proxy: reading CONNECT: %v", err)
			close(got)
			return
		}
		got <- req
		io.WriteString(s, answer)
	}()
	return got
}

func TestHTTPConnectLeavesTheServersBytesInTheSocket(t *testing.T) {
	c, s := testnet.TCPPair(t)
	p, _ := url.Parse("http://alice:s3cret@proxy.example:3128")
	// The proxy's answer and the server's first bytes in one segment.
	got := proxyPeer(t, s, "HTTP/1.1 200 Connection established\r\nProxy-Agent: test\r\n\r\nSERVER-HELLO")
	if err := httpConnect(context.Background(), c, p, "api.example:6443"); err != nil {
		t.Fatal(err)
	}
	req := <-got
	if req.Method != http.MethodConnect || req.Host != "api.example:6443" || req.RequestURI != "api.example:6443" {
		t.Errorf("request: %s %s, Host %s", req.Method, req.RequestURI, req.Host)
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if a := req.Header.Get("Proxy-Authorization"); a != want {
		t.Errorf("Proxy-Authorization %q, want %q", a, want)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, len("SERVER-HELLO"))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "SERVER-HELLO" {
		t.Fatalf("after CONNECT the socket gave %q, %v; want the server's bytes", b, err)
	}
}

func TestRefusedConnectNamesTheProxyNotItsPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		<-proxyPeer(t, s, "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
		io.Copy(io.Discard, s)
	}()
	p, _ := url.Parse("http://alice:s3cret@" + ln.Addr().String())
	_, err = DialTCP(context.Background(), p, "api.example:6443")
	var pe *ProxyError
	var re *RefusedError
	if !errors.As(err, &pe) || !errors.As(err, &re) || re.Status != "407 Proxy Authentication Required" {
		t.Fatalf("error %#v is not the proxy's refusal with its status", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, ln.Addr().String()) || !strings.Contains(msg, "407 Proxy Authentication Required") {
		t.Errorf("error %q does not say which proxy refused and how", msg)
	}
	if strings.Contains(msg, "s3cret") {
		t.Errorf("error %q prints the proxy's password", msg)
	}
}

func TestHTTPConnectToASilentProxyEndsWithItsContext(t *testing.T) {
	c, _ := testnet.TCPPair(t)
	p, _ := url.Parse("http://proxy.example:3128")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { done <- httpConnect(ctx, c, p, "api.example:6443") }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), context.Canceled.Error()) {
			t.Fatalf("error %v, want the context's", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CONNECT to a silent proxy outlived its cancelled context")
	}
}

func TestProxyRule(t *testing.T) {
	u, _ := url.Parse("https://api.example.com:6443/api/v1/namespaces/ns/pods/p/portforward")
	cfg := &rest.Config{Host: "https://api.example.com:6443"}
	for _, tc := range []struct {
		proxy string
		own   bool
	}{
		{"", true},
		{"http://proxy.example:3128", true},
		{"socks5://proxy.example:1080", true},
		{"https://proxy.example:3129", false}, // TLS to the proxy: client-go's path
	} {
		cfg.Proxy = func(*http.Request) (*url.URL, error) {
			if tc.proxy == "" {
				return nil, nil
			}
			return url.Parse(tc.proxy)
		}
		p, err := ProxyURL(cfg, u)
		if err != nil {
			t.Fatal(err)
		}
		if (tc.proxy == "") != (p == nil) {
			t.Errorf("proxy-url %q: rule gave %v", tc.proxy, p)
		}
		if got := Supported(p); got != tc.own {
			t.Errorf("proxy-url %q: kpf's data path %v, want %v", tc.proxy, got, tc.own)
		}
	}
}

func TestCanonicalAddr(t *testing.T) {
	for in, want := range map[string]string{
		"http://proxy.example":       "proxy.example:80",
		"http://proxy.example:3128":  "proxy.example:3128",
		"https://api.example":        "api.example:443",
		"socks5://[::1]":             "[::1]:1080",
		"https://[2001:db8::1]:6443": "[2001:db8::1]:6443",
	} {
		u, _ := url.Parse(in)
		if got := CanonicalAddr(u); got != want {
			t.Errorf("CanonicalAddr(%s) = %s, want %s", in, got, want)
		}
	}
}
