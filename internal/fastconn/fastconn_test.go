package fastconn

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net/http"
	"testing"
	"time"

	ownspdy "github.com/kpf-dev/kpf/internal/spdy"
	"github.com/kpf-dev/kpf/internal/sysio"
	"github.com/kpf-dev/kpf/internal/testnet"
	"k8s.io/streaming/pkg/httpstream"
	apispdy "k8s.io/streaming/pkg/httpstream/spdy"
)

func TestFastConnCorkSendsOneWrite(t *testing.T) {
	c, s := testnet.TCPPair(t)
	f := newFastConn(c)
	f.Cork(100)
	for i := range 100 {
		if _, err := f.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is sent while corked.
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := s.Read(make([]byte, 1)); n != 0 {
		t.Fatalf("read %d bytes while corked", n)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 100)
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if b != byte(i) {
			t.Fatalf("byte %d is %d", i, b)
		}
	}
	// Uncorked writes go straight out; more than one pooled buffer's worth
	// while corked still arrives whole and in order.
	big := make([]byte, 3<<20)
	rand.Read(big)
	go func() {
		f.Cork(len(big))
		f.Write(big[:1<<20])
		f.Write(big[1<<20:])
		f.Flush()
	}()
	back := make([]byte, len(big))
	if _, err := io.ReadFull(s, back); err != nil || !bytes.Equal(back, big) {
		t.Fatalf("corked 3 MiB: %v, equal %v", err, bytes.Equal(back, big))
	}
}

func TestFastConnReadsAndSaysWhenItWaits(t *testing.T) {
	c, s := testnet.TCPPair(t)
	f := newFastConn(c)
	waits := 0
	f.BeforeWait(func() { waits++ })
	go func() {
		time.Sleep(20 * time.Millisecond) // the first read must wait
		s.Write([]byte("hello, "))
		s.Write([]byte("world"))
		s.Close()
	}()
	b, err := io.ReadAll(f)
	if err != nil || string(b) != "hello, world" {
		t.Fatalf("read %q, %v", b, err)
	}
	if waits == 0 {
		t.Fatal("BeforeWait never ran, though the first read had to wait")
	}
	if f.rbuf != nil {
		t.Fatal("a drained fastConn still holds its read buffer")
	}
}

// TestDataPathAgainstUpstreamServer moves data both ways through kpf's
// SPDY client over a fastConn, with local TCP sockets on kpf's side (so the
// direct-write, writev and raw-read paths run) and the kubelet's server
// library on the other, checking every byte; then a small request and
// answer, which must not wait behind the read loop's batching.
func TestDataPathAgainstUpstreamServer(t *testing.T) {
	cli, srv := testnet.TCPPair(t)
	streams := make(chan httpstream.Stream, 16)
	server, err := apispdy.NewServerConnection(srv, func(s httpstream.Stream, replySent <-chan struct{}) error {
		streams <- s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	fc := newFastConn(cli)
	c := ownspdy.NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{fc, CorkedWriter{fc, fc}, fc}, nil, fc)
	defer c.Close()

	open := func(id string, first []byte) *ownspdy.Stream {
		h := http.Header{}
		h.Set("streamType", "error")
		h.Set("requestID", id)
		dh := h.Clone()
		dh.Set("streamType", "data")
		_, data, err := c.OpenPair(h, dh, first)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			select {
			case s := <-streams:
				if s.Headers().Get("streamType") == "data" {
					// The server echoes what it reads, then closes.
					go func() { io.Copy(s, s); s.Close() }()
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server did not see both streams")
			}
		}
		return data
	}

	// 16 MiB echoed, through local sockets on kpf's side.
	payload := make([]byte, 16<<20)
	rand.Read(payload)
	app, local := testnet.TCPPair(t) // app is the local client; local is what kpf accepted
	data := open("bulk", payload[:100])
	go func() {
		app.Write(payload[100:])
		app.CloseWrite()
	}()
	go func() { data.ReadFrom(local); data.CloseWrite() }()
	go func() { data.WriteTo(local); local.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, app)
	if err != nil || n != int64(len(payload)) {
		t.Fatalf("echoed %d of %d bytes: %v", n, len(payload), err)
	}
	if want := sha256.Sum256(payload); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("the echo differs from what was sent")
	}

	// A small exchange right after the bulk one answers at once.
	app2, local2 := testnet.TCPPair(t)
	data2 := open("small", []byte("ping"))
	go func() { data2.WriteTo(local2) }()
	local2.SetDeadline(time.Now().Add(5 * time.Second))
	app2.SetDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(app2, got); err != nil || string(got) != "ping" {
		t.Fatalf("small echo: %q, %v", got, err)
	}
}

