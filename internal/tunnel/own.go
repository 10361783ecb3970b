package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/fastconn"
	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/proxydial"
	"github.com/kpf-dev/kpf/internal/wsconn"

	"github.com/gorilla/websocket"
	"github.com/kpf-dev/kpf/internal/bufpool"
	ownspdy "github.com/kpf-dev/kpf/internal/spdy"
	"github.com/kpf-dev/kpf/internal/sysio"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	streamhttp "k8s.io/streaming/pkg/httpstream"
)

// This file is kpf's own data path: the SPDY subset of package spdy over a
// WebSocket or a plain upgraded connection, instead of client-go's dialers
// and moby/spdystream.

const tunnelingProtocol = "SPDY/3.1+" + portforward.PortForwardProtocolV1Name

// dialOwn opens a tunnel with kpf's SPDY client, through proxy if it is
// not nil.
func dialOwn(ctx context.Context, api APIServer, u, proxy *url.URL, t Transport) (*ownspdy.Conn, error) {
	if t == SPDY {
		return dialOwnSPDY(ctx, api, u, proxy)
	}
	return dialOwnWebSocket(ctx, api, u, proxy)
}

func dialOwnWebSocket(ctx context.Context, api APIServer, u, proxy *url.URL) (*ownspdy.Conn, error) {
	up, err := newWSUpgrader(api, proxy)
	if err != nil {
		return nil, err
	}
	rt, err := rest.HTTPWrappersForConfig(api.Config, up)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	ws := up.conn
	if ws.Subprotocol() != tunnelingProtocol {
		ws.Close()
		return nil, fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q", tunnelingProtocol, ws.Subprotocol())
	}
	wc := wsconn.New(ws, up.netConn)
	return ownspdy.NewConn(wc, nil, up.netConn), nil
}

// wsUpgrader is the round tripper under client-go's wrappers (auth,
// impersonation, user agent) that upgrades to a WebSocket, as client-go's
// does, but over a fastConn.
type wsUpgrader struct {
	tlsConfig *tls.Config
	proxy     *url.URL // or nil

	conn    *websocket.Conn
	netConn fastconn.FastPath // the socket under TLS
}

func newWSUpgrader(api APIServer, proxy *url.URL) (*wsUpgrader, error) {
	tlsCfg, err := api.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &wsUpgrader{tlsConfig: tlsCfg, proxy: proxy}, nil
}

// tlsConfig is the TLS configuration of api's tunnels: its own, whose
// session cache lets every tunnel after the first resume the TLS session,
// or without one, a new configuration for this tunnel alone.
func (api APIServer) tlsConfig() (*tls.Config, error) {
	if api.TLS != nil {
		return api.TLS, nil
	}
	return rest.TLSConfigFor(api.Config)
}

// wsWritePool makes gorilla take a write buffer only when it writes a
// message, which it never does (wsconn writes its own frames): without a
// pool it would allocate one per tunnel.
var wsWritePool = &syncBufferPool{}

type syncBufferPool struct{ p sync.Pool }

func (s *syncBufferPool) Get() interface{}  { return s.p.Get() }
func (s *syncBufferPool) Put(v interface{}) { s.p.Put(v) }

func (w *wsUpgrader) RoundTrip(req *http.Request) (*http.Response, error) {
	u := *req.URL
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	case "http":
		u.Scheme = "ws"
	default:
		return nil, fmt.Errorf("unknown url scheme: %s", u.Scheme)
	}
	d := websocket.Dialer{
		// The proxy's tunnel, if any, is proxydial.DialTCP's: gorilla's would put
		// its own connection type over the socket.
		TLSClientConfig: w.tlsConfig,
		Subprotocols:    []string{tunnelingProtocol},
		ReadBufferSize:  32 << 10,
		WriteBufferPool: wsWritePool,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := proxydial.DialTCP(ctx, w.proxy, addr)
			if err != nil {
				return nil, err
			}
			w.netConn = fastconn.Tunnel(c, w.proxy)
			return w.netConn, nil
		},
	}
	h := req.Header.Clone()
	h.Del("Sec-Websocket-Protocol")
	conn, resp, err := d.DialContext(req.Context(), u.String(), h)
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) {
			return nil, &streamhttp.UpgradeFailureError{Cause: upgradeCause(err, resp)}
		}
		return nil, err
	}
	w.conn = conn
	return resp, nil
}

// upgradeCause says why the API server refused an upgrade, with its
// Status message when it sent one, as client-go does.
func upgradeCause(err error, resp *http.Response) error {
	if resp == nil {
		return err
	}
	defer resp.Body.Close()
	if resp.Status != "" {
		err = fmt.Errorf("%w (%s)", err, resp.Status)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if msg := strings.TrimSpace(string(body)); msg != "" {
		var st metav1.Status
		if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
			return &apierrors.StatusError{ErrStatus: st}
		}
		err = fmt.Errorf("%w: %s", err, msg)
	}
	return err
}

// captureTransport records the request that client-go's wrappers (auth,
// impersonation, user agent) would send, without sending it.
type captureTransport struct{ req *http.Request }

