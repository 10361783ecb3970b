package wsconn

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsPair is a Conn on a client connection to a gorilla server, and the
// server's side.
func wsPair(t *testing.T) (*Conn, *websocket.Conn) {
	t.Helper()
	srvConn := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(rw, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		srvConn <- c
	}))
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(ws, noCork{})
	s := <-srvConn
	t.Cleanup(func() { w.Close(); s.Close() })
	return w, s
}

// A server (gorilla, which checks that client frames are masked) reads
// each Write as one binary message, byte for byte, at every length
// encoding.
func TestWSConnWritesMaskedFrames(t *testing.T) {
	w, s := wsPair(t)
	for _, n := range []int{0, 1, 3, 125, 126, 2047, 2049, 0xffff, 0x10000, 300 << 10} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i*7 + n)
		}
		go w.Write(p)
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, got, err := s.ReadMessage()
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if typ != websocket.BinaryMessage || !bytes.Equal(got, p) {
			t.Fatalf("%d bytes: server read type %d, %d bytes, equal %v", n, typ, len(got), bytes.Equal(got, p))
		}
	}
}

// Two frames of the same bytes differ on the wire: each has a fresh key.
func TestWSFrameKeysAreFresh(t *testing.T) {
	p := bytes.Repeat([]byte{'x'}, 64)
	a := appendWSFrame(nil, websocket.BinaryMessage, p)
	b := appendWSFrame(nil, websocket.BinaryMessage, p)
	if len(a) != 2+4+64 || a[0] != 0x82 || a[1] != 0x80|64 {
		t.Fatalf("header % x", a[:6])
	}
	if bytes.Equal(a[2:6], b[2:6]) && bytes.Equal(a, b) {
		t.Fatalf("two frames with the same key %x", a[2:6])
	}
}

// The server's pings are answered with their payload, while the reading
// side goes on reading.
func TestWSConnAnswersPings(t *testing.T) {
	w, s := wsPair(t)
	pongs := make(chan string, 1)
	s.SetPongHandler(func(d string) error { pongs <- d; return nil })
	go func() { // the server reads to run its pong handler
		for {
			if _, _, err := s.NextReader(); err != nil {
				return
			}
		}
	}()
	go func() { // and so does the client, to see the ping
		buf := make([]byte, 16)
		w.Read(buf)
	}()
	if err := s.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-pongs:
		if d != "are you there" {
			t.Fatalf("pong %q", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}
}

// A close frame from the server ends reads with the close error and is
// answered with a close frame.
func TestWSConnAnswersClose(t *testing.T) {
	w, s := wsPair(t)
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "bye")
	if err := s.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := w.Read(make([]byte, 16))
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("read after close: %v", err)
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = s.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("server read %v, want our close frame echoing 1001", err)
	}
}

// noCork is a socket that sends each write at once.
type noCork struct{}

func (noCork) Cork(int)     {}
func (noCork) Flush() error { return nil }
