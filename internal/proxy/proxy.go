// Package proxy is kpf proxy: one local port that speaks SOCKS5 (with
// remote name resolution), HTTP CONNECT and plain HTTP proxying, and
// carries each connection to the pod a cluster name stands for. Names
// resolve through the API as the cluster's DNS and the Service would route
// them (svc, svc.ns, svc.ns.svc[.cluster.local], a headless service's
// pods, ClusterIPs and pod IPs); each service or pod gets a follower, so
// connections have everything kpf forward's do: a tunnel per connection,
// pods followed through rollouts, both transports.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// Options configure a Proxy.
type Options struct {
	Client    kube.Interface
	Namespace string // for a bare service name
	// ClusterDomain is the cluster's DNS suffix (cluster.local).
	ClusterDomain string
	// Direct lets names outside the cluster through, dialled from here.
	Direct bool
	// Auth, if set, is required of every client.
	Auth *Auth
	// Dial opens a tunnel to a pod with a transport; the first tunnel
	// settles what auto means, for all that follow.
	Dial      func(ctx context.Context, namespace, pod string, tr tunnel.Transport) (*tunnel.Conn, error)
	Transport tunnel.Transport
	Watches   *follow.Watches
	// Liveness, if set, is the API server's liveness probe that every
	// route's follower subscribes to.
	Liveness      follow.Liveness
	ReconnectWait time.Duration
	Log           *slog.Logger
	// Routed, if set, hears of each name the first time it is routed.
	Routed func(dest string, r Route)
	// Ended, if set, hears of each carried connection when it ends (the
	// audit log).
	Ended func(Ended)
}

// Ended is a carried connection that ended.
type Ended struct {
	Dest        string // host:port as the client asked
	Route       Route  // zero for a direct one
	Local, Peer string // the proxy's address and the client's
	Pod         string
	Start       time.Time
	In, Out     int64 // bytes to the client and to the pod
	Err         error
}

// Auth is a user name and password.
type Auth struct{ User, Password string }

func (a *Auth) ok(user, password string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(a.User))
	p := subtle.ConstantTimeCompare([]byte(password), []byte(a.Password))
	return u&p == 1
}

// Proxy serves clients until its context ends.
type Proxy struct {
	o   Options
	res resolver

	mu       sync.Mutex
	backends map[string]*backend
	routed   map[string]bool
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup // requests the HTTP server runs (CONNECT runs its tunnel in one)
	ctx      context.Context
	reverse  *httputil.ReverseProxy

	transport                    atomic.Value // tunnel.Transport in use
	open, total, failed, refused atomic.Int64
	bytes                        meter.Meter
}

// New makes a proxy.
func New(o Options) *Proxy {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.ReconnectWait <= 0 {
		o.ReconnectWait = 30 * time.Second
	}
	p := &Proxy{
		o:        o,
		res:      resolver{client: o.Client, namespace: o.Namespace, domain: o.ClusterDomain, direct: o.Direct},
		backends: map[string]*backend{},
		routed:   map[string]bool{},
		conns:    map[net.Conn]struct{}{},
		ctx:      context.Background(),
	}
	p.reverse = p.newReverse()
	tr := o.Transport
	if tr == "" {
		tr = tunnel.Auto
	}
	p.transport.Store(tr)
	return p
}

// handshakeTimeout bounds a client's greeting and request.
const handshakeTimeout = 30 * time.Second

// Serve accepts clients on ln until ctx ends; then it closes ln and every
// connection, and returns nil.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	httpConns := &chanListener{addr: ln.Addr(), c: make(chan net.Conn), done: ctx.Done()}
	hs := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: handshakeTimeout,
		ErrorLog:          slog.NewLogLogger(p.o.Log.Handler(), slog.LevelDebug),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				p.track(c, true)
			case http.StateClosed, http.StateHijacked:
				p.track(c, false)
			}
		},
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); hs.Serve(httpConns) }()
	go func() { defer wg.Done(); p.reap(ctx) }()
	go func() {
		<-ctx.Done()
		ln.Close()
		hs.Close()
		p.closeAll()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			p.o.Log.Error("accept", "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.serveConn(ctx, c, httpConns)
		}()
	}
	cancel()
	wg.Wait()
	p.wg.Wait()
	return nil
}

// serveConn tells SOCKS5 (its first byte is the version, 5) from HTTP.
func (p *Proxy) serveConn(ctx context.Context, c net.Conn, httpConns *chanListener) {
	br := bufio.NewReaderSize(c, 4096)
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	bc := &bufConn{Conn: c, r: br}
	if first[0] == socksVersion {
		p.track(c, true)
		defer p.track(c, false)
		p.socks(ctx, bc)
		return
	}
	if m, _ := br.Peek(len("CONNECT ")); string(m) == "CONNECT " {
		// A tunnel, the common case: served here, without the HTTP
		// server's goroutines and hand-offs on the way.
		p.track(c, true)
		defer p.track(c, false)
		p.connect(ctx, bc)
		return
	}
	c.SetReadDeadline(time.Time{}) // the HTTP server sets its own
	select {
	case httpConns.c <- bc:
	case <-ctx.Done():
		c.Close()
	}
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bc, ok := c.(*bufConn); ok {
		c = bc.Conn
	}
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	for k, b := range p.backends {
		b.cancel()
		delete(p.backends, k)
	}
}

