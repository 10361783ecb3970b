package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"
)

// ServeHTTP is the HTTP side: CONNECT host:port opens a tunnel; a request
// for an absolute http:// URL is passed on, over a connection to the
// name's pod.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.wg.Add(1)
	defer p.wg.Done()
	if p.o.Auth != nil && !p.httpAuthorized(r) {
		p.refused.Add(1)
		w.Header().Set("Proxy-Authenticate", `Basic realm="kpf"`)
		http.Error(w, "kpf proxy: this proxy wants a user and password (Proxy-Authorization: Basic)", http.StatusProxyAuthRequired)
		return
	}
	if r.Method == http.MethodConnect {
		// Only after a plain request on the same connection: a
		// connection that starts with CONNECT is served by connect.
		http.Error(w, "kpf proxy: CONNECT must be the first request of a connection", http.StatusBadRequest)
		return
	}
	if r.URL.Host == "" || r.URL.Scheme != "http" {
		http.Error(w, fmt.Sprintf("kpf proxy: %s is a proxy: give it absolute http:// URLs (curl -x http://%[1]s URL), or use CONNECT or SOCKS5 for anything else", r.Host), http.StatusBadRequest)
		return
	}
	p.forwardHTTP(w, r)
}

func (p *Proxy) httpAuthorized(r *http.Request) bool {
	h := r.Header.Get("Proxy-Authorization")
	enc, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return false
	}
	user, pass, _ := strings.Cut(string(b), ":")
	return p.o.Auth.ok(user, pass)
}

// splitHostPort reads host:port, with a default port.
func splitHostPort(hostport, defaultPort string) (string, uint16, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, defaultPort
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || host == "" {
		return "", 0, fmt.Errorf("%q: want HOST:PORT", hostport)
	}
	return host, uint16(n), nil
}

// statusFor is the HTTP status that tells a client why a destination was
// refused.
func statusFor(err error) int {
	var nf *NotFoundError
	switch {
	case errors.Is(err, ErrOutside):
		return http.StatusForbidden
	case errors.As(err, &nf):
		return http.StatusNotFound
	}
	return http.StatusBadGateway
}

// connect serves a connection that starts with CONNECT host:port: it
// answers 200 and carries the connection, or answers why not and closes.
func (p *Proxy) connect(ctx context.Context, c *bufConn) {
	defer c.Close()
	r, err := http.ReadRequest(c.r)
	if err != nil {
		p.o.Log.Debug("CONNECT request", "client", c.RemoteAddr().String(), "err", err)
		return
	}
	refuse := func(status int, msg string, h ...string) {
		resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n", status, http.StatusText(status), len(msg)+1)
		for i := 0; i+1 < len(h); i += 2 {
			resp += h[i] + ": " + h[i+1] + "\r\n"
		}
		io.WriteString(c, resp+"\r\n"+msg+"\n")
	}
	if p.o.Auth != nil && !p.httpAuthorized(r) {
		p.refused.Add(1)
		refuse(http.StatusProxyAuthRequired, "kpf proxy: this proxy wants a user and password (Proxy-Authorization: Basic)", "Proxy-Authenticate", `Basic realm="kpf"`)
		return
	}
	host, port, err := splitHostPort(r.Host, "")
	if err != nil {
		refuse(http.StatusBadRequest, "kpf proxy: CONNECT "+err.Error())
		return
	}
	c.SetReadDeadline(time.Time{})
	d, err := p.route(ctx, host, port)
	if err != nil {
		refuse(statusFor(err), "kpf proxy: "+err.Error())
		return
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	p.carry(ctx, raw(c), d)
}

// serveCtx is the context of the running Serve: a hijacked connection
// lives past its request.
func (p *Proxy) serveCtx() context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ctx
}

// forwardHTTP passes a plain http:// request on and copies the answer
// back; the connections to pods are kept for the next requests.
func (p *Proxy) forwardHTTP(w http.ResponseWriter, r *http.Request) {
	host, port, err := splitHostPort(r.URL.Host, "80")
	if err != nil {
		http.Error(w, "kpf proxy: "+err.Error(), http.StatusBadRequest)
		return
	}
	if _, err := p.route(r.Context(), host, port); err != nil {
		http.Error(w, "kpf proxy: "+err.Error(), statusFor(err))
		return
	}
	p.reverse.ServeHTTP(w, r)
}

// newReverse is the plain-HTTP forwarder: its transport dials through
// the proxy's own routes.
func (p *Proxy) newReverse() *httputil.ReverseProxy {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := splitHostPort(addr, "80")
			if err != nil {
				return nil, err
			}
			d, err := p.route(ctx, host, port)
			if err != nil {
				return nil, err
			}
			local, remote := net.Pipe()
			pc := &pipeConn{Conn: local, err: make(chan error, 1)}
			sctx := p.serveCtx()
			go func() {
				pc.err <- p.carry(sctx, remote, d)
				remote.Close()
			}()
			return pc, nil
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0,
		DisableCompression:    true,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = pr.In.URL
			pr.Out.Host = pr.In.Host
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      nil,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.o.Log.Error("http request failed", "url", r.URL.String(), "err", err)
			http.Error(w, "kpf proxy: "+err.Error(), http.StatusBadGateway)
		},
	}
}

// pipeConn is the HTTP transport's end of a connection carried to a pod:
// when the pod's side ends in an error (it refused the port, say), reads
// return that error rather than a bare EOF, so the client hears why.
type pipeConn struct {
	net.Conn
	err chan error
}

func (c *pipeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		select {
		case e := <-c.err:
			if e != nil {
				c.err <- e
				return n, e
			}
			c.err <- nil
		default:
		}
	}
	return n, err
}
