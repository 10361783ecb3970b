package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// Reverse is a port of kpf expose: the relay listens on it on the pod's
// address (a Service sends its traffic there), announces each connection
// to kpf on the control stream (ACCEPT), and pipes it to the stream kpf
// opens for it (JOIN). The cluster never dials kpf: kpf dials the relay
// through port-forward, for the control stream and for each connection.
type Reverse struct {
	Port     uint16
	Listener net.Listener
}

// pending is an accepted connection waiting for kpf's JOIN.
type pending struct {
	c       net.Conn
	control *frameWriter // the control stream that announced it
	timer   *time.Timer
}

// reverseState is the Server's reverse side.
type reverseState struct {
	mu      sync.Mutex
	control *frameWriter // the newest control stream, nil if none
	pending map[uint32]*pending
	next    uint32
}

// resetClose closes c with a reset: its client sees an error, not an
// empty answer.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// serveReverse accepts r's connections until ctx ends, each announced to
// the current control stream; with no control stream (kpf is not
// connected) a connection is reset at once.
func (s *Server) serveReverse(ctx context.Context, r Reverse) {
	stop := context.AfterFunc(ctx, func() { r.Listener.Close() })
	defer stop()
	defer r.Listener.Close()
	for {
		c, err := r.Listener.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.Log.Warn("accept", "listen", r.Listener.Addr().String(), "err", err)
			}
			return
		}
		s.announce(r.Port, c)
	}
}

func (s *Server) announce(port uint16, c net.Conn) {
	rv := &s.reverse
	rv.mu.Lock()
	w := rv.control
	if w == nil {
		rv.mu.Unlock()
		s.Log.Warn("no kpf holds the exposure: connection reset", "port", port, "from", c.RemoteAddr().String())
		resetClose(c)
		return
	}
	if rv.pending == nil {
		rv.pending = map[uint32]*pending{}
	}
	rv.next++
	if rv.next == 0 {
		rv.next = 1
	}
	id := rv.next
	p := &pending{c: c, control: w}
	rv.pending[id] = p
	p.timer = time.AfterFunc(s.JoinTimeout, func() {
		if p := s.take(id); p != nil {
			s.Log.Warn("kpf did not take the connection in time: reset", "port", port, "after", s.JoinTimeout)
			resetClose(p.c)
		}
	})
	rv.mu.Unlock()
	if err := w.write(Frame{Type: TypeAccept, Flow: id, Payload: []byte(strconv.Itoa(int(port)))}); err != nil {
		if p := s.take(id); p != nil {
			resetClose(p.c)
		}
	}
}

// take removes and returns the connection id waits with, or nil.
func (s *Server) take(id uint32) *pending {
	rv := &s.reverse
	rv.mu.Lock()
	defer rv.mu.Unlock()
	p := rv.pending[id]
	if p != nil {
		delete(rv.pending, id)
		p.timer.Stop()
	}
	return p
}

// control serves a control stream (its EXPOSE read): OK, then ACCEPTs
// out and PINGs answered until it ends. The newest control stream gets
// the connections; those it was told of and did not take are reset when
// it ends.
func (s *Server) control(c net.Conn, r *Reader, w *frameWriter) error {
	if len(s.Reverses) == 0 {
		err := errors.New("this relay exposes no port (no --reverse)")
		w.write(errorFrame(err))
		return err
	}
	rv := &s.reverse
	rv.mu.Lock()
	rv.control = w
	rv.mu.Unlock()
	defer func() {
		rv.mu.Lock()
		if rv.control == w {
			rv.control = nil
		}
		var lost []*pending
		for id, p := range rv.pending {
			if p.control == w {
				delete(rv.pending, id)
				p.timer.Stop()
				lost = append(lost, p)
			}
		}
		rv.mu.Unlock()
		for _, p := range lost {
			resetClose(p.c)
		}
	}()
	if err := w.write(Frame{Type: TypeOK}); err != nil {
		return err
	}
	for {
		f, err := s.next(c, r, w)
		if err != nil {
			return err
		}
		switch f.Type {
		case TypePing:
			if err := w.write(Frame{Type: TypePong, Payload: f.Payload}); err != nil {
				return err
			}
		case TypePong:
		default:
			w.write(Frame{Type: TypeError, Payload: []byte("unexpected frame type on the control stream")})
			return protoErr("frame type %d on the control stream", f.Type)
		}
	}
}

