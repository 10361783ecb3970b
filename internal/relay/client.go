package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Client is kpf's side: it takes the datagrams of local peers on a UDP
// socket, gives each peer a flow, and carries the flows over one stream to
// the relay (redialled when it is lost; the flows go on over the new one),
// writing each flow's replies back to its peer.
type Client struct {
	Local  *net.UDPConn
	Target string // host:port the relay sends to
	// Dial opens a stream to the relay.
	Dial func(ctx context.Context) (net.Conn, error)
	// IdleTimeout closes a peer's flow after this long with no datagram
	// either way. Default 60 s.
	IdleTimeout time.Duration
	// Ping is the keep-alive interval; a stream that brought nothing for
	// three of them is dropped and redialled. Default 10 s.
	Ping time.Duration
	// HelloTimeout bounds a stream's opening: the dial and the relay's
	// answer. A stream that does not open by then is closed (its dial's
	// context ends) and another is dialled: one begun on a path that went
	// dead (a blackhole, a relay pod that is gone) must not hold the
	// forward once the path is back. Default 5 s.
	HelloTimeout time.Duration
	Log          *slog.Logger
	// Gate, when set, is shared by the clients of one forward (a port
	// bound on 127.0.0.1 and ::1 has two): they lose their streams
	// together, and one warning says so.
	Gate *Gate

	// Counters, for status.
	DatagramsIn, DatagramsOut atomic.Int64 // to the peers, to the relay
	BytesIn, BytesOut         atomic.Int64
	Dropped                   atomic.Int64 // datagrams dropped while the stream could not take them

	setup   sync.Once
	ready   chan struct{} // closed once the relay answered a stream
	isReady sync.Once

	mu      sync.Mutex
	route   uint64 // counts Moves: a stream opened before one is not used
	flows   map[netip.AddrPort]*clientFlow
	byID    map[uint32]netip.AddrPort
	nextID  uint32
	stream  *clientStream
	changed chan struct{}      // closed when stream changes
	opening context.CancelFunc // ends the stream being opened, if any
}

// Gate lets one of the clients that share it say a thing once a window;
// the others say it at debug level.
type Gate struct {
	Window time.Duration // default 10 s
	mu     sync.Mutex
	last   map[string]time.Time
}

// allow says whether msg may be said now, and notes that it is.
func (g *Gate) allow(msg string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	window := g.Window
	if window == 0 {
		window = 10 * time.Second
	}
	if g.last == nil {
		g.last = map[string]time.Time{}
	}
	if t, ok := g.last[msg]; ok && time.Since(t) < window {
		return false
	}
	g.last[msg] = time.Now()
	return true
}

// warn logs at level, or at debug level when another client sharing the
// Gate said msg within its window.
func (c *Client) warn(level slog.Level, msg string, args ...any) {
	if level > slog.LevelDebug && c.Gate != nil && !c.Gate.allow(msg) {
		level = slog.LevelDebug
	}
	c.Log.Log(context.Background(), level, msg, args...)
}

type clientFlow struct {
	id   uint32
	last atomic.Int64
}

// clientStream is one stream to the relay.
type clientStream struct {
	c    net.Conn
	w    *frameWriter
	last atomic.Int64 // when a frame last came
}

func (c *Client) defaults() {
	c.setup.Do(func() {
		if c.IdleTimeout == 0 {
			c.IdleTimeout = 60 * time.Second
		}
		if c.Ping == 0 {
			c.Ping = 10 * time.Second
		}
		if c.HelloTimeout == 0 {
			c.HelloTimeout = 5 * time.Second
		}
		if c.Log == nil {
			c.Log = slog.Default()
		}
		c.mu.Lock()
		c.flows = map[netip.AddrPort]*clientFlow{}
		c.byID = map[uint32]netip.AddrPort{}
		c.changed = make(chan struct{})
		c.ready = make(chan struct{})
		c.mu.Unlock()
	})
}

// Ready is closed once the relay answered a stream (its OK to HELLO):
// from then on, datagrams reach it. Before, they wait in a queue, and a
// relay that is not listening yet (a container just started) is dialled
// again until it is.
func (c *Client) Ready() <-chan struct{} {
	c.defaults()
	return c.ready
}

