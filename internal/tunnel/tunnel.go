// Package tunnel carries local TCP connections to a pod's ports through the
// API server's pods/portforward subresource: one upgraded connection (SPDY
// over WebSocket, or plain SPDY) per pod, and per local connection a pair of
// streams, error and data, as the kubelet expects.
//
// Unlike client-go's port forwarder, an error on one connection closes that
// connection only: the tunnel and every other connection carry on.
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/proxydial"

	corev1 "k8s.io/api/core/v1"
	//lint:ignore SA1019 client-go's SPDY and WebSocket dialers still return these types
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"

	ownspdy "github.com/kpf-dev/kpf/internal/spdy"
)

// Transport selects how the tunnel reaches the API server.
type Transport string

const (
	// Auto tries WebSocket first and falls back to SPDY when the upgrade is
	// refused, as kubectl 1.31+ does.
	Auto      Transport = "auto"
	WebSocket Transport = "websocket"
	SPDY      Transport = "spdy"
)

// ParseTransport validates a --transport value.
func ParseTransport(s string) (Transport, error) {
	switch t := Transport(strings.ToLower(s)); t {
	case Auto, WebSocket, SPDY:
		return t, nil
	}
	return "", fmt.Errorf("--transport %q: want auto, websocket or spdy", s)
}

// DataPath selects the SPDY implementation on kpf's side of the tunnel.
type DataPath string

const (
	// OwnDataPath is kpf's SPDY client (package spdy): no zlib compressor
	// per tunnel, streams opened without waiting, one write per frame.
	OwnDataPath DataPath = "kpf"
	// ClientGoDataPath is client-go's dialers and moby/spdystream, as
	// kubectl uses.
	ClientGoDataPath DataPath = "client-go"
)

// DefaultDataPath is what kpf uses unless told otherwise.
const DefaultDataPath = OwnDataPath

// ParseDataPath validates a --data-path value.
func ParseDataPath(s string) (DataPath, error) {
	switch d := DataPath(s); d {
	case OwnDataPath, ClientGoDataPath:
		return d, nil
	}
	return "", fmt.Errorf("--data-path %q: want kpf or client-go", s)
}

// Conn is an open tunnel to one pod.
type Conn struct {
	conn      httpstream.Connection // client-go's data path
	own       *ownspdy.Conn         // or kpf's
	done      <-chan struct{}
	Transport Transport // the one in use
	Pod       string    // namespace/name, for messages
	nextID    atomic.Int64
}

// URL is the portforward subresource of a pod.
func URL(cfg *rest.Config, namespace, pod string) (*url.URL, error) {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", cfg.Host, err)
	}
	if u.Scheme == "" {
		u.Scheme = "https"
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(pod) + "/portforward"
	return u, nil
}

// APIServer is the API server tunnels go through.
type APIServer struct {
	Config *rest.Config
	// TLS, if set, is the TLS configuration of kpf's data path, built once
	// from Config with a session cache (see cluster.Conn): every tunnel
	// after the first resumes the TLS session instead of a full handshake
	// (no certificate signatures to make or check on either side), which
	// was most of what a burst of dials cost. Nil builds one per tunnel.
	TLS *tls.Config
}

// DefaultPingInterval is how often kpf's data path pings a tunnel unless
// told otherwise (--ping-interval): below the common idle timeouts of
// proxies and load balancers (often 30 s or more; 60 s for many cloud load
// balancers), at a few bytes a tunnel per ping.
const DefaultPingInterval = 15 * time.Second

// DialOption changes how Dial opens a tunnel.
type DialOption func(*dialOptions)

type dialOptions struct {
	ping time.Duration
	log  *slog.Logger
}

// PingEvery sets how often kpf's data path pings the tunnel
// (DefaultPingInterval for 0). A tunnel that answers nothing for two
// intervals is closed (spdy.Conn.KeepAlive), so that the forward redials.
// client-go's data path pings on its own schedule (SPDY every 5 s,
// WebSocket every 10 s) and ignores it.
func PingEvery(d time.Duration) DialOption { return func(o *dialOptions) { o.ping = d } }

// WithLog is where a tunnel closed for not answering pings is reported
// (slog.Default() without it, or for nil).
func WithLog(l *slog.Logger) DialOption {
	return func(o *dialOptions) {
		if l != nil {
			o.log = l
		}
	}
}

// Log attribute keys.
const (
	keyPod       = "pod"
	keyTransport = "transport"
	keyErr       = "err"
)

