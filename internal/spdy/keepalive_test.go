package spdy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
	"k8s.io/streaming/pkg/httpstream"
)

// pingWatch parses the frames the client writes and records when each
// PING went out, wherever it sits in a write (alone, or batched with data).
type pingWatch struct {
	net.Conn
	mu    sync.Mutex
	hdr   []byte // a frame header being collected
	skip  int    // the current frame's bytes still to pass
	pings []time.Time
}

func (p *pingWatch) Write(b []byte) (int, error) {
	p.mu.Lock()
	now := time.Now()
	for rest := b; len(rest) > 0; {
		if p.skip > 0 {
			n := min(p.skip, len(rest))
			p.skip -= n
			rest = rest[n:]
			continue
		}
		n := min(8-len(p.hdr), len(rest))
		p.hdr = append(p.hdr, rest[:n]...)
		rest = rest[n:]
		if len(p.hdr) < 8 {
			break
		}
		if p.hdr[0]&0x80 != 0 && binary.BigEndian.Uint16(p.hdr[2:4]) == typePing {
			p.pings = append(p.pings, now)
		}
		p.skip = int(p.hdr[5])<<16 | int(p.hdr[6])<<8 | int(p.hdr[7])
		p.hdr = p.hdr[:0]
	}
	p.mu.Unlock()
	return p.Conn.Write(b)
}

// sent is when each ping went out.
func (p *pingWatch) sent() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.pings...)
}

// On an idle connection, pings go out every period, never sooner, and the
// upstream server's answers keep the connection open well past the time
// pingMisses unanswered periods would take.
func TestKeepAlivePingsAnIdleConnection(t *testing.T) {
	cli, _ := upstream(t)
	w := &pingWatch{Conn: cli}
	c := NewConn(w, nil, nil)
	defer c.Close()
	const period = 100 * time.Millisecond
	start := time.Now()
	c.KeepAlive(period, nil)
	const want = 6
	testnet.WaitFor(t, func() bool { return len(w.sent()) >= want })
	for i, at := range w.sent()[:want] {
		if early := time.Duration(i+1)*period - at.Sub(start); early > 0 {
			t.Errorf("ping %d went out %s before its period", i+1, early)
		}
	}
	select {
	case <-c.Done():
		t.Fatalf("the connection closed although the server answered every ping: %v", c.Err())
	default:
	}
	if d := w.sent()[want-1].Sub(start); d > 3*want*period {
		t.Errorf("%d pings took %s at a period of %s", want, d, period)
	}
}

// relay carries bytes between a and b until cut, and then swallows them:
// a path that died silently (a proxy or load balancer that dropped the
// connection without a reset).
type relay struct{ cut atomic.Bool }

func newRelay(t *testing.T, server net.Conn) (client net.Conn, r *relay) {
	r = &relay{}
	client, mid := testnet.TCPPair(t)
	pipe := func(dst io.Writer, src io.Reader) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !r.cut.Load() {
				dst.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(server, mid) }()
	go func() { defer wg.Done(); pipe(mid, server) }()
	t.Cleanup(func() {
		mid.Close()
		server.Close()
		wg.Wait()
	})
	return client, r
}

// A connection whose server stops answering (the path goes silent, with no
// reset) closes within pingMisses periods of its first unanswered ping,
// with ErrPingTimeout, and its streams end with the same error.
func TestKeepAliveClosesASilentConnection(t *testing.T) {
	srv, streams := upstream(t)
	cli, path := newRelay(t, srv)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	const period = 100 * time.Millisecond
	var reported atomic.Pointer[error]
	c.KeepAlive(period, func(err error) { reported.Store(&err) })
	data := openData(t, c)
	s := <-streams
	go func() { io.Copy(s, s) }()
	if _, err := data.Write([]byte("ping?")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(data, got); err != nil || string(got) != "ping?" {
		t.Fatalf("echo before the cut: %q, %v", got, err)
	}
	// A few answered pings first: the connection is healthy.
	read := c.framesRead.Load()
	testnet.WaitFor(t, func() bool { return c.framesRead.Load() >= read+3 })

	path.cut.Store(true)
	cut := time.Now()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection is still open 5 s after its path went silent")
	}
	took := time.Since(cut)
	if !errors.Is(c.Err(), ErrPingTimeout) {
		t.Fatalf("closed with %v, want ErrPingTimeout", c.Err())
	}
	if r := reported.Load(); r == nil || *r != c.Err() {
		t.Errorf("dead was called with %v, want the connection's error %v", r, c.Err())
	}
	// The first unanswered ping goes out within a period of the cut; the
	// connection closes pingMisses periods later (plus scheduling slack).
	if bound := (pingMisses+1)*period + time.Second; took > bound || took < period {
		t.Errorf("closed %s after the cut, want between %s and %s", took, period, bound)
	}
	if _, err := data.Read(got); !errors.Is(err, ErrPingTimeout) {
		t.Errorf("the open stream read %v, want ErrPingTimeout", err)
	}
	t.Logf("closed %s after the cut: %v", took.Round(time.Millisecond), c.Err())
}

