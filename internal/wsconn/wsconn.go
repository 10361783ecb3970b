// Package wsconn is a byte stream carried as binary WebSocket messages
// over a connection gorilla/websocket negotiated: gorilla reads, kpf
// writes its own masked frames and answers pings and close frames. It is
// the WebSocket transport under kpf's SPDY; it knows nothing of SPDY.
package wsconn

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/gorilla/websocket"
	"github.com/kpf-dev/kpf/internal/bufpool"
	"github.com/kpf-dev/kpf/internal/fastconn"
)

// Conn carries a byte stream as binary WebSocket messages: each Write
// (one SPDY frame) is one message of one frame.
//
// Reading is gorilla's. Writing is kpf's own: gorilla copies a message into
// its buffer and then masks it (a client's frames must be masked with a
// fresh random key) in a second pass over the bytes, and uploads through
// the WebSocket transport spent ~15% of kpf's CPU there. Here the mask is
// applied while copying (subtle.XORBytes against a block of the repeated
// key, vector instructions where the CPU has them): one pass instead of
// two. The frame goes to TLS in one Write, corked into one system call.
//
// So that no write of gorilla's interleaves with kpf's (or leaves a write
// deadline on the connection, as gorilla's control writes do), kpf also
// answers pings and close frames itself.
//
// It sends no WebSocket pings of its own: the SPDY connection on top pings
// (spdy.Conn.KeepAlive), and its PING frames are WebSocket messages that
// cross every hop a WebSocket ping would (a proxy, a load balancer, the API
// server) and go on to the kubelet, which answers them. So they keep the
// path busy as WebSocket pings would, and their answers prove the whole
// path, where a WebSocket pong proves it only as far as the API server. As
// client-go's tunnelling connection, then: SPDY pings only.
type Conn struct {
	ws   *websocket.Conn
	w    io.Writer // what the frames go to: the connection under gorilla
	cork fastconn.Corker
	r    io.Reader
	wmu  sync.Mutex

	pong    atomic.Pointer[[]byte] // a pong's payload waiting for wmu
	closing atomic.Bool            // a close frame was answered
}

// New carries a stream over ws, whose frames go to TLS over cork's socket
// in one system call each.
func New(ws *websocket.Conn, cork fastconn.Corker) *Conn {
	w := &Conn{ws: ws, w: ws.UnderlyingConn(), cork: cork}
	ws.SetPingHandler(w.onPing)
	ws.SetCloseHandler(w.onClose)
	return w
}

func (w *Conn) Read(p []byte) (int, error) {
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

func (w *Conn) Write(p []byte) (int, error) {
	if err := w.writeFrame(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeFrame writes p as one frame of type op, in one system call.
func (w *Conn) writeFrame(op int, p []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return w.writeFrameLocked(op, p)
}

func (w *Conn) writeFrameLocked(op int, p []byte) error {
	pb := bufpool.Get(wsMaxHeader + len(p))
	b := appendWSFrame((*pb)[:0], op, p)
	w.cork.Cork(len(b))
	_, err := w.w.Write(b)
	if ferr := w.cork.Flush(); err == nil {
		err = ferr
	}
	bufpool.Put(pb)
	return err
}

// onPing answers a ping with a pong. It runs on the reading goroutine,
// which must never wait for a write (the peer may be waiting for us to
// read before it reads our write), so the pong is written by a goroutine
// of its own; pings that arrive before it could answer share one pong with
// the latest payload, as RFC 6455 allows.
func (w *Conn) onPing(data string) error {
	b := []byte(data)
	if w.pong.Swap(&b) != nil {
		return nil // a pong is already on its way; it takes this payload
	}
	go func() {
		w.wmu.Lock()
		defer w.wmu.Unlock()
		w.writeFrameLocked(websocket.PongMessage, *w.pong.Swap(nil))
	}()
	return nil
}

// onClose answers the peer's close frame with one of our own (from a
// goroutine, as onPing); the read then ends with the close error, as with
// gorilla's default handler.
func (w *Conn) onClose(code int, text string) error {
	if w.closing.Swap(true) {
		return nil
	}
	msg := []byte{}
	if code != websocket.CloseNoStatusReceived {
		msg = websocket.FormatCloseMessage(code, "")
	}
	go w.writeFrame(websocket.CloseMessage, msg)
	return nil
}

func (w *Conn) Close() error { return w.ws.Close() }

// wsMaxHeader is the longest frame header a client writes: 2 bytes, an
// 8-byte length, a 4-byte mask key.
const wsMaxHeader = 14

// appendWSFrame appends p to dst as one final, masked frame of type op.
func appendWSFrame(dst []byte, op int, p []byte) []byte {
	var key [4]byte
	rand.Read(key[:]) // never fails (crypto/rand)
	dst = append(dst, 0x80|byte(op))
	switch n := len(p); {
	case n <= 125:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, key[:]...)
	return appendMasked(dst, p, key)
}

// appendMasked appends p XORed with the repeated key.
func appendMasked(dst, p []byte, key [4]byte) []byte {
	var block [2048]byte // a multiple of 4: the key's phase never shifts
	copy(block[:], key[:])
	for n := 4; n < len(block); n *= 2 {
		copy(block[n:], block[:n])
	}
	off := len(dst)
	dst = slices.Grow(dst, len(p))[:off+len(p)]
	out := dst[off:]
	for len(p) > 0 {
		n := subtle.XORBytes(out, p, block[:])
		out, p = out[n:], p[n:]
	}
	return dst
}