// join pipes the stream c to the connection its JOIN names (OK first),
// or resets that connection if the JOIN says why kpf cannot take it.
func (s *Server) join(ctx context.Context, c net.Conn, f Frame, w *frameWriter) error {
	p := s.take(f.Flow)
	if p == nil {
		err := fmt.Errorf("no connection %d waits (it was taken, or waited too long)", f.Flow)
		w.write(errorFrame(err))
		return err
	}
	if len(f.Payload) > 0 {
		s.Log.Warn("kpf could not take the connection: reset", "why", string(f.Payload))
		resetClose(p.c)
		return nil
	}
	if err := w.write(Frame{Type: TypeOK}); err != nil {
		resetClose(p.c)
		return err
	}
	c.SetReadDeadline(time.Time{})
	s.open.Add(1)
	defer func() {
		s.lastSeen.Store(time.Now().UnixNano())
		s.open.Add(-1)
	}()
	joined(ctx, c, p.c, f.Flow)
	return nil
}

// joined carries an exposed connection on its stream: kpf's bytes as they
// are (kpf's end of input is the stream's, which port-forward passes on
// to the relay as a half-close), the cluster client's bytes as DATA frames
// and its end of input as CLOSE (port-forward ends the whole stream when
// the pod's side ends its output, so the relay never half-closes it).
func joined(ctx context.Context, stream, conn net.Conn, id uint32) {
	defer stream.Close()
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { stream.Close(); conn.Close() })
	defer stop()
	errs := make(chan error, 2)
	go func() { errs <- halfCopy(conn, stream) }()
	go func() { errs <- framesOut(&frameWriter{w: stream}, conn, id) }()
	for range 2 {
		if err := <-errs; err != nil {
			stream.Close()
			conn.Close()
		}
	}
}

// framesOut sends what src reads as DATA frames of flow id, and CLOSE at
// its end.
func framesOut(w *frameWriter, src io.Reader, id uint32) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := w.write(Frame{Type: TypeData, Flow: id, Payload: buf[:n]}); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return w.write(Frame{Type: TypeClose, Flow: id})
		}
		if err != nil {
			return err
		}
	}
}

// framesIn writes the DATA frames of src to dst, and closes dst's write
// side at CLOSE (or dst, if it has none).
func framesIn(dst net.Conn, src io.Reader) error {
	r := NewReader(src)
	for {
		f, err := r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // a stream cut before CLOSE
			}
			return err
		}
		switch f.Type {
		case TypeData:
			if _, err := dst.Write(f.Payload); err != nil {
				return err
			}
		case TypeClose:
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				return cw.CloseWrite()
			}
			return dst.Close()
		default:
			return protoErr("frame type %d on a joined stream", f.Type)
		}
	}
}

// Expose opens conn as kpf's control stream of an exposure (its opening
// and EXPOSE) and waits, for at most timeout, for the relay's OK.
func Expose(conn net.Conn, timeout time.Duration) error {
	return ask(conn, Frame{Type: TypeExpose}, timeout)
}

// Join opens conn as the stream of connection id (announced by ACCEPT)
// and waits for the relay's OK; then conn carries the connection's bytes.
// A refusal (kpf cannot reach its local side) resets the connection
// instead: the relay answers nothing.
func Join(conn net.Conn, id uint32, refusal string, timeout time.Duration) error {
	if refusal != "" {
		if len(refusal) > maxControl {
			refusal = refusal[:maxControl]
		}
		if err := writeMagic(conn); err != nil {
			return err
		}
		return (&frameWriter{w: conn}).write(Frame{Type: TypeJoin, Flow: id, Payload: []byte(refusal)})
	}
	return ask(conn, Frame{Type: TypeJoin, Flow: id}, timeout)
}

// ask sends the opening and f, and reads the relay's opening and OK.
func ask(conn net.Conn, f Frame, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	if err := writeMagic(conn); err != nil {
		return err
	}
	if err := (&frameWriter{w: conn}).write(f); err != nil {
		return err
	}
	if err := readMagic(conn); err != nil {
		return err
	}
	var small [headerLen + maxControl]byte
	a, err := (&Reader{r: conn, buf: small[:]}).Read()
	if err != nil {
		return err
	}
	switch a.Type {
	case TypeOK:
		return nil
	case TypeError:
		return &HelloError{Msg: string(a.Payload)}
	}
	return protoErr("frame type %d in answer to type %d", a.Type, f.Type)
}