// HelloError is the relay's refusal of a stream's target.
type HelloError struct{ Msg string }

func (e *HelloError) Error() string { return "the relay refused the target: " + e.Msg }

// Move moves the flows to another target, through another relay if dial
// is not nil (the forward's new pod, a relay made for it): the stream is
// redialled with both, and the relay opens the flows' sockets anew on
// their next datagrams. Target and dial change together: a relay is never
// asked for a target it was not made for, and a stream being opened on
// the old route is not used.
func (c *Client) Move(target string, dial func(ctx context.Context) (net.Conn, error)) {
	c.mu.Lock()
	c.Target = target
	if dial != nil {
		c.Dial = dial
	}
	c.route++
	st, opening := c.stream, c.opening
	c.mu.Unlock()
	if opening != nil {
		opening() // a stream being opened on the old route: not waited for
	}
	if st != nil {
		c.drop(st, fmt.Errorf("the target moved to %s", target))
	}
}

// Peers is how many local peers have a flow now.
func (c *Client) Peers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.flows)
}

// Serve relays until ctx ends (nil), or the relay refuses the target.
func (c *Client) Serve(ctx context.Context) error {
	c.defaults()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { c.Local.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var wg sync.WaitGroup
	queue := make(chan datagram, queueLen)
	wg.Add(3)
	go func() { defer wg.Done(); c.keep(ctx, cancel) }()
	go func() { defer wg.Done(); c.sweep(ctx) }()
	go func() { defer wg.Done(); c.send(ctx, cancel, queue) }()
	defer wg.Wait()
	defer cancel(nil)
	// This loop only reads: the kernel's buffer for the local socket is
	// small (net.core.rmem_max, 208 KiB by default), and a burst of small
	// datagrams overflows it unless they are taken off at once. The queue
	// holds them while send writes them to the stream in batches.
	buf := make([]byte, MaxDatagram+1)
	for {
		n, peer, err := c.Local.ReadFromUDPAddrPort(buf)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			c.Log.Debug("udp read", "err", err)
			continue
		}
		if n > MaxDatagram {
			continue
		}
		d := datagram{fl: c.flowOf(peer), b: append([]byte(nil), buf[:n]...)}
		select {
		case queue <- d:
		default:
			c.Dropped.Add(1) // the queue is full: as a full socket buffer would
		}
	}
}

// queueLen bounds the datagrams waiting for the stream.
const queueLen = 8192

// maxBatch bounds the bytes of frames written to the stream at once.
const maxBatch = 256 << 10

type datagram struct {
	fl *clientFlow
	b  []byte
}

// send writes queued datagrams to the stream, as many frames per write as
// are waiting; a batch the stream failed to take goes on the next one.
func (c *Client) send(ctx context.Context, fail context.CancelCauseFunc, queue chan datagram) {
	var batch []byte
	var sent []datagram
	for {
		if len(sent) == 0 {
			select {
			case d := <-queue:
				batch = Append(batch[:0], Frame{Type: TypeData, Flow: d.fl.id, Payload: d.b})
				sent = append(sent[:0], d)
			case <-ctx.Done():
				return
			}
		more:
			for len(batch) < maxBatch {
				select {
				case d := <-queue:
					batch = Append(batch, Frame{Type: TypeData, Flow: d.fl.id, Payload: d.b})
					sent = append(sent, d)
				default:
					break more
				}
			}
		}
		st, err := c.current(ctx)
		if err != nil {
			fail(err)
			return
		}
		if c.stale(st) {
			// Nothing came for three pings: the stream is dead, though
			// its pinger has not closed it yet (kpf just woke from a
			// sleep). What is written to it now would be lost: the
			// batch goes on the next stream.
			c.drop(st, errors.New("the relay went quiet"))
			continue
		}
		if err := st.w.writeRaw(batch); err != nil {
			c.drop(st, err)
			continue // the same batch, on the next stream
		}
		now := time.Now().UnixNano()
		for _, d := range sent {
			d.fl.last.Store(now)
			c.BytesOut.Add(int64(len(d.b)))
		}
		c.DatagramsOut.Add(int64(len(sent)))
		sent = sent[:0]
	}
}