// Pings at a period well below a transfer's length interleave with its
// frames, both ways, and every byte arrives in order. (A period of a few
// milliseconds would flake here: pingMisses such periods with nothing
// moved, as a loaded machine under -race may have, close the connection.)
func TestPingsDoNotDisturbData(t *testing.T) {
	cli, streams := upstream(t)
	w := &pingWatch{Conn: cli}
	c := NewConn(w, nil, nil)
	defer c.Close()
	c.KeepAlive(200*time.Millisecond, nil)
	data := openData(t, c)
	var s httpstream.Stream
	select {
	case s = <-streams:
	case <-time.After(5 * time.Second):
		t.Fatal("server saw no stream")
	}
	go func() {
		io.Copy(s, s)
		s.Close()
	}()
	want := make([]byte, 16<<20)
	for i := range want {
		want[i] = byte(i*131 + i>>12)
	}
	errc := make(chan error, 1)
	go func() {
		// Small writes: many frames, with pings between them.
		for b := want; len(b) > 0; {
			n := min(len(b), 4<<10+int(b[0]))
			if _, err := data.Write(b[:n]); err != nil {
				errc <- err
				return
			}
			b = b[n:]
		}
		errc <- data.CloseWrite()
	}()
	before := len(w.sent())
	got, err := io.ReadAll(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echoed %d bytes of %d, equal %v", len(got), len(want), bytes.Equal(got, want))
	}
	pings := len(w.sent()) - before
	if pings == 0 {
		t.Fatal("no ping went out during the transfer: the test proves nothing")
	}
	if c.Err() != nil {
		t.Fatalf("the connection failed: %v", c.Err())
	}
	t.Logf("%d pings during the transfer", pings)
}

// A local reader that stops reading stalls the read loop (back-pressure),
// so nothing is read, pings' answers included: that is no sign of a dead
// server, and the connection stays open through many periods.
func TestKeepAliveSparesAStalledReader(t *testing.T) {
	cli, streams := upstream(t)
	w := &pingWatch{Conn: cli}
	c := NewConn(w, nil, nil)
	defer c.Close()
	const period = 50 * time.Millisecond
	c.KeepAlive(period, nil)
	data := openData(t, c)
	s := <-streams
	want := make([]byte, 4*queueLimit)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		// In frames of 64 KiB: the read loop waits once its queue for the
		// stream holds more than queueLimit.
		for b := want; len(b) > 0; b = b[64<<10:] {
			if _, err := s.Write(b[:64<<10]); err != nil {
				return
			}
		}
		s.Close()
	}()
	testnet.WaitFor(t, c.stalled.Load)
	pings := len(w.sent())
	testnet.WaitFor(t, func() bool { return len(w.sent()) >= pings+5*pingMisses })
	if !c.stalled.Load() {
		t.Fatal("the read loop no longer waits for the reader: the test proves nothing")
	}
	got, err := io.ReadAll(data)
	if err != nil {
		t.Fatalf("read after the stall: %v (the connection: %v)", err, c.Err())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes of %d, equal %v", len(got), len(want), bytes.Equal(got, want))
	}
}

// Quiet stays within a period and a half while the server answers pings
// (what tunnel.Conn.Stale allows), and grows past it once the path goes
// silent, as it does for kpf stopped while a proxy cut its tunnel.
func TestQuietSaysHowLongTheServerWasNotHeard(t *testing.T) {
	srv, _ := upstream(t)
	cli, path := newRelay(t, srv)
	c := NewConn(cli, nil, nil)
	defer c.Close()
	if q := c.Quiet(); q != 0 {
		t.Errorf("Quiet without KeepAlive: %s, want 0", q)
	}
	const period = 200 * time.Millisecond
	c.KeepAlive(period, nil)
	read := c.framesRead.Load()
	for c.framesRead.Load() < read+6 { // six answered pings, each a period apart
		if q := c.Quiet(); q > period+period/2 {
			t.Fatalf("Quiet %s while the server answers pings every %s", q, period)
		}
		time.Sleep(period / 10)
	}
	path.cut.Store(true)
	testnet.WaitFor(t, func() bool { return c.Quiet() > period+period/2 })
}
