package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Server is the relay: it accepts streams from kpf (through the
// port-forward tunnel), and for each flow of a stream sends its datagrams
// to the stream's target from a UDP socket of the flow's own, so that
// replies (any number, in any order, or none) go back to the flow.
//
// It is no open relay: its streams and routes listen on loopback only
// (Serve refuses another listener; port-forward reaches the pod's
// loopback), and it sends only
// to the destinations in Allow, fixed when kpf made it (the pod's
// arguments, which no one can change afterwards). A stream that names
// another is answered ERROR and closed. Only the Reverses of kpf expose
// listen on the pod's address: they dial nothing, and hand each
// connection to the kpf that holds the exposure.
type Server struct {
	Log *slog.Logger
	// Allow is every destination the relay may send datagrams to; a
	// HELLO that names another is refused. Empty: every one is refused.
	Allow []Dest
	// Routes are the TCP destinations: each connection to a route's
	// listener (on loopback, as the streams') is piped to its Dest.
	Routes []Route
	// Reverses are kpf expose's ports, on the pod's address (reverse.go).
	Reverses []Reverse
	// JoinTimeout is how long an exposed port's connection waits for
	// kpf's stream before it is reset. Default 10 s.
	JoinTimeout time.Duration
	// DialTimeout bounds a route's dial of its destination. Default 10 s.
	DialTimeout time.Duration
	// dialLoopback lets a route dial loopback, which the relay refuses:
	// for this package's tests, whose destinations are on this machine.
	dialLoopback bool
	// ClientTimeout drops a stream that sent nothing (not even a PING)
	// for this long: its kpf is gone. Default 30 s.
	ClientTimeout time.Duration
	// IdleExit makes Serve return once no stream was open for this long,
	// so that a relay whose kpf died exits on its own. Default 30 s; a
	// negative value never.
	IdleExit time.Duration
	// FlowIdle closes a flow with no datagram either way for this long,
	// should kpf not close it first. Default 5 minutes.
	FlowIdle time.Duration
	// MaxFlows is the most flows open at once, over all streams (each a
	// socket and a goroutine); a new flow beyond it closes the least
	// recently used flow of the stream that holds the most (CLOSE), so
	// that no stream can starve another. Default 1,024.
	MaxFlows int

	open     atomic.Int64
	flows    atomic.Int64 // flows open, over all streams
	mu       sync.Mutex
	streams  map[*serverStream]bool // streams past their HELLO
	lastSeen atomic.Int64           // unix nanoseconds: the last stream's end
	reverse  reverseState
}

func (s *Server) defaults() {
	if s.Log == nil {
		s.Log = slog.Default()
	}
	if s.ClientTimeout == 0 {
		s.ClientTimeout = 30 * time.Second
	}
	if s.IdleExit == 0 {
		s.IdleExit = 30 * time.Second
	}
	if s.FlowIdle == 0 {
		s.FlowIdle = 5 * time.Minute
	}
	if s.MaxFlows <= 0 {
		s.MaxFlows = 1024
	}
	if s.DialTimeout <= 0 {
		s.DialTimeout = 10 * time.Second
	}
	if s.JoinTimeout <= 0 {
		s.JoinTimeout = 10 * time.Second
	}
}

// ErrIdleExit is returned by Serve when no client came for IdleExit.
var ErrIdleExit = errors.New("no client")

// NotLoopbackError is a relay asked to listen where more than its own
// pod can reach it.
type NotLoopbackError struct{ Addr string }

func (e *NotLoopbackError) Error() string {
	return fmt.Sprintf("--listen %s: the relay listens on loopback only (127.0.0.1 or [::1]), where port-forward reaches it; anything on the pod's network could use a relay on another address", e.Addr)
}

// Listen listens on addr, which must be a loopback address and port.
func Listen(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w (want 127.0.0.1:PORT)", addr, err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return nil, &NotLoopbackError{Addr: addr}
	}
	return net.Listen("tcp", addr)
}

// NotAllowedError is a HELLO that names a destination outside Allow.
type NotAllowedError struct {
	Target string
	Allow  []Dest
}

func (e *NotAllowedError) Error() string {
	allow := make([]string, len(e.Allow))
	for i, a := range e.Allow {
		allow[i] = a.String()
	}
	only := "nowhere"
	if len(allow) > 0 {
		only = "only to " + strings.Join(allow, ", ")
	}
	return fmt.Sprintf("destination %.64q is not allowed: this relay sends %s (its --allow, fixed when kpf made it)", e.Target, only)
}

// allowed returns the HELLO's destination if Allow has it.
func (s *Server) allowed(target string) (Dest, error) {
	d, err := ParseDest(target)
	if err == nil && slices.Contains(s.Allow, d) {
		return d, nil
	}
	return Dest{}, &NotAllowedError{Target: target, Allow: s.Allow}
}