// Dial opens a tunnel to a pod.
func Dial(ctx context.Context, api APIServer, namespace, pod string, t Transport, path DataPath, opts ...DialOption) (*Conn, error) {
	cfg := api.Config
	o := dialOptions{ping: DefaultPingInterval, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.ping <= 0 {
		o.ping = DefaultPingInterval
	}
	u, err := URL(cfg, namespace, pod)
	if err != nil {
		return nil, err
	}
	// kpf's data path makes HTTP and SOCKS5 proxies' tunnels itself (see
	// proxy.go); through an https:// proxy, the tunnel takes client-go's
	// path.
	if path == OwnDataPath {
		p, err := proxydial.ProxyURL(cfg, u)
		if err != nil {
			return nil, err
		}
		if proxydial.Supported(p) {
			return dialOwnTransport(ctx, api, u, p, namespace+"/"+pod, t, o)
		}
	}
	dialSPDY := func() (httpstream.Connection, error) {
		rt, upgrader, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			return nil, err
		}
		d := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
		c, proto, err := d.Dial(portforward.PortForwardProtocolV1Name)
		return checkProto(c, proto, err)
	}
	dialWS := func() (httpstream.Connection, error) {
		d, err := portforward.NewSPDYOverWebsocketDialer(u, cfg)
		if err != nil {
			return nil, err
		}
		c, proto, err := d.Dial(portforward.PortForwardProtocolV1Name)
		return checkProto(c, proto, err)
	}
	c := &Conn{Pod: namespace + "/" + pod}
	switch t {
	case SPDY:
		c.conn, err = dialSPDY()
		c.Transport = SPDY
	case WebSocket:
		c.conn, err = dialWS()
		c.Transport = WebSocket
	default:
		c.conn, err = dialWS()
		c.Transport = WebSocket
		// Fall back on any refused upgrade, as kubectl does: an API server
		// without WebSocket support, a proxy, or RBAC that grants create
		// (SPDY's verb) but not get (WebSocket's) on pods/portforward.
		if err != nil && (IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)) {
			c.conn, err = dialSPDY()
			c.Transport = SPDY
		}
	}
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { <-c.conn.CloseChan(); close(done) }()
	c.done = done
	return c, nil
}

// dialOwnTransport is Dial for kpf's data path, with the same fallback,
// and pings on the tunnel.
func dialOwnTransport(ctx context.Context, api APIServer, u, proxy *url.URL, pod string, t Transport, o dialOptions) (*Conn, error) {
	c := &Conn{Pod: pod}
	var err error
	switch t {
	case SPDY, WebSocket:
		c.own, err = dialOwn(ctx, api, u, proxy, t)
		c.Transport = t
	default:
		c.own, err = dialOwn(ctx, api, u, proxy, WebSocket)
		c.Transport = WebSocket
		if err != nil && (IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)) {
			c.own, err = dialOwn(ctx, api, u, proxy, SPDY)
			c.Transport = SPDY
		}
	}
	if err != nil {
		return nil, err
	}
	c.done = c.own.Done()
	c.own.KeepAlive(o.ping, func(err error) {
		o.log.Warn("tunnel closed: it answered no ping; the next connection redials", keyPod, c.Pod, keyTransport, c.Transport, keyErr, err)
	})
	return c, nil
}

// ErrNotOpened is wrapped when a connection's streams could not be
// opened on the tunnel (it had closed): no byte of the connection reached
// the pod, so it may be sent again, whole, on another tunnel.
var ErrNotOpened = errors.New("the tunnel closed before the connection's streams opened")

// IsUpgradeFailure reports whether the API server refused the upgrade.
// client-go's dialers use two packages' error types for it.
func IsUpgradeFailure(err error) bool {
	return httpstream.IsUpgradeFailure(err) || streamhttp.IsUpgradeFailure(err) ||
		// The SPDY dialer reports a refused upgrade as text only.
		strings.HasPrefix(err.Error(), "unable to upgrade connection")
}

func checkProto(c httpstream.Connection, proto string, err error) (httpstream.Connection, error) {
	if err != nil {
		return nil, err
	}
	if proto != portforward.PortForwardProtocolV1Name {
		c.Close()
		return nil, fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q", portforward.PortForwardProtocolV1Name, proto)
	}
	return c, nil
}

// Done is closed when the tunnel is closed, by either side.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close closes the tunnel and every stream on it.
func (c *Conn) Close() error {
	if c.own != nil {
		return c.own.Close()
	}
	return c.conn.Close()
}

// errorStreamWait bounds the wait for the kubelet's verdict on a connection.
const errorStreamWait = 5 * time.Second

// RemoteError is what the kubelet reported on a connection's error stream:
// the pod refused the connection, or the port could not be reached.
type RemoteError struct {
	Pod     string
	Port    uint16
	Message string
}