// dest is where a connection goes: a route into the cluster, or an
// address outside it (with Direct).
type dest struct {
	name   string // host:port as the client asked
	route  Route
	direct string
}

// route resolves host:port; errors say what exists instead.
func (p *Proxy) route(ctx context.Context, host string, port uint16) (dest, error) {
	d := dest{name: net.JoinHostPort(host, strconv.Itoa(int(port)))}
	rt, err := p.res.resolve(ctx, host, port)
	if errors.Is(err, ErrOutside) && p.o.Direct {
		d.direct = d.name
		return d, nil
	}
	if errors.Is(err, ErrOutside) {
		err = fmt.Errorf("%w; kpf proxy reaches cluster names (SERVICE, SERVICE.NAMESPACE, SERVICE.NAMESPACE.svc.%s); run it with --direct to pass other names through", err, p.o.ClusterDomain)
	}
	if err != nil {
		p.refused.Add(1)
		p.o.Log.Warn("refused", "dest", d.name, "err", err)
		return d, err
	}
	d.route = rt
	p.mu.Lock()
	first := !p.routed[d.name]
	p.routed[d.name] = true
	p.mu.Unlock()
	if first && p.o.Routed != nil {
		p.o.Routed(d.name, rt)
	}
	return d, nil
}

// carry moves a connection's bytes to its destination until either side
// is done.
func (p *Proxy) carry(ctx context.Context, c net.Conn, d dest) error {
	p.open.Add(1)
	p.total.Add(1)
	defer p.open.Add(-1)
	m := p.bytes.Child()
	start := time.Now()
	var err error
	if d.direct != "" {
		err = p.carryDirect(ctx, c, d.direct, m)
	} else {
		err = p.carryRoute(ctx, c, d.route, m)
	}
	if err != nil {
		p.failed.Add(1)
		p.o.Log.Error("connection failed", "dest", d.name, "err", err)
		tunnel.Abort(c) // the client sees an error, not an end
	}
	if p.o.Ended != nil {
		p.o.Ended(Ended{Dest: d.name, Route: d.route, Local: c.LocalAddr().String(), Peer: c.RemoteAddr().String(),
			Pod: m.Pod(), Start: start, In: m.In.Load(), Out: m.Out.Load(), Err: err})
	}
	return err
}

func (p *Proxy) carryRoute(ctx context.Context, c net.Conn, rt Route, m *meter.Meter) error {
	b, err := p.backend(rt)
	if err != nil {
		return err
	}
	defer b.release()
	_, err = b.f.Forward(ctx, c, rt.Port, m)
	return err
}

func (p *Proxy) carryDirect(ctx context.Context, c net.Conn, addr string, m *meter.Meter) error {
	var d net.Dialer
	out, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer out.Close()
	stop := context.AfterFunc(ctx, func() { out.Close(); c.Close() })
	defer stop()
	done := make(chan error, 1)
	go func() {
		n, err := io.Copy(out, c)
		m.AddOut(n)
		closeWrite(out)
		done <- err
	}()
	n, err := io.Copy(c, out)
	m.AddIn(n)
	closeWrite(c)
	if err2 := <-done; err == nil {
		err = err2
	}
	return err
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// Status is a snapshot for kpf status and metrics.
type Status struct {
	Open, Total, Failed, Refused int64
	BytesIn, BytesOut            int64 // to the clients, and to the pods
	Backends                     int   // services and pods with tunnels open or kept
}

// Status reports the proxy's counters.
func (p *Proxy) Status() Status {
	p.mu.Lock()
	n := len(p.backends)
	p.mu.Unlock()
	return Status{
		Open: p.open.Load(), Total: p.total.Load(), Failed: p.failed.Load(), Refused: p.refused.Load(),
		BytesIn: p.bytes.In.Load(), BytesOut: p.bytes.Out.Load(), Backends: n,
	}
}

// bufConn is a connection whose first bytes were read ahead.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// NetConn is the socket under the read-ahead (tunnel.Abort resets it).
func (b *bufConn) NetConn() net.Conn { return b.Conn }

// raw is the connection to hand to the data path once the handshake is
// over: the socket itself when nothing was read ahead (so the data path
// reads it directly), or one that gives the read-ahead bytes first.
func raw(c net.Conn, ahead ...*bufio.Reader) net.Conn {
	var pending []byte
	for _, r := range ahead {
		if n := r.Buffered(); n > 0 {
			b, _ := r.Peek(n)
			pending = append(pending, b...)
		}
	}
	for {
		bc, ok := c.(*bufConn)
		if !ok {
			break
		}
		if n := bc.r.Buffered(); n > 0 {
			b, _ := bc.r.Peek(n)
			pending = append(pending, b...)
		}
		c = bc.Conn
	}
	if len(pending) == 0 {
		return c
	}
	return &bufConn{Conn: c, r: bufio.NewReader(io.MultiReader(bytes.NewReader(pending), c))}
}

// chanListener hands the HTTP server the connections serveConn saw were
// HTTP.
type chanListener struct {
	addr net.Addr
	c    chan net.Conn
	done <-chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// dial opens a tunnel with the transport in use: after the first tunnel,
// the one auto chose.
func (p *Proxy) dial(ctx context.Context, namespace, pod string) (*tunnel.Conn, error) {
	c, err := p.o.Dial(ctx, namespace, pod, p.transport.Load().(tunnel.Transport))
	if err == nil {
		p.transport.Store(c.Transport)
	}
	return c, err
}
