package relay

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoWithin sends msg from c until it comes back, and fails the test if
// it does not within d.
func echoWithin(t *testing.T, c *net.UDPConn, msg string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 100)
	for time.Now().Before(deadline) {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == msg {
			return
		}
	}
	t.Fatalf("%q did not come back within %s", msg, d)
}

// hung is a Dial whose streams never answer, as one begun on a path that
// then went dead (a blackhole; a relay pod that is gone): the dials'
// contexts that ended are counted.
type hung struct {
	dials, ended atomic.Int64
}

func (h *hung) dial(ctx context.Context) (net.Conn, error) {
	h.dials.Add(1)
	a, b := net.Pipe() // b is never read: a's writes block
	context.AfterFunc(ctx, func() { h.ended.Add(1); b.Close() })
	return a, nil
}

// TestAStreamThatDoesNotOpenIsRedialled: the first stream hangs in its
// opening; within HelloTimeout (5 s by default) it is given up, its
// dial's context ends (so that what carries it stops too), and the next
// stream carries the datagrams: they flow again within 10 s, the promise
// for a network that comes back (docs/reliability.md).
func TestAStreamThatDoesNotOpenIsRedialled(t *testing.T) {
	echo := newUDPServer(t, 1)
	var stuck hung
	h := start(t, echo.addr, func(c *Client, _ *Server) {
		good := c.Dial
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			if stuck.dials.Load() == 0 {
				return stuck.dial(ctx)
			}
			return good(ctx)
		}
	})
	echoWithin(t, peer(t, h.local), "back", 10*time.Second)
	if stuck.ended.Load() != 1 {
		t.Errorf("the hung stream's context did not end (%d of %d)", stuck.ended.Load(), stuck.dials.Load())
	}
}

// TestMoveLeavesAStreamBeingOpened: the relay is gone while a stream to
// it is being opened (its pod's lease ran out while kpf was stopped);
// Move to a new relay gives that stream up at once, not after
// HelloTimeout.
func TestMoveLeavesAStreamBeingOpened(t *testing.T) {
	echo := newUDPServer(t, 1)
	var stuck hung
	var good func(context.Context) (net.Conn, error)
	h := start(t, echo.addr, func(c *Client, _ *Server) {
		good = c.Dial
		c.Dial = stuck.dial
	})
	waitFor(t, "a stream being opened", func() bool { return stuck.dials.Load() > 0 })
	start := time.Now()
	h.client.Move(echo.addr, good)
	echoWithin(t, peer(t, h.local), "moved", 2*time.Second)
	if d := time.Since(start); d >= h.client.HelloTimeout {
		t.Errorf("datagrams flowed %s after the move: the old stream was waited for", d)
	}
	waitFor(t, "the old stream's context to end", func() bool { return stuck.ended.Load() == stuck.dials.Load() })
}

// warnings counts a log's warnings by message.
type warnings struct {
	mu  sync.Mutex
	got map[string]int
}

func (w *warnings) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w *warnings) WithGroup(string) slog.Handler            { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.mu.Lock()
		w.got[r.Message]++
		w.mu.Unlock()
	}
	return nil
}

func (w *warnings) count(msg string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got[msg]
}

// TestClientsSharingAGateWarnOnce: the two clients of a port (127.0.0.1
// and ::1) lose their streams together; one line says so, not one per
// client.
func TestClientsSharingAGateWarnOnce(t *testing.T) {
	echo := newUDPServer(t, 1)
	log := &warnings{got: map[string]int{}}
	gate := &Gate{}
	var hs []*harness
	var peers []*net.UDPConn
	for range 2 {
		h := start(t, echo.addr, func(c *Client, _ *Server) { c.Log, c.Gate = slog.New(log), gate })
		p := peer(t, h.local)
		echoWithin(t, p, "up", 10*time.Second)
		hs, peers = append(hs, h), append(peers, p)
	}
	for _, h := range hs {
		h.mu.Lock()
		h.streams[0].Close()
		h.mu.Unlock()
	}
	for i, h := range hs {
		waitFor(t, "a second stream", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.streams) >= 2 })
		echoWithin(t, peers[i], "again", 10*time.Second)
	}
	if n := log.count("relay stream lost; redialling"); n != 1 {
		t.Errorf("%d warnings of a lost stream for one break of both clients' streams, want 1", n)
	}
}

// swallowing is a stream whose writes vanish once dead is set, as on a
// tunnel that died while kpf slept: writes still succeed locally.
type swallowing struct {
	net.Conn
	dead *atomic.Bool
}

func (s swallowing) Write(p []byte) (int, error) {
	if s.dead.Load() {
		return len(p), nil
	}
	return s.Conn.Write(p)
}

// TestAStaleStreamIsNotUsedAfterASleep: kpf wakes from a sleep (SIGSTOP, a
// laptop's lid) with a stream that brought nothing for longer than three
// pings and died meanwhile; its pinger has not run yet. The first datagram
// after the wake must not go into that stream and be lost: it goes on a
// new one and arrives (the fault matrix's "kpf stopped × udp" cell lost
// it).
func TestAStaleStreamIsNotUsedAfterASleep(t *testing.T) {
	echo := newUDPServer(t, 1)
	var dead atomic.Bool
	var dials atomic.Int64
	h := start(t, echo.addr, func(c *Client, _ *Server) {
		c.Ping = time.Hour // the pinger does not notice in this test
		good := c.Dial
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			conn, err := good(ctx)
			if err != nil || dials.Add(1) > 1 {
				return conn, err
			}
			return swallowing{conn, &dead}, nil
		}
	})
	p := peer(t, h.local)
	echoWithin(t, p, "before", 10*time.Second)
	dead.Store(true)
	h.client.mu.Lock()
	h.client.stream.last.Store(time.Now().Add(-4 * time.Hour).UnixNano()) // the sleep: over three pings
	h.client.mu.Unlock()
	p.Write([]byte("first after the sleep")) // once: it must not be lost
	buf := make([]byte, 100)
	p.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.Read(buf)
	if err != nil || string(buf[:n]) != "first after the sleep" {
		t.Fatalf("the first datagram after the sleep: read %q, %v; want it echoed (it went into the dead stream)", buf[:n], err)
	}
	if dials.Load() < 2 {
		t.Errorf("%d streams dialled, want a second", dials.Load())
	}
}