func (c *captureTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.req = r
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
}

func dialOwnSPDY(ctx context.Context, api APIServer, u, proxy *url.URL) (*ownspdy.Conn, error) {
	capture := &captureTransport{}
	rt, err := rest.HTTPWrappersForConfig(api.Config, capture)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Set(streamhttp.HeaderProtocolVersion, portforward.PortForwardProtocolV1Name)
	if _, err := rt.RoundTrip(req); err != nil {
		return nil, err
	}
	tlsCfg, err := api.tlsConfig()
	if err != nil {
		return nil, err
	}
	var conn net.Conn
	if u.Scheme == "https" {
		if tlsCfg == nil {
			tlsCfg = &tls.Config{}
		}
		tlsCfg = tlsCfg.Clone()
		if tlsCfg.ServerName == "" {
			tlsCfg.ServerName = u.Hostname()
		}
		tlsCfg.NextProtos = []string{"http/1.1"}
	}
	raw, err := proxydial.DialTCP(ctx, proxy, proxydial.CanonicalAddr(u))
	if err != nil {
		return nil, err
	}
	fast := fastconn.Tunnel(raw, proxy)
	conn = fast
	if u.Scheme == "https" {
		tc := tls.Client(fast, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		conn = tc
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if err := capture.req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 32<<10)
	resp, err := http.ReadResponse(br, capture.req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		msg := strings.TrimSpace(string(body))
		var st metav1.Status
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		return nil, &streamhttp.UpgradeFailureError{Cause: fmt.Errorf("%s", msg)}
	}
	if p := resp.Header.Get(streamhttp.HeaderProtocolVersion); p != portforward.PortForwardProtocolV1Name {
		conn.Close()
		return nil, fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q", portforward.PortForwardProtocolV1Name, p)
	}
	return ownspdy.NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{conn, fastconn.CorkedWriter{Writer: conn, C: fast}, conn}, br, fast), nil
}

// forwardOwn is Forward over kpf's SPDY client: both streams are opened
// back to back without waiting for replies.
func (c *Conn) forwardOwn(ctx context.Context, local net.Conn, port uint16, m *meter.Meter) (Stats, error) {
	id := strconv.FormatInt(c.nextID.Add(1), 10)
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, strconv.Itoa(int(port)))
	h.Set(corev1.PortForwardRequestIDHeader, id)
	dh := h.Clone()
	dh.Set(corev1.StreamType, corev1.StreamTypeData)
	// What the client has already sent goes out with the streams' frames.
	pb := bufpool.Get(firstRead)
	first := (*pb)[:readNow(local, *pb)]
	m.WroteOut(first) // before it is sent: a request before its answer
	errStream, data, err := c.own.OpenPair(h, dh, first)
	if err == nil && m != nil {
		data.Count(m.WroteIn, m.WroteOut)
	}
	bufpool.Put(pb)
	if err != nil {
		return Stats{}, fmt.Errorf("create streams: %w: %w", ErrNotOpened, err)
	}
	// The kubelet's verdict comes on the error stream, whole, before its
	// FIN: read once the stream is done, by no goroutine of its own.
	verdict := func() error {
		// What came before a reset counts too: the kubelet may reset the
		// stream after writing its message.
		msg, _ := errStream.Buffered()
		if len(msg) == 0 {
			return nil // no verdict, or the tunnel went away: the copies report it
		}
		return &RemoteError{Pod: c.Pod, Port: port, Message: string(msg)}
	}
	st, err := pump(ctx, local, ownStream{data}, errStream.Done(), verdict, c.own.Done())
	st.Out += int64(len(first))
	errStream.Reset()
	return st, err
}

// firstRead bounds what readNow takes to send with a connection's streams.
const firstRead = 16 << 10

// NowReader is a local connection that can read without waiting.
type NowReader interface {
	ReadNow(p []byte) int
}

// readNow reads what local has already received, without waiting: 0 if
// nothing (or EOF, which the copy then reads again).
func readNow(local net.Conn, p []byte) int {
	if r, ok := local.(NowReader); ok {
		return r.ReadNow(p)
	}
	return ReadNowRaw(local, p)
}

// ReadNowRaw is a non-blocking read from c's socket, if it has one.
func ReadNowRaw(c net.Conn, p []byte) int {
	if !sysio.Raw {
		return 0
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Read(func(fd uintptr) bool {
		if m, err := sysio.Read(int(fd), p); err == nil && m > 0 {
			n = m
		}
		return true
	})
	return n
}

// ownStream is kpf's stream: WriteTo and ReadFrom move data without copy
// buffers.
type ownStream struct{ s *ownspdy.Stream }

func (o ownStream) copyIn(l net.Conn) (int64, error)  { return o.s.WriteTo(l) }
func (o ownStream) copyOut(l net.Conn) (int64, error) { return o.s.ReadFrom(l) }
func (o ownStream) closeWrite()                       { o.s.CloseWrite() }
func (o ownStream) reset()                            { o.s.Reset() }
func (o ownStream) finished() (fin, known bool)       { return o.s.Finished(), true }
