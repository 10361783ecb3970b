package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

func (s *Server) routeListeners() []net.Listener {
	out := make([]net.Listener, len(s.Routes))
	for i, r := range s.Routes {
		out[i] = r.Listener
	}
	return out
}

// serveRoute pipes each connection to r's listener to r's destination,
// until ctx ends. A connection is a client while it lasts: the relay does
// not exit under it.
func (s *Server) serveRoute(ctx context.Context, r Route) {
	stop := context.AfterFunc(ctx, func() { r.Listener.Close() })
	defer stop()
	defer r.Listener.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := r.Listener.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.Log.Warn("accept", "listen", r.Listener.Addr().String(), "err", err)
			}
			return
		}
		s.open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				s.lastSeen.Store(time.Now().UnixNano())
				s.open.Add(-1)
			}()
			s.pipe(ctx, c, r.Dest)
		}()
	}
}

// pipe dials d and copies both ways, each side's end of input passed on
// as a half-close, until both are done. A destination that cannot be
// dialled resets the connection (its client sees an error, not an empty
// answer) and is logged.
func (s *Server) pipe(ctx context.Context, c net.Conn, d Dest) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, s.DialTimeout)
	out, err := (&net.Dialer{Control: s.refuseLoopback}).DialContext(dctx, "tcp", d.String())
	cancel()
	if err != nil {
		s.Log.Warn("dial", "destination", d.String(), "err", err)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		return
	}
	defer out.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); out.Close() })
	defer stop()
	errs := make(chan error, 2)
	go func() { errs <- halfCopy(out, c) }()
	go func() { errs <- halfCopy(c, out) }()
	for range 2 {
		if err := <-errs; err != nil {
			// One way failed (a reset): the other cannot finish well.
			c.Close()
			out.Close()
		}
	}
}

// refuseLoopback is a route's dialer's check of the address it dials,
// once resolved: never the relay pod's own loopback (or the unspecified
// address, which reaches it too), whatever name led there. A route to it
// would reach the relay's own listeners, each connection another dial.
func (s *Server) refuseLoopback(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || s.dialLoopback {
		return nil
	}
	if ip := ap.Addr().Unmap(); ip.IsLoopback() || ip.IsUnspecified() {
		return fmt.Errorf("%s is %w", address, ErrLoopback)
	}
	return nil
}

// halfCopy copies src to dst, then closes dst's write side (or dst, if it
// has none): the other side hears the end of input, and may still answer.
func halfCopy(dst, src net.Conn) error {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if werr := cw.CloseWrite(); err == nil && werr != nil && !errors.Is(werr, net.ErrClosed) {
			err = werr
		}
	} else {
		dst.Close()
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Check opens conn as a client of the relay (its opening and a PING) and
// waits for the answer: the relay runs, speaks this kpf's version (a
// *VersionError, or an ERROR of the relay's, if not), and counts conn as
// a client while it stays open. Keep sends a PING on conn every period
// after that, so that the relay of a forward without /udp ports does not
// exit while kpf runs.
func Check(conn net.Conn, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	if err := writeMagic(conn); err != nil {
		return err
	}
	w := &frameWriter{w: conn}
	if err := w.write(Frame{Type: TypePing, Payload: []byte("check")}); err != nil {
		return err
	}
	if err := readMagic(conn); err != nil {
		return err
	}
	f, err := NewReader(conn).Read()
	if err != nil {
		return err
	}
	switch f.Type {
	case TypePong:
		return nil
	case TypeError:
		return &HelloError{Msg: string(f.Payload)}
	}
	return protoErr("frame type %d in answer to PING", f.Type)
}

// Keep pings a conn that passed Check every period, reading the PONGs,
// until ctx ends or the conn fails (its error; a relay that stops
// answering for three periods is one).
func Keep(ctx context.Context, conn net.Conn, period time.Duration) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := &frameWriter{w: conn}
	errs := make(chan error, 1)
	go func() {
		r := NewReader(conn)
		for {
			conn.SetReadDeadline(time.Now().Add(3 * period))
			if _, err := r.Read(); err != nil {
				errs <- err
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