// flowOf returns a peer's flow, making one for a new peer.
func (c *Client) flowOf(peer netip.AddrPort) *clientFlow {
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	c.mu.Lock()
	defer c.mu.Unlock()
	if fl, ok := c.flows[peer]; ok {
		return fl
	}
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	fl := &clientFlow{id: c.nextID}
	c.flows[peer] = fl
	c.byID[fl.id] = peer
	return fl
}

// current waits for a stream.
func (c *Client) current(ctx context.Context) (*clientStream, error) {
	for {
		c.mu.Lock()
		st, ch := c.stream, c.changed
		c.mu.Unlock()
		if st != nil {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// drop forgets a stream that failed, so that keep dials another.
func (c *Client) drop(st *clientStream, err error) {
	c.mu.Lock()
	if c.stream == st {
		c.stream = nil
		close(c.changed)
		c.changed = make(chan struct{})
		if err != nil {
			c.warn(slog.LevelWarn, "relay stream lost; redialling", "err", err)
		}
	}
	c.mu.Unlock()
	st.c.Close()
}

// keep keeps a stream open: dials (with backoff), reads its frames, and
// dials again when it ends. A refused target ends Serve.
func (c *Client) keep(ctx context.Context, fail context.CancelCauseFunc) {
	failures := 0
	for ctx.Err() == nil {
		// Each stream has a context of its own, given to Dial: it ends
		// with the stream, when the stream does not open within
		// HelloTimeout, or when Move leaves its route.
		sctx, end := context.WithCancel(ctx)
		c.mu.Lock()
		c.opening = end
		c.mu.Unlock()
		st, route, err := c.open(sctx)
		c.mu.Lock()
		c.opening = nil
		c.mu.Unlock()
		if err != nil {
			end()
		}
		var he *HelloError
		if errors.As(err, &he) && !c.moved(route) {
			fail(err)
			return
		}
		if c.moved(route) {
			if err == nil {
				st.c.Close() // opened on the route before a Move
				end()
			}
			failures = 0 // the new route is tried at once
			continue
		}
		if err != nil {
			failures++
			// At most 2 s: with HelloTimeout, a path that came back is
			// used within HelloTimeout + 2 s.
			wait := min(time.Duration(1<<min(failures, 6))*100*time.Millisecond, 2*time.Second)
			wait = wait/2 + rand.N(wait/2+1)
			// Until the relay first answers, a refused stream is
			// expected (a relay that has just started): not a warning.
			// After the first, the failures of one outage are not news
			// either: a line each would flood the log of a long one.
			level := slog.LevelWarn
			select {
			case <-c.ready:
			default:
				level = slog.LevelDebug
			}
			if failures > 1 {
				level = slog.LevelDebug
			}
			c.warn(level, "relay stream", "err", err, "retryIn", wait.Round(time.Millisecond))
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			continue
		}
		failures = 0
		c.mu.Lock()
		if c.route != route {
			c.mu.Unlock()
			st.c.Close()
			end()
			continue
		}
		c.stream = st
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		c.isReady.Do(func() { close(c.ready) })
		err = c.read(ctx, st)
		if ctx.Err() != nil {
			err = nil // stopping: nothing was lost
		}
		c.drop(st, err)
		end()
	}
}

// moved says whether the route changed since route.
func (c *Client) moved(route uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.route != route
}

// open dials a stream on the current route and says hello.
func (c *Client) open(ctx context.Context) (*clientStream, uint64, error) {
	c.mu.Lock()
	target, dial, route := c.Target, c.Dial, c.route
	c.mu.Unlock()
	// ctx is the stream's: it ends here if the stream is not open in time.
	late := fmt.Errorf("the relay did not answer within %s", c.HelloTimeout)
	ctx, cancel := context.WithCancelCause(ctx)
	slow := time.AfterFunc(c.HelloTimeout, func() { cancel(late) })
	st, err := c.hello(ctx, dial, target)
	if !slow.Stop() && err == nil {
		st.c.Close() // the timer ended the stream's context as it opened
		err = late
	}
	if err != nil && ctx.Err() != nil {
		err = context.Cause(ctx) // why the stream was cut: a clearer word
	}
	return st, route, err
}

// hello dials a stream and says hello, until ctx ends.
func (c *Client) hello(ctx context.Context, dial func(context.Context) (net.Conn, error), target string) (*clientStream, error) {
	conn, err := dial(ctx)
	if err == nil && ctx.Err() != nil {
		conn.Close()
		err = context.Cause(ctx)
	}
	if err != nil {
		return nil, err
	}
	unblock := context.AfterFunc(ctx, func() { conn.Close() })
	defer unblock()
	conn.SetDeadline(time.Now().Add(c.HelloTimeout))
	w := &frameWriter{w: conn}
	if err := writeMagic(conn); err != nil {
		conn.Close()
		return nil, err
	}
	if err := w.write(Frame{Type: TypeHello, Payload: []byte(target)}); err != nil {
		conn.Close()
		return nil, err
	}
	if err := readMagic(conn); err != nil {
		conn.Close()
		return nil, err
	}
	r := NewReader(conn)
	f, err := r.Read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("the relay's answer: %w", err)
	}
	if f.Type == TypeError {
		conn.Close()
		return nil, &HelloError{string(f.Payload)}
	}
	if f.Type != TypeOK {
		conn.Close()
		return nil, protoErr("frame type %d in answer to HELLO", f.Type)
	}
	if !unblock() || ctx.Err() != nil {
		conn.Close()
		return nil, context.Cause(ctx)
	}
	conn.SetDeadline(time.Time{})
	st := &clientStream{c: conn, w: w}
	st.last.Store(time.Now().UnixNano())
	return st, nil
}

// stale says whether st brought nothing for three pings. The time is the
// wall clock's (st.last holds no monotonic reading), which also runs while
// the machine sleeps: after a laptop's sleep a stream is seen stale before
// its first use.
func (c *Client) stale(st *clientStream) bool {
	return time.Since(time.Unix(0, st.last.Load())) > 3*c.Ping
}

// read delivers a stream's frames until it fails, pinging as it goes.
func (c *Client) read(ctx context.Context, st *clientStream) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(c.Ping)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				st.c.Close()
				return
			case <-t.C:
			}
			if c.stale(st) {
				st.c.Close() // the relay went quiet: redial
				return
			}
			st.w.write(Frame{Type: TypePing})
		}
	}()
	r := NewReader(st.c)
	for {
		f, err := r.Read()
		if err != nil {
			return err
		}
		st.last.Store(time.Now().UnixNano())
		switch f.Type {
		case TypeData:
			c.mu.Lock()
			peer, ok := c.byID[f.Flow]
			fl := c.flows[peer]
			c.mu.Unlock()
			if !ok {
				continue // a flow closed meanwhile
			}
			fl.last.Store(time.Now().UnixNano())
			if _, err := c.Local.WriteToUDPAddrPort(f.Payload, peer); err != nil {
				c.Log.Debug("udp write", "peer", peer.String(), "err", err)
				continue
			}
			c.DatagramsIn.Add(1)
			c.BytesIn.Add(int64(len(f.Payload)))
		case TypeClose:
			c.forget(f.Flow)
		case TypeError:
			return fmt.Errorf("the relay: %s", f.Payload)
		case TypePing:
			st.w.write(Frame{Type: TypePong, Payload: f.Payload})
		case TypePong:
		default:
			return protoErr("frame type %d from the relay", f.Type)
		}
	}
}

func (c *Client) forget(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if peer, ok := c.byID[id]; ok {
		delete(c.byID, id)
		delete(c.flows, peer)
	}
}

// sweep closes the flows of peers idle for IdleTimeout.
func (c *Client) sweep(ctx context.Context) {
	t := time.NewTicker(min(c.IdleTimeout/4, 5*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var idle []uint32
		c.mu.Lock()
		for peer, fl := range c.flows {
			if time.Since(time.Unix(0, fl.last.Load())) > c.IdleTimeout {
				idle = append(idle, fl.id)
				delete(c.flows, peer)
				delete(c.byID, fl.id)
			}
		}
		st := c.stream
		c.mu.Unlock()
		if st != nil {
			for _, id := range idle {
				st.w.write(Frame{Type: TypeClose, Flow: id})
			}
		}
	}
}
