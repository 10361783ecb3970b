// Package proxydial opens the TCP connection under a tunnel, straight or
// through the proxy the kubeconfig or the environment names: an HTTP
// CONNECT or a SOCKS5 handshake made on the socket itself, so that the
// socket stays the one kpf's data path works on. It does no TLS and knows
// nothing of tunnels.
package proxydial

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/proxy"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"
)

// Tunnels through proxies. kpf's data path works on the TCP socket under
// TLS (package fastconn), so it makes the proxy's tunnel itself on that socket,
// as client-go's dialers do: an HTTP CONNECT, or a SOCKS5 handshake. An
// https:// proxy (TLS to the proxy, then TLS inside it) leaves no socket to
// work on: those tunnels take client-go's path.

// DialTimeout bounds a TCP dial and a proxy's answer, as client-go's.
const DialTimeout = 30 * time.Second

// ProxyURL is the proxy that cfg's rule names for u (the kubeconfig's
// proxy-url, else HTTPS_PROXY and NO_PROXY), or nil.
func ProxyURL(cfg *rest.Config, u *url.URL) (*url.URL, error) {
	return For(cfg)(&http.Request{URL: u, Header: http.Header{}})
}

// For is the proxy rule for cfg's connections: the kubeconfig's
// proxy-url, else the environment's (HTTPS_PROXY, NO_PROXY), as client-go.
func For(cfg *rest.Config) func(*http.Request) (*url.URL, error) {
	if cfg.Proxy != nil {
		return cfg.Proxy
	}
	return utilnet.NewProxierWithNoProxyCIDR(http.ProxyFromEnvironment)
}

// Supported reports whether kpf's data path can go through p (nil: no
// proxy).
func Supported(p *url.URL) bool {
	return p == nil || p.Scheme == "http" || p.Scheme == "" || p.Scheme == "socks5"
}

// DialTCP opens the TCP connection to addr (host:port), straight or
// through p; either way the returned connection is the local socket.
func DialTCP(ctx context.Context, p *url.URL, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}
	if p == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	c, err := d.DialContext(ctx, "tcp", CanonicalAddr(p))
	if err != nil {
		return nil, &ProxyError{Proxy: p, Err: err}
	}
	switch p.Scheme {
	case "socks5":
		err = socks5Connect(ctx, c, p, addr)
	default:
		err = httpConnect(ctx, c, p, addr)
	}
	if err != nil {
		c.Close()
		return nil, &ProxyError{Proxy: p, Err: err}
	}
	return c, nil
}

// ProxyError is a proxy's failure to make a tunnel's connection: it could
// not be reached, or it refused.
type ProxyError struct {
	Proxy *url.URL
	Err   error
}

func (e *ProxyError) Error() string { return "proxy " + e.Proxy.Redacted() + ": " + e.Err.Error() }
func (e *ProxyError) Unwrap() error { return e.Err }

// RefusedError is a proxy's refusal of a CONNECT, with its status.
type RefusedError struct {
	Status string // "407 Proxy Authentication Required"
}

func (e *RefusedError) Error() string { return "CONNECT refused: " + e.Status }

// httpConnect asks the HTTP proxy p at the other end of c for a tunnel to
// addr.
func httpConnect(ctx context.Context, c net.Conn, p *url.URL, addr string) error {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: http.Header{},
	}
	if pa := proxyAuth(p); pa != "" {
		req.Header.Set("Proxy-Authorization", pa)
	}
	stop := deadlineFrom(ctx, c)
	defer stop()
	if err := req.Write(c); err != nil {
		return err
	}
	// Read the answer a byte at a time: whatever follows it is the API
	// server's, and must stay in the socket for TLS.
	br := bufio.NewReaderSize(oneByteReader{c}, 16)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("reading the answer to CONNECT %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return &RefusedError{Status: resp.Status}
	}
	return nil
}

// oneByteReader reads at most one byte at a time, so that a bufio.Reader
// over it never reads past what it is asked for.
type oneByteReader struct{ c net.Conn }

func (r oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return r.c.Read(p)
}

// socks5Connect asks the SOCKS5 proxy p at the other end of c for a
// connection to addr (the proxy resolves its name, as with client-go).
func socks5Connect(ctx context.Context, c net.Conn, p *url.URL, addr string) error {
	var auth *proxy.Auth
	if p.User != nil {
		pass, _ := p.User.Password()
		auth = &proxy.Auth{User: p.User.Username(), Password: pass}
	}
	d, err := proxy.SOCKS5("tcp", CanonicalAddr(p), auth, nil)
	if err != nil {
		return err
	}
	wc, ok := d.(interface {
		DialWithConn(ctx context.Context, c net.Conn, network, address string) (net.Addr, error)
	})
	if !ok {
		return errors.New("SOCKS5 dialer cannot use a connection of its caller")
	}
	stop := deadlineFrom(ctx, c)
	defer stop()
	_, err = wc.DialWithConn(ctx, c, "tcp", addr)
	return err
}

// deadlineFrom bounds c's exchanges by ctx (its deadline, or DialTimeout
// without one, and its cancellation) until stop.
func deadlineFrom(ctx context.Context, c net.Conn) (stop func()) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DialTimeout)
	}
	c.SetDeadline(deadline)
	var mu sync.Mutex
	stopped := false
	stopCancel := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			c.SetDeadline(time.Unix(1, 0))
		}
	})
	return func() {
		stopCancel()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		c.SetDeadline(time.Time{})
	}
}

// proxyAuth is the Proxy-Authorization header for p's user, if it has one.
func proxyAuth(p *url.URL) string {
	if p.User == nil {
		return ""
	}
	pass, _ := p.User.Password()
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(p.User.Username()+":"+pass))
}

// CanonicalAddr is u's host:port, with the scheme's port when it has none.
func CanonicalAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "socks5": "1080"}[u.Scheme]
		if port == "" {
			port = "80" // a proxy-url without a scheme is an HTTP proxy, as in client-go
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}