// Serve accepts streams on ln, which must listen on loopback
// (*NotLoopbackError), until ctx ends (nil) or no stream was open for
// IdleExit (ErrIdleExit). It serves the Routes' listeners (on loopback
// only too) and the Reverses' beside it, and closes them when it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.defaults()
	for _, l := range append([]net.Listener{ln}, s.routeListeners()...) {
		if a, ok := l.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
			ln.Close()
			for _, r := range s.Routes {
				r.Listener.Close()
			}
			for _, r := range s.Reverses {
				r.Listener.Close()
			}
			return &NotLoopbackError{Addr: l.Addr().String()}
		}
	}
	s.lastSeen.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var idle atomic.Bool
	go func() {
		defer ln.Close()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if s.IdleExit > 0 && s.open.Load() == 0 && time.Since(time.Unix(0, s.lastSeen.Load())) > s.IdleExit {
				idle.Store(true)
				return
			}
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, r := range s.Routes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveRoute(ctx, r)
		}()
	}
	// The exposed ports listen on the pod's address: that is their point.
	for _, r := range s.Reverses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveReverse(ctx, r)
		}()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			cancel()
			if idle.Load() {
				return ErrIdleExit
			}
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if err := s.stream(ctx, c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.Log.Warn("stream ended", "client", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// stream serves one stream: the opening, then frames until it ends.
func (s *Server) stream(ctx context.Context, c net.Conn) error {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(s.ClientTimeout))
	w := &frameWriter{w: c}
	if err := readMagic(c); err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			// An answer in this relay's version, which that kpf's reader
			// names (a relay of version 1 closed without one).
			err = fmt.Errorf("kpf speaks relay protocol version %d and this relay version %d: run kpf and the relay image of the same release", ve.Theirs, Version)
			if writeMagic(c) == nil {
				w.write(errorFrame(err))
			}
		}
		return err
	}
	r := NewReader(c)
	hello, err := r.Read()
	var pe *ProtocolError
	if errors.As(err, &pe) {
		// A first frame that breaks the rules is answered, as any other.
		if writeMagic(c) == nil {
			w.write(errorFrame(pe))
		}
		return err
	}
	if err != nil {
		return err
	}
	if err := writeMagic(c); err != nil {
		return err
	}
	// A stream may open with PINGs (Check; a relay's keep-alive without
	// /udp ports): answered, and a client from then on, as after HELLO.
	counted := false
	defer func() {
		if counted {
			s.lastSeen.Store(time.Now().UnixNano())
			s.open.Add(-1)
		}
	}()
	for hello.Type == TypePing {
		if !counted {
			counted = true
			s.open.Add(1)
		}
		if err := w.write(Frame{Type: TypePong, Payload: hello.Payload}); err != nil {
			return err
		}
		if hello, err = s.next(c, r, w); err != nil {
			return err
		}
	}
	switch hello.Type {
	case TypeExpose:
		if !counted {
			counted = true
			s.open.Add(1)
		}
		return s.control(c, r, w)
	case TypeJoin:
		return s.join(ctx, c, hello, w)
	}
	if hello.Type != TypeHello {
		w.write(Frame{Type: TypeError, Payload: []byte("the stream must begin with HELLO")})
		return protoErr("frame type %d before HELLO", hello.Type)
	}
	target, err := s.allowed(string(hello.Payload))
	if err != nil {
		w.write(errorFrame(err))
		return err
	}
	if err := w.write(Frame{Type: TypeOK}); err != nil {
		return err
	}
	// A client from here on: a connection that said nothing (a TCP
	// readiness probe) does not keep the relay alive.
	if !counted {
		counted = true
		s.open.Add(1)
	}
	st := &serverStream{s: s, w: w, target: target, flows: map[uint32]*flow{}}
	s.mu.Lock()
	if s.streams == nil {
		s.streams = map[*serverStream]bool{}
	}
	s.streams[st] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		st.closeAll()
	}()
	go st.sweep()
	for {
		f, err := s.next(c, r, w)
		if err != nil {
			return err
		}
		switch f.Type {
		case TypeData:
			fl, err := st.flow(f.Flow)
			if err != nil {
				s.Log.Warn("flow", "flow", f.Flow, "target", target.String(), "err", err)
				continue
			}
			fl.seen()
			if _, err := fl.c.Write(f.Payload); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				s.Log.Debug("send", "flow", f.Flow, "err", err)
			}
		case TypeClose:
			st.close(f.Flow, false)
		case TypePing:
			if err := w.write(Frame{Type: TypePong, Payload: f.Payload}); err != nil {
				return err
			}
		case TypePong:
		default:
			w.write(Frame{Type: TypeError, Payload: []byte("unexpected frame type")})
			return protoErr("frame type %d from a client", f.Type)
		}
	}
}

// errorFrame is an ERROR frame saying err, cut to a control frame's size.
// next reads a stream's next frame within the client timeout; a frame
// that breaks the protocol is answered with an ERROR frame naming why.
func (s *Server) next(c net.Conn, r *Reader, w *frameWriter) (Frame, error) {
	c.SetReadDeadline(time.Now().Add(s.ClientTimeout))
	f, err := r.Read()
	var pe *ProtocolError
	if errors.As(err, &pe) {
		w.write(errorFrame(pe))
	}
	return f, err
}

