package spdy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/bufpool"
	"github.com/kpf-dev/kpf/internal/testnet"
	"k8s.io/streaming/pkg/httpstream"
	apispdy "k8s.io/streaming/pkg/httpstream/spdy"
)

// TestAgainstUpstreamServer runs the client against the server side of
// the library the kubelet uses (moby/spdystream via apimachinery).
func TestAgainstUpstreamServer(t *testing.T) {
	cli, streams := upstream(t)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	for i := range 3 {
		h := http.Header{}
		h.Set("streamType", "error")
		h.Set("port", "80")
		h.Set("requestID", "r"+string(rune('0'+i)))
		if _, err := c.OpenStream(h, true); err != nil {
			t.Fatal(err)
		}
		h.Set("streamType", "data")
		data, err := c.OpenStream(h, false)
		if err != nil {
			t.Fatal(err)
		}
		var got []httpstream.Stream
		for len(got) < 2 {
			select {
			case s := <-streams:
				got = append(got, s)
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: server saw %d streams", i, len(got))
			}
		}
		// The server may hand the two streams over in either order.
		if got[0].Headers().Get("streamType") == "data" {
			got[0], got[1] = got[1], got[0]
		}
		if got[0].Headers().Get("streamType") != "error" || got[1].Headers().Get("streamType") != "data" || got[1].Headers().Get("requestID") != "r"+string(rune('0'+i)) {
			t.Fatalf("headers %v %v", got[0].Headers(), got[1].Headers())
		}
		// Data both ways, and half-close.
		go func() {
			b, _ := io.ReadAll(got[1])
			got[1].Write(append([]byte("echo:"), b...))
			got[1].Close()
		}()
		data.Write([]byte("hello"))
		data.CloseWrite()
		b, err := io.ReadAll(data)
		if err != nil || string(b) != "echo:hello" {
			t.Fatalf("round %d: read %q, %v", i, b, err)
		}
	}
}

// countingConn counts the bytes written to it.
type countingConn struct {
	net.Conn
	n   atomic.Int64
	max atomic.Int64 // the largest single write
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	for {
		m := c.max.Load()
		if int64(len(p)) <= m || c.max.CompareAndSwap(m, int64(len(p))) {
			break
		}
	}
	return c.Conn.Write(p)
}

// A stream both sides have ended with a FIN is closed: resetting it sends
// nothing (each RST_STREAM is a TLS record and a read at the API server and
// at the kubelet, per connection). An open stream is still cancelled.
func TestResetSendsNothingForAClosedStream(t *testing.T) {
	cli, streams := upstream(t)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	done, open := openData(t, c), openData(t, c)
	for range 2 {
		s := <-streams
		go func() {
			io.Copy(s, s)
			s.Close()
		}()
	}
	done.Write([]byte("x"))
	done.CloseWrite()
	if b, err := io.ReadAll(done); err != nil || string(b) != "x" {
		t.Fatalf("echo: %q, %v", b, err)
	}
	before := cli.n.Load()
	done.Reset()
	if d := cli.n.Load() - before; d != 0 {
		t.Fatalf("resetting a stream closed both ways wrote %d bytes", d)
	}
	open.Reset()
	if d := cli.n.Load() - before; d != 16 {
		t.Fatalf("resetting an open stream wrote %d bytes, want one RST_STREAM (16)", d)
	}
}

