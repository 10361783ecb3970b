package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	ownspdy "github.com/kpf-dev/kpf/internal/spdy"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	clientws "k8s.io/client-go/transport/websocket"
	streamhttp "k8s.io/streaming/pkg/httpstream"
)

// This file is kpf's own data path: the SPDY subset of package spdy over a
// WebSocket or a plain upgraded connection, instead of client-go's dialers
// and moby/spdystream.

const tunnelingProtocol = "SPDY/3.1+" + portforward.PortForwardProtocolV1Name

// dialOwn opens a tunnel with kpf's SPDY client.
func dialOwn(ctx context.Context, cfg *rest.Config, u *url.URL, t Transport) (*ownspdy.Conn, error) {
	if t == SPDY {
		return dialOwnSPDY(ctx, cfg, u)
	}
	return dialOwnWebSocket(ctx, cfg, u)
}

func dialOwnWebSocket(ctx context.Context, cfg *rest.Config, u *url.URL) (*ownspdy.Conn, error) {
	rt, holder, err := clientws.RoundTripperFor(cfg)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	ws, err := clientws.Negotiate(rt, holder, req, tunnelingProtocol)
	if err != nil {
		return nil, err
	}
	if ws.Subprotocol() != tunnelingProtocol {
		ws.Close()
		return nil, fmt.Errorf("unable to negotiate protocol: client supports %q, server returned %q", tunnelingProtocol, ws.Subprotocol())
	}
	wc := &wsConn{ws: ws, done: make(chan struct{})}
	go wc.keepAlive()
	return ownspdy.NewConn(wc, nil), nil
}

// wsConn carries a byte stream as binary WebSocket messages: each Write
// (one SPDY frame) is one message.
type wsConn struct {
	ws   *websocket.Conn
	r    io.Reader
	wmu  sync.Mutex
	done chan struct{}
	once sync.Once
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			typ, r, err := w.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				continue
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if err == io.EOF {
			w.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if err := w.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *wsConn) Close() error {
	w.once.Do(func() { close(w.done) })
	return w.ws.Close()
}

// keepAlive pings every 10 s, as client-go's tunnelling connection does,
// so idle tunnels survive proxies' idle timeouts.
func (w *wsConn) keepAlive() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
			w.wmu.Lock()
			err := w.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second))
			w.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// captureTransport records the request that client-go's wrappers (auth,
// impersonation, user agent) would send, without sending it.
type captureTransport struct{ req *http.Request }

func (c *captureTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.req = r
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
}

func dialOwnSPDY(ctx context.Context, cfg *rest.Config, u *url.URL) (*ownspdy.Conn, error) {
	capture := &captureTransport{}
	rt, err := rest.HTTPWrappersForConfig(cfg, capture)
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
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80"}[u.Scheme]+map[string]string{"https": "443"}[u.Scheme])
	}
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
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
		conn, err = (&tls.Dialer{NetDialer: d, Config: tlsCfg}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
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
	return ownspdy.NewConn(conn, br), nil
}

// forwardOwn is Forward over kpf's SPDY client: both streams are opened
// back to back without waiting for replies.
func (c *Conn) forwardOwn(local net.Conn, port uint16) (Stats, error) {
	id := strconv.FormatInt(c.nextID.Add(1), 10)
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, strconv.Itoa(int(port)))
	h.Set(corev1.PortForwardRequestIDHeader, id)
	errStream, err := c.own.OpenStream(h, true)
	if err != nil {
		return Stats{}, fmt.Errorf("create error stream: %w", err)
	}
	h.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := c.own.OpenStream(h, false)
	if err != nil {
		errStream.Reset()
		return Stats{}, fmt.Errorf("create data stream: %w", err)
	}
	remoteErr := make(chan error, 1)
	go func() {
		msg, err := io.ReadAll(errStream)
		switch {
		case err != nil && !isClosed(err):
			remoteErr <- nil // the tunnel went away; the copies report it
		case len(msg) > 0:
			remoteErr <- &RemoteError{Pod: c.Pod, Port: port, Message: string(msg)}
		default:
			remoteErr <- nil
		}
	}()
	st, err := pump(local, ownStream{data}, remoteErr, c.own.Done())
	errStream.Reset()
	return st, err
}

// ownStream is kpf's stream: WriteTo and ReadFrom move data without copy
// buffers.
type ownStream struct{ s *ownspdy.Stream }

func (o ownStream) copyIn(l net.Conn) (int64, error)  { return o.s.WriteTo(l) }
func (o ownStream) copyOut(l net.Conn) (int64, error) { return o.s.ReadFrom(l) }
func (o ownStream) closeWrite()                       { o.s.CloseWrite() }
func (o ownStream) reset()                            { o.s.Reset() }