// After a bulk stream, pacing holds the socket's readiness back until many
// bytes are queued; a few bytes that come later, alone, must still be read
// at once, and every byte of the bulk must arrive in order.
func TestPacedReadsDoNotHoldBackTheLastBytes(t *testing.T) {
	needRaw(t)
	c, s := testnet.TCPPair(t)
	f := newFastConn(c)
	// 256 KiB at a time, each written once the reader has taken the one
	// before: every read is short of the buffer and comes at loopback
	// rates, so reads are paced whatever the machine's speed.
	const chunk = 256 << 10
	bulk := make([]byte, 16<<20)
	rand.Read(bulk)
	taken := make(chan struct{}, 1)
	go func() {
		for p := bulk; len(p) > 0; p = p[chunk:] {
			s.Write(p[:chunk])
			<-taken
		}
	}()
	got := make([]byte, 0, len(bulk))
	f.SetReadDeadline(time.Now().Add(30 * time.Second)) // fail, never hang
	// Read as TLS does: a record at a time.
	for len(got) < len(bulk) {
		n, err := f.Read(got[len(got):min(len(bulk), len(got)+16<<10)])
		if err != nil {
			t.Fatal(err)
		}
		got = got[:len(got)+n]
		if len(got)%chunk == 0 {
			taken <- struct{}{}
		}
	}
	if !bytes.Equal(got, bulk) {
		t.Fatal("the bulk stream arrived changed")
	}
	if f.paced == 0 {
		t.Fatal("16 MiB over loopback never reached bulkRate: pacing was not exercised")
	}
	// The reader waits; then a few bytes come, alone.
	for i := range 5 {
		sent := make(chan time.Time, 1)
		go func() {
			time.Sleep(20 * time.Millisecond)
			sent <- time.Now()
			s.Write([]byte("tail"))
		}()
		b := make([]byte, 4)
		f.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(f, b); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(<-sent); d > 100*time.Millisecond {
			t.Fatalf("message %d: 4 bytes after a bulk stream took %v to read", i, d)
		}
	}
}

// needRaw skips tests of read pacing in the portable build, which has
// none.
func needRaw(t *testing.T) {
	if !sysio.Raw {
		t.Skip("the portable build does not pace reads")
	}
}

// In the portable build a read waits holding its buffer: the buffer grows
// while reads fill it and shrinks when they do not, so bulk traffic takes
// large reads and an idle tunnel holds a small buffer.
func TestPortableReadsFollowTheTraffic(t *testing.T) {
	c, s := testnet.TCPPair(t)
	f := &fastConn{Conn: c, portableRead: minPortableRead}
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	go func() { s.Write(payload); s.CloseWrite() }()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes (%v), equal %v", len(got), err, bytes.Equal(got, payload))
	}
	if f.portableRead <= minPortableRead {
		t.Errorf("after 4 MiB in a row the read size is %d, want it grown", f.portableRead)
	}
	// A trickle after the bulk brings it back down.
	c2, s2 := testnet.TCPPair(t)
	f.Conn = c2
	big := f.portableRead
	for range 8 {
		s2.Write([]byte("x"))
		if _, err := f.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if f.portableRead >= big || f.portableRead < minPortableRead {
		t.Errorf("after small reads the read size is %d (was %d), want it smaller, at least %d", f.portableRead, big, minPortableRead)
	}
}