// Control reads a control stream that passed Expose, calling accept for
// each connection the relay announces (it must not block), and sends a
// PING every period, until ctx ends or the stream fails (a relay silent
// for three periods is a failure).
func Control(ctx context.Context, conn net.Conn, period time.Duration, accept func(id uint32, port uint16)) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := &frameWriter{w: conn}
	errs := make(chan error, 1)
	go func() {
		var small [headerLen + maxControl]byte
		r := &Reader{r: conn, buf: small[:]}
		for {
			conn.SetReadDeadline(time.Now().Add(3 * period))
			f, err := r.Read()
			if err != nil {
				errs <- err
				return
			}
			switch f.Type {
			case TypeAccept:
				p, err := strconv.ParseUint(string(f.Payload), 10, 16)
				if err != nil {
					errs <- protoErr("ACCEPT of port %q", f.Payload)
					return
				}
				accept(f.Flow, uint16(p))
			case TypeError:
				errs <- &HelloError{Msg: string(f.Payload)}
				return
			}
		}
	}()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case err := <-errs:
			conn.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the relay closed the control stream")
			}
			return err
		case <-t.C:
			if err := w.write(Frame{Type: TypePing}); err != nil {
				conn.Close()
				<-errs
				return err
			}
		}
	}
}

// Exposer is kpf's side of an exposure: it holds a control stream to the
// relay (redialled when lost) and, for each connection the relay
// announces, dials the local side and opens the connection's own stream,
// so that connections are isolated: a slow one stalls no other.
type Exposer struct {
	// Dial opens a stream to the relay's port (through port-forward).
	Dial func(ctx context.Context) (net.Conn, error)
	// Local is the local address an exposed port's connections go to.
	Local func(port uint16) (string, bool)
	Log   *slog.Logger
	// Ping is the control stream's keep-alive period. Default 10 s.
	Ping time.Duration
	// OnControl, if set, hears of each control stream the relay accepted
	// (nil) or each failure to hold one.
	OnControl func(err error)

	wg sync.WaitGroup
}

// Serve holds the exposure until ctx ends, then waits for its
// connections to end (they end with ctx).
func (e *Exposer) Serve(ctx context.Context) {
	defer e.wg.Wait()
	if e.Ping <= 0 {
		e.Ping = 10 * time.Second
	}
	wait := 250 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := e.Dial(ctx)
		if err == nil {
			if err = Expose(conn, 5*time.Second); err != nil {
				conn.Close()
			}
		}
		if err == nil {
			wait = 250 * time.Millisecond
			if e.OnControl != nil {
				e.OnControl(nil)
			}
			err = Control(ctx, conn, e.Ping, func(id uint32, port uint16) {
				e.wg.Add(1)
				go func() {
					defer e.wg.Done()
					e.take(ctx, id, port)
				}()
			})
		}
		if ctx.Err() != nil {
			return
		}
		if e.OnControl != nil {
			e.OnControl(err)
		}
		e.Log.Debug("exposure control stream lost; dialling again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// take carries connection id of an exposed port to its local side.
func (e *Exposer) take(ctx context.Context, id uint32, port uint16) {
	conn, err := e.Dial(ctx)
	if err != nil {
		e.Log.Warn("a stream for an exposed connection", "port", port, "err", err)
		return // the relay resets it when it waited too long
	}
	addr, ok := e.Local(port)
	var local net.Conn
	if !ok {
		err = fmt.Errorf("port %d is not exposed", port)
	} else {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		local, err = d.DialContext(dctx, "tcp", addr)
		cancel()
	}
	if err != nil {
		e.Log.Warn("the local side of an exposed port", "port", port, "local", addr, "err", err)
		Join(conn, id, err.Error(), 5*time.Second)
		conn.Close()
		return
	}
	if err := Join(conn, id, "", 5*time.Second); err != nil {
		e.Log.Warn("join an exposed connection", "port", port, "err", err)
		conn.Close()
		local.Close()
		return
	}
	defer conn.Close()
	defer local.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close(); local.Close() })
	defer stop()
	errs := make(chan error, 2)
	go func() { errs <- halfCopy(conn, local) }()
	go func() { errs <- framesIn(local, conn) }()
	for range 2 {
		if err := <-errs; err != nil {
			conn.Close()
			local.Close()
		}
	}
}