func errorFrame(err error) Frame {
	msg := err.Error()
	if len(msg) > maxControl {
		msg = msg[:maxControl-3] + "..."
	}
	return Frame{Type: TypeError, Payload: []byte(msg)}
}

// frameWriter serialises frames onto a stream: each frame in one write.
type frameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// writeRaw writes encoded frames.
func (fw *frameWriter) writeRaw(b []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err := fw.w.Write(b)
	return err
}

func (fw *frameWriter) write(f Frame) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.buf = Append(fw.buf[:0], f)
	_, err := fw.w.Write(fw.buf)
	return err
}

// serverStream is a stream's flows.
type serverStream struct {
	s      *Server
	w      *frameWriter
	target Dest
	mu     sync.Mutex
	flows  map[uint32]*flow
	done   bool
}

type flow struct {
	c    *net.UDPConn
	last atomic.Int64
}

func (f *flow) seen() { f.last.Store(time.Now().UnixNano()) }

// flow returns a flow's socket, opening it on the flow's first datagram
// (a stream that reconnects brings its flows with it). At MaxFlows, it
// first closes a flow of the stream that holds the most. Only the
// stream's reader calls it.
func (st *serverStream) flow(id uint32) (*flow, error) {
	st.mu.Lock()
	fl, ok := st.flows[id]
	done := st.done
	st.mu.Unlock()
	if ok {
		return fl, nil
	}
	if done {
		return nil, net.ErrClosed
	}
	if st.s.flows.Load() >= int64(st.s.MaxFlows) {
		st.s.evict()
	}
	// A name is resolved (the pod's DNS) for each flow, as a client in
	// the pod would on each query.
	addr, err := net.ResolveUDPAddr("udp", st.target.String())
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return nil, err
	}
	fl = &flow{c: c}
	fl.seen()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		c.Close()
		return nil, net.ErrClosed
	}
	st.flows[id] = fl
	st.s.flows.Add(1)
	go st.replies(id, fl)
	return fl, nil
}

// evict closes the least recently used flow of the stream that holds the
// most, and tells its client.
func (s *Server) evict() {
	s.mu.Lock()
	var most *serverStream
	n := 0
	for st := range s.streams {
		st.mu.Lock()
		if len(st.flows) > n {
			most, n = st, len(st.flows)
		}
		st.mu.Unlock()
	}
	s.mu.Unlock()
	if most == nil {
		return
	}
	most.mu.Lock()
	var (
		lru  uint32
		last int64
	)
	for id, fl := range most.flows {
		if l := fl.last.Load(); lru == 0 || l < last {
			lru, last = id, l
		}
	}
	most.mu.Unlock()
	if lru != 0 {
		most.close(lru, true)
	}
}

// datagrams are the buffers that replies are read into.
var datagrams = sync.Pool{New: func() any {
	b := make([]byte, MaxDatagram+1)
	return &b
}}

// replies sends what the target answers on a flow's socket back to kpf.
func (st *serverStream) replies(id uint32, fl *flow) {
	send := func(b []byte) error {
		if len(b) > MaxDatagram {
			return nil // cannot be an IPv4 UDP payload
		}
		fl.seen()
		return st.w.write(Frame{Type: TypeData, Flow: id, Payload: b})
	}
	for {
		err := receive(fl.c, send)
		if errors.Is(err, syscall.ECONNREFUSED) {
			continue // an ICMP port unreachable: the server may come yet
		}
		if err != nil {
			return
		}
	}
}

// close ends a flow; tell says whether kpf must hear of it.
func (st *serverStream) close(id uint32, tell bool) {
	st.mu.Lock()
	fl, ok := st.flows[id]
	delete(st.flows, id)
	st.mu.Unlock()
	if !ok {
		return
	}
	st.s.flows.Add(-1)
	fl.c.Close()
	if tell {
		st.w.write(Frame{Type: TypeClose, Flow: id})
	}
}

// sweep closes flows idle for FlowIdle, until the stream ends.
func (st *serverStream) sweep() {
	t := time.NewTicker(min(st.s.FlowIdle/4, 10*time.Second))
	defer t.Stop()
	for range t.C {
		st.mu.Lock()
		if st.done {
			st.mu.Unlock()
			return
		}
		var idle []uint32
		for id, fl := range st.flows {
			if time.Since(time.Unix(0, fl.last.Load())) > st.s.FlowIdle {
				idle = append(idle, id)
			}
		}
		st.mu.Unlock()
		for _, id := range idle {
			st.close(id, true)
		}
	}
}

func (st *serverStream) closeAll() {
	st.mu.Lock()
	st.done = true
	flows := st.flows
	st.flows = map[uint32]*flow{}
	st.mu.Unlock()
	st.s.flows.Add(-int64(len(flows)))
	for _, fl := range flows {
		fl.c.Close()
	}
}