func (e *RemoteError) Error() string {
	msg := strings.TrimSpace(e.Message)
	if strings.Contains(msg, "connection refused") {
		return fmt.Sprintf("pod %s refused the connection to port %d: nothing listens there (%s)", e.Pod, e.Port, msg)
	}
	return fmt.Sprintf("error forwarding to port %d of pod %s: %s", e.Port, e.Pod, msg)
}

// Stats counts one connection's bytes.
type Stats struct {
	In, Out int64  // to the local client, and to the pod
	Pod     string // the pod that carried it, when a follower chose one
}

// Forward carries one local connection to a port of the pod until either
// side is done. It half-closes: when the local client stops writing, the
// pod is told so and its answer still flows back. The error names the
// first failure; the tunnel itself stays open.
//
// m, if set, counts the bytes as they move.
func (c *Conn) Forward(local net.Conn, port uint16, m *meter.Meter) (Stats, error) {
	return c.ForwardContext(context.Background(), local, port, m)
}

// ForwardContext is Forward, whose streams are reset when ctx ends: a
// health check's connection that the pod neither answers nor closes ends
// with its check.
func (c *Conn) ForwardContext(ctx context.Context, local net.Conn, port uint16, m *meter.Meter) (Stats, error) {
	if c.own != nil {
		return c.forwardOwn(ctx, local, port, m)
	}
	var st Stats
	id := strconv.FormatInt(c.nextID.Add(1), 10)
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, strconv.Itoa(int(port)))
	h.Set(corev1.PortForwardRequestIDHeader, id)
	errStream, err := c.conn.CreateStream(h)
	if err != nil {
		return st, fmt.Errorf("create error stream: %w: %w", ErrNotOpened, err)
	}
	errStream.Close() // we never write to it
	defer c.conn.RemoveStreams(errStream)
	var remoteErr error
	errDone := make(chan struct{})
	go func() {
		defer close(errDone)
		msg, err := io.ReadAll(errStream)
		switch {
		case err != nil && !isClosed(err):
			remoteErr = fmt.Errorf("read error stream: %w", err)
		case len(msg) > 0:
			remoteErr = &RemoteError{Pod: c.Pod, Port: port, Message: string(msg)}
		}
	}()

	h.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := c.conn.CreateStream(h)
	if err != nil {
		return st, fmt.Errorf("create data stream: %w: %w", ErrNotOpened, err)
	}
	defer c.conn.RemoveStreams(data)

	return pump(ctx, local, apiStream{data, m}, errDone, func() error { return remoteErr }, c.done)
}

// dataStream is the data stream of a connection, on either data path.
type dataStream interface {
	copyIn(local net.Conn) (int64, error)  // pod to local client
	copyOut(local net.Conn) (int64, error) // local client to pod
	closeWrite()                           // half-close towards the pod
	reset()                                // drop what is queued, both ways
	// finished says, once the copy from the pod has ended, whether the
	// pod's side ended it with a FIN (fin), if the stream can tell
	// (known): not a reset, not the tunnel's loss.
	finished() (fin, known bool)
}

// apiStream is client-go's stream.
type apiStream struct {
	s httpstream.Stream
	m *meter.Meter
}

func (a apiStream) copyIn(l net.Conn) (int64, error) {
	if a.m == nil {
		return io.Copy(l, a.s)
	}
	return io.Copy(meterWriter{l, a.m.WroteIn}, a.s)
}

func (a apiStream) copyOut(l net.Conn) (int64, error) {
	if a.m == nil {
		return io.Copy(a.s, l)
	}
	return io.Copy(tapFirstWriter{a.s, a.m}, l)
}

// tapFirstWriter shows what it writes to the pod to the meter's tap
// before writing (a request is seen before its answer), and counts it.
type tapFirstWriter struct {
	w io.Writer
	m *meter.Meter
}

func (w tapFirstWriter) Write(p []byte) (int, error) {
	w.m.ShowOut(p)
	n, err := w.w.Write(p)
	w.m.AddOut(int64(n))
	return n, err
}

// meterWriter counts what it writes.
type meterWriter struct {
	w     io.Writer
	wrote func([]byte)
}

func (w meterWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.wrote(p[:n])
	return n, err
}
func (a apiStream) closeWrite() { a.s.Close() }
func (a apiStream) reset()      { a.s.Reset() }

// finished: client-go's streams end with io.EOF alike after a FIN, a
// reset or the connection's loss; pump asks the tunnel and the verdict.
func (a apiStream) finished() (fin, known bool) { return false, false }