// upstream is a connection to the server side of the kubelet's SPDY
// library, counting what the client writes, and the streams it accepts.
func upstream(t *testing.T) (*countingConn, <-chan httpstream.Stream) {
	t.Helper()
	raw, srv := testnet.TCPPair(t)
	streams := make(chan httpstream.Stream, 16)
	server, err := apispdy.NewServerConnection(srv, func(s httpstream.Stream, _ <-chan struct{}) error {
		streams <- s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return &countingConn{Conn: raw}, streams
}

// An error stream is read once it is done, by nobody waiting in Read:
// Done closes at the server's FIN and Buffered has the whole message; a
// reset stream is done too, with an error.
func TestDoneAndBufferedReadAWholeStream(t *testing.T) {
	cli, streams := upstream(t)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	h := http.Header{}
	h.Set("streamType", "error")
	es, err := c.OpenStream(h, true)
	if err != nil {
		t.Fatal(err)
	}
	s := <-streams
	s.Write([]byte("an error "))
	s.Write([]byte("in two parts"))
	s.Close()
	select {
	case <-es.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the server's FIN")
	}
	if msg, err := es.Buffered(); string(msg) != "an error in two parts" || err != nil {
		t.Fatalf("Buffered = %q, %v", msg, err)
	}
	other, err := c.OpenStream(h, true)
	if err != nil {
		t.Fatal(err)
	}
	<-streams
	other.Reset()
	select {
	case <-other.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after a reset")
	}
	if _, err := other.Buffered(); err == nil {
		t.Fatal("a reset stream has no error")
	}
}

// A FIN with no data is not the pod's answer: it must not run prepare,
// which commits a connection that could otherwise be replayed on another
// pod (a refused connection ends with the error message and FINs only).
func TestFinAloneDoesNotCommit(t *testing.T) {
	local, srv := testnet.TCPPair(t)
	go io.Copy(io.Discard, srv)
	rc, err := local.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	prepared := 0
	s := &Stream{direct: rc, prepare: func() { prepared++ }, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	s.deliver([]chunk{{}}, true)
	if prepared != 0 {
		t.Fatalf("a FIN alone ran prepare %d times", prepared)
	}
	s2 := &Stream{direct: rc, prepare: func() { prepared++ }, done: make(chan struct{})}
	s2.cond = sync.NewCond(&s2.mu)
	s2.deliver([]chunk{{b: []byte("answer")}}, false)
	if prepared != 1 {
		t.Fatalf("data ran prepare %d times, want 1", prepared)
	}
}

// A bulk upload's reads grow to MaxWrite within a few full reads; a
// connection that then moves a little at a time goes back to small
// buffers; every size's frame (with its 8-byte header) fits its pooled
// buffer class exactly or nearly.
func TestReadSizeFollowsTheTraffic(t *testing.T) {
	size, steps := firstRead, 0
	for size < MaxWrite {
		size = nextReadSize(size, size) // the read filled its buffer
		steps++
		if size+8 > bufpool.Max {
			t.Fatalf("size %d: frame does not fit a pooled buffer", size)
		}
	}
	if size != MaxWrite || steps > 5 {
		t.Fatalf("reached %d after %d full reads, want MaxWrite (%d) within 5", size, steps, MaxWrite)
	}
	if got := nextReadSize(size, size); got != MaxWrite {
		t.Fatalf("a full read at MaxWrite asked for %d", got)
	}
	if got := nextReadSize(size, size/2); got != size {
		t.Fatalf("a half-full read changed the size to %d", got)
	}
	for i := 0; i < 10; i++ {
		size = nextReadSize(size, 100)
	}
	if size != firstRead {
		t.Fatalf("after small reads the size is %d, want firstRead (%d)", size, firstRead)
	}
	if (firstRead+8)&(firstRead+7) != 0 {
		t.Fatalf("firstRead+8 = %d is not a power of two", firstRead+8)
	}
}

// A bulk upload read from a local socket reaches the upstream server byte
// for byte in frames of up to MaxWrite, which the server library takes (it
// allows 16 MiB); no write carries more than one such frame.
func TestBulkReadFromReachesUpstreamServer(t *testing.T) {
	cli, streams := upstream(t)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	data := openData(t, c)
	var srv httpstream.Stream
	select {
	case srv = <-streams:
	case <-time.After(5 * time.Second):
		t.Fatal("server saw no stream")
	}
	want := make([]byte, 16<<20)
	for i := range want {
		want[i] = byte(i*131 + i>>12)
	}
	local, peer := testnet.TCPPair(t)
	go func() {
		peer.Write(want)
		peer.Close()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := data.ReadFrom(local)
		data.CloseWrite()
		done <- err
	}()
	got, err := io.ReadAll(srv)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("server read %d bytes, equal %v", len(got), bytes.Equal(got, want))
	}
	if m := cli.max.Load(); m > 8+MaxWrite {
		t.Fatalf("a write of %d bytes: more than one frame of MaxWrite", m)
	}
	t.Logf("largest frame write: %d bytes", cli.max.Load())
}

// openData opens a data stream on c.
func openData(t *testing.T, c *Conn) *Stream {
	t.Helper()
	h := http.Header{}
	h.Set("streamType", "data")
	s, err := c.OpenStream(h, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// gatedConn, once armed, holds its next Write until open is closed, and
// counts writes from then.
type gatedConn struct {
	net.Conn
	armed  atomic.Bool
	open   chan struct{}
	writes atomic.Int64
}

func (g *gatedConn) Write(p []byte) (int, error) {
	if g.armed.Load() && g.writes.Add(1) == 1 {
		<-g.open
	}
	return g.Conn.Write(p)
}

// Frames sent while another goroutine writes go out together, in one
// write after it, and each stream's bytes arrive whole and in order at
// the kubelet's server.
func TestFramesSentDuringAWriteGoOutTogether(t *testing.T) {
	raw, streams := upstream(t)
	g := &gatedConn{Conn: raw, open: make(chan struct{})}
	c := NewConn(g, nil, nil)
	defer c.Close()
	const n = 6
	data := make([]*Stream, n)
	for i := range data {
		data[i] = openData(t, c)
	}
	// Each stream's server side, in the order the server sees them.
	got := make(chan string, n)
	for range n {
		s := <-streams
		go func() {
			b, _ := io.ReadAll(s)
			got <- string(b)
		}()
	}
	g.armed.Store(true)
	errs := make(chan error, n)
	go func() { _, err := data[0].Write([]byte("s0")); errs <- err }()
	waitFor(t, func() bool { return g.writes.Load() == 1 }) // the first write is held
	for i := 1; i < n; i++ {
		go func() { _, err := data[i].Write([]byte("s" + string(rune('0'+i)))); errs <- err }()
	}
	waitFor(t, func() bool {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return len(c.queue) == (n-1)*(8+2)
	})
	close(g.open)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if w := g.writes.Load(); w != 2 {
		t.Errorf("%d frames went out in %d writes, want 2 (the first, then the rest together)", n, w)
	}
	for _, s := range data {
		s.CloseWrite()
	}
	seen := map[string]bool{}
	for range n {
		select {
		case s := <-got:
			seen[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("the server read %d of %d streams", len(seen), n)
		}
	}
	for i := range n {
		if want := "s" + string(rune('0'+i)); !seen[want] {
			t.Errorf("no stream read %q (got %v)", want, seen)
		}
	}
}

// Many streams writing at once: every byte arrives, in order, on its
// own stream.
func TestConcurrentWritersKeepEachStreamsBytes(t *testing.T) {
	raw, streams := upstream(t)
	c := NewConn(raw, nil, nil)
	defer c.Close()
	const n, msgs = 16, 200
	data := make([]*Stream, n)
	for i := range data {
		data[i] = openData(t, c)
	}
	want := func(i int) []byte {
		var b bytes.Buffer
		for m := range msgs {
			b.WriteString(strings.Repeat(string(rune('a'+i)), 1+m%40))
		}
		return b.Bytes()
	}
	got := make(chan []byte, n)
	for range n {
		s := <-streams
		go func() {
			b, _ := io.ReadAll(s)
			got <- b
		}()
	}
	var wg sync.WaitGroup
	for i, s := range data {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range msgs {
				s.Write(bytes.Repeat([]byte{byte('a' + i)}, 1+m%40))
			}
			s.CloseWrite()
		}()
	}
	wg.Wait()
	for range n {
		select {
		case b := <-got:
			if len(b) == 0 || !bytes.Equal(b, want(int(b[0]-'a'))) {
				t.Fatalf("a stream's bytes arrived wrong (%d bytes)", len(b))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not every stream arrived")
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