// pump moves bytes both ways until the pod is done or either side fails,
// then waits (bounded) for the kubelet's verdict: verdict() once errDone is
// closed. The calling goroutine copies from the pod; one more copies to it.
func pump(ctx context.Context, local net.Conn, data dataStream, errDone <-chan struct{}, verdict func() error, tunnelDone <-chan struct{}) (Stats, error) {
	var st Stats
	stop := context.AfterFunc(ctx, data.reset) // ends both copies
	defer stop()
	localErr := make(chan error, 1)
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		n, err := data.copyOut(local)
		st.Out = n
		// Tell the pod we are done writing; its answer still comes back.
		data.closeWrite()
		if err != nil && !isClosed(err) {
			localErr <- err
			data.reset() // ends the copy from the pod
		}
	}()
	n, err := data.copyIn(local)
	st.In = n
	var first error
	select {
	case lerr := <-localErr:
		first = fmt.Errorf("copy from local connection: %w", lerr)
	default:
		if err != nil && !isClosed(err) {
			first = fmt.Errorf("copy from pod: %w", err)
		}
	}
	if first == nil {
		first = endedBadly(ctx, data, tunnelDone)
	}
	// A stream that looks ended cleanly is closed cleanly only if the
	// kubelet's verdict is no error: it sends its verdict, and closes
	// the error stream, before it ends the data stream, so the wait is
	// short. A refused port's client sees the error, not an empty answer.
	var verdictErr error
	waited := false
	if first == nil {
		waited = true
		verdictErr = waitVerdict(ctx, errDone, verdict, tunnelDone)
		if verdictErr == nil {
			first = endedBadly(ctx, data, tunnelDone) // the tunnel was lost meanwhile
		}
	}
	// Discard what is queued so a slow local side cannot hold the error
	// stream (and the tunnel's shared reader) back, and end both copies.
	data.reset()
	if first != nil || verdictErr != nil {
		Abort(local) // the client sees an error, not the stream's end
	} else {
		local.Close()
	}
	<-outDone
	if !waited {
		verdictErr = waitVerdict(ctx, errDone, verdict, tunnelDone)
	}
	if verdictErr != nil {
		return st, verdictErr
	}
	return st, first
}

// errEndedBadly: the copy from the pod ended as if the pod had closed,
// but the stream was reset or its tunnel lost.
var errEndedBadly = errors.New("the stream ended without the pod's FIN")

// endedBadly says why a copy from the pod that ended without an error of
// its own did not end cleanly: the tunnel is gone, the caller gave up, or
// the stream was reset; nil if the pod's side closed it.
func endedBadly(ctx context.Context, data dataStream, tunnelDone <-chan struct{}) error {
	select {
	case <-tunnelDone:
		return fmt.Errorf("copy from pod: %w: the tunnel closed", errEndedBadly)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("copy from pod: %w: %w", errEndedBadly, err)
	}
	if fin, known := data.finished(); known && !fin {
		return fmt.Errorf("copy from pod: %w: reset", errEndedBadly)
	}
	return nil
}

// waitVerdict waits (bounded) for the kubelet's verdict on a connection.
func waitVerdict(ctx context.Context, errDone <-chan struct{}, verdict func() error, tunnelDone <-chan struct{}) error {
	select {
	case <-errDone:
		return verdict()
	case <-tunnelDone:
	case <-ctx.Done(): // the caller has given up on a verdict
	case <-time.After(errorStreamWait):
		// The kubelet closes the error stream when it is done with the pair;
		// do not hold the caller if it never does.
	}
	return nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		// spdystream and the websocket tunnel report closed streams as text.
		strings.Contains(err.Error(), "use of closed network connection") ||
		strings.Contains(err.Error(), "stream reset")
}

// Abort closes a connection that failed with a reset (RST), not an
// orderly end (FIN): a client that reads a stream with no length of its
// own (a download to EOF, a copy, a replication stream) would take a FIN
// for the stream's end and keep a truncated copy as if it were whole; a
// reset it sees as the error it is. Bytes the client has not read yet stay
// readable before the error; bytes not sent yet are dropped, as the
// connection failed anyway. A connection without SO_LINGER (a pipe) is
// just closed. A wrapper decides for itself (an Abort method), or shows
// its socket (NetConn); either way the wrapper is what is closed.
func Abort(c net.Conn) {
	if a, ok := c.(interface{ Abort() }); ok {
		a.Abort()
		return
	}
	for inner := c; ; {
		if l, ok := inner.(interface{ SetLinger(sec int) error }); ok {
			l.SetLinger(0)
			break
		}
		u, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		inner = u.NetConn()
	}
	c.Close()
}
