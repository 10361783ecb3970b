// Package forward runs a forward: local listeners, and for each accepted
// connection a tunnel to the target pod. It prints what kubectl
// port-forward prints, so that scripts that parse kubectl keep working.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// Log attribute keys.
const (
	keyLocal  = "local"
	keyRemote = "remote"
	keyClient = "client"
	keyErr    = "err"
)

// Listener is one local address and port of a forward.
type Listener struct {
	net.Listener
	Port portspec.Resolved // Local is the port actually bound
}

// ErrNoListener is wrapped when no requested port could be bound.
var ErrNoListener = errors.New("unable to listen on any of the requested ports")

// Listen binds every port on every address with kubectl's rules: a port
// succeeds if its "localhost" addresses do not all fail and no explicit
// address fails; the forward goes on if any port succeeds. A port asked as
// 0 gets a free port on its first address and the same on the others.
// It prints "Forwarding from ..." to out and problems to errOut.
//
// unbound are the addresses of "localhost" a port listens without (one
// failed, the other did): kubectl says nothing of them, and a client that
// resolves localhost to the missing one finds nothing there, or another
// process. Each is said on errOut as a warning, and returned for a
// forward's status.
func Listen(addrs []portspec.Address, ports []portspec.Resolved, out, errOut io.Writer) (ls []*Listener, unbound []*UnboundError, err error) {
	var all []*Listener
	var errs []error
	for _, p := range ports {
		ls, ub, err := listenPort(addrs, p, out, errOut)
		if err != nil {
			fmt.Fprintf(errOut, "Unable to listen on port %d: %v\n", p.Local, err)
			errs = append(errs, err)
			continue
		}
		all = append(all, ls...)
		unbound = append(unbound, ub...)
	}
	if len(all) == 0 {
		return nil, nil, &ListenError{fmt.Sprintf("%v: %s", ErrNoListener, describe(ports)), errs}
	}
	return all, unbound, nil
}

// UnboundError is an address of "localhost" that a port could not be
// bound on while the other was: the port listens on the other only.
type UnboundError struct {
	Addr string // IP:PORT not bound
	Err  error  // the bind's error, as explainListen says it
	// cause is the short reason (the system's word), fix what to do.
	cause, fix string
}

func (e *UnboundError) Error() string {
	if e.fix == "" {
		return fmt.Sprintf("not listening on %s: %s", e.Addr, e.cause)
	}
	return fmt.Sprintf("not listening on %s: %s (%s)", e.Addr, e.cause, e.fix)
}

func (e *UnboundError) Unwrap() error { return e.Err }

// ListenError is ErrNoListener, with the reason of each port (what
// errors.Is sees, the message being kubectl's: kpf forward prints each
// reason as it happens, as kubectl does).
type ListenError struct {
	msg  string
	errs []error
}

func (e *ListenError) Error() string   { return e.msg }
func (e *ListenError) Unwrap() []error { return append([]error{ErrNoListener}, e.errs...) }

// Reasons are why each port could not be bound, for where the lines
// printed meanwhile are not seen (a forward's status in kpf up and the
// daemon).
func (e *ListenError) Reasons() []error { return e.errs }

func listenPort(addrs []portspec.Address, p portspec.Resolved, out, errOut io.Writer) ([]*Listener, []*UnboundError, error) {
	var ls []*Listener
	var errs []error
	var unbound []*UnboundError
	localhostOK, localhostFailed, explicitFailed := 0, 0, 0
	for _, a := range addrs {
		// Keep-alives find peers that vanished without a word, which on a
		// loopback address cannot happen: there they are four system calls
		// per accepted connection for nothing.
		lc := net.ListenConfig{}
		if a.Loopback() {
			lc.KeepAlive = -1
		}
		ln, err := lc.Listen(context.Background(), a.Network(), net.JoinHostPort(a.IP.String(), strconv.Itoa(int(p.Local))))
		if err != nil {
			errs = append(errs, explainListen(err, a.IP, p))
			if a.FromLocalhost {
				cause := err.Error()
				var errno syscall.Errno
				if errors.As(err, &errno) {
					cause = errno.Error()
				}
				unbound = append(unbound, &UnboundError{Addr: net.JoinHostPort(a.IP.String(), strconv.Itoa(int(p.Local))), Err: errs[len(errs)-1],
					cause: cause, fix: listenFix(err, a.IP, p)})
				localhostFailed++
			} else {
				explicitFailed++
			}
			continue
		}
		if a.FromLocalhost {
			localhostOK++
		}
		bound := uint16(ln.Addr().(*net.TCPAddr).Port)
		if p.Local == 0 {
			p.Local = bound // the other addresses take the same port
		}
		if !a.Loopback() {
			fmt.Fprintf(errOut, "Warning: listening on %s: this forward is reachable from the network, not only from this machine\n", net.JoinHostPort(a.IP.String(), strconv.Itoa(int(bound))))
		}
		fmt.Fprintf(out, "Forwarding from %s -> %d\n", net.JoinHostPort(a.IP.String(), strconv.Itoa(int(bound))), p.Remote)
		ls = append(ls, &Listener{Listener: ln, Port: portspec.Resolved{Local: bound, Remote: p.Remote}})
	}
	if (localhostOK == 0 && localhostFailed > 0) || explicitFailed > 0 {
		for _, l := range ls {
			l.Close()
		}
		return nil, nil, errors.Join(errs...)
	}
	for _, u := range unbound {
		// Where the port does listen: the same port, on the other
		// address of localhost.
		var on []string
		for _, l := range ls {
			on = append(on, l.Addr().String())
		}
		fmt.Fprintf(errOut, "Warning: %v; the port listens on %s only\n", u, strings.Join(on, ", "))
	}
	return ls, unbound, nil
}

// explainListen says what to do about a failed bind.
func explainListen(err error, ip netip.Addr, p portspec.Resolved) error {
	if fix := listenFix(err, ip, p); fix != "" {
		return fmt.Errorf("%w (%s)", err, fix)
	}
	return err
}

// listenFix is what to do about a failed bind, if kpf knows.
func listenFix(err error, ip netip.Addr, p portspec.Resolved) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Sprintf("another process holds port %d; pick another local port, or use :%d for a free one", p.Local, p.Remote)
	case errors.Is(err, syscall.EACCES):
		return fmt.Sprintf("ports below 1024 need privileges; pick a local port of 1024 or more, e.g. %d:%d", 8000+int(p.Remote)%1000, p.Remote)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf("%s is not an address of this machine; see --address", ip)
	}
	return ""
}

func describe(ports []portspec.Resolved) string {
	s := "["
	for i, p := range ports {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%d:%d", p.Local, p.Remote)
	}
	return s + "]"
}

// ErrIdle is returned when no connection was open for IdleTimeout.
var ErrIdle = errors.New("idle timeout")

// Backend carries connections to the target (follow.Follower, or a fake in
// tests).
type Backend interface {
	Forward(ctx context.Context, local net.Conn, port uint16, m *meter.Meter) (tunnel.Stats, error)
	// Done is closed when the forward must end; Err says why.
	Done() <-chan struct{}
	Err() error
}

// Options tune Serve.
type Options struct {
	// IdleTimeout ends the forward after this long with no open
	// connection; 0 never.
	IdleTimeout time.Duration
	// Counters, if set, gives the counters of a remote port, kept up to
	// date as connections come and go.
	Counters func(remote uint16) *Counters
	// Ended, if set, hears of each connection when it ends.
	Ended func(Ended)
	// Tap, if set, gives each connection a tap that sees its bytes (the
	// HTTP log), closed when the connection ends; peer is the client's
	// address, pod says which pod carries it.
	Tap func(peer string, pod func() string) ConnTap
}

// ConnTap watches one connection's bytes.
type ConnTap interface {
	meter.Tap
	Close()
}

// Ended is a connection that ended.
type Ended struct {
	Start       time.Time
	Local, Peer string // the address kpf listened on, and the client's
	Remote      uint16
	Stats       tunnel.Stats
	Err         error
	// FirstByte is how long the first byte from the pod took to reach the
	// client; 0 if none did.
	FirstByte time.Duration
}

// Counters are a forward's connection and byte counts. Bytes are counted
// as they move.
type Counters struct {
	Open, Total, Failed atomic.Int64
	Bytes               meter.Meter
}

// meter is a new connection's meter, counting into c's.
func (c *Counters) meter() *meter.Meter {
	if c == nil {
		return nil
	}
	return c.Bytes.Child()
}

func (c *Counters) start() {
	if c != nil {
		c.Open.Add(1)
		c.Total.Add(1)
	}
}

func (c *Counters) end(err error) {
	if c == nil {
		return
	}
	c.Open.Add(-1)
	if err != nil {
		c.Failed.Add(1)
	}
}

// Serve accepts connections on every listener and forwards each through
// the backend, until ctx ends (nil), the backend gives up (its Err) or the
// forward was idle for IdleTimeout (ErrIdle). A failed connection is logged
// and closed; the others and the listeners carry on. It closes the
// listeners and waits for its connections.
func Serve(ctx context.Context, listeners []*Listener, tun Backend, out io.Writer, log *slog.Logger, opts Options) error {
	stopped := ctx // done when the forward is stopped (Ctrl-C, kpf down), not lost
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := newIdleTimer(opts.IdleTimeout)
	defer idle.stop()
	var wg sync.WaitGroup
	var mu sync.Mutex // serialises lines on out
	conns := map[net.Conn]struct{}{}
	var connsMu sync.Mutex
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
						log.Error("accept", keyLocal, l.Addr().String(), keyErr, err)
					}
					return
				}
				mu.Lock()
				fmt.Fprintf(out, "Handling connection for %d\n", l.Port.Local)
				mu.Unlock()
				connsMu.Lock()
				conns[c] = struct{}{}
				connsMu.Unlock()
				idle.busy()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() {
						connsMu.Lock()
						delete(conns, c)
						connsMu.Unlock()
						idle.free()
					}()
					var counters *Counters
					if opts.Counters != nil {
						counters = opts.Counters(l.Port.Remote)
					}
					counters.start()
					start := time.Now()
					m := counters.meter()
					if opts.Tap != nil {
						if m == nil {
							m = &meter.Meter{}
						}
						tap := opts.Tap(c.RemoteAddr().String(), m.Pod)
						m.SetTap(tap)
						defer tap.Close()
					}
					st, err := tun.Forward(ctx, c, l.Port.Remote, m)
					if err != nil {
						tunnel.Abort(c) // a data path that has not closed it yet
					} else {
						c.Close()
					}
					counters.end(err)
					if opts.Ended != nil {
						e := Ended{Start: start, Local: l.Addr().String(), Peer: c.RemoteAddr().String(), Remote: l.Port.Remote, Stats: st, Err: err}
						if first := m.FirstIn(); !first.IsZero() {
							e.FirstByte = first.Sub(start)
						}
						opts.Ended(e)
					}
					if err != nil && stopped.Err() != nil {
						// Cut by stopping the forward: not a failure to
						// report (Ctrl-C printed an error per open one).
						log.Debug("connection closed: the forward stopped", keyClient, c.RemoteAddr().String(), keyLocal, l.Port.Local, keyErr, err)
						return
					}
					if err != nil {
						log.Error("connection failed", keyClient, c.RemoteAddr().String(), keyLocal, l.Port.Local, keyRemote, l.Port.Remote, keyErr, err)
						return
					}
					log.Debug("connection closed", keyClient, c.RemoteAddr().String(), keyLocal, l.Port.Local, "bytesIn", st.In, "bytesOut", st.Out)
				}()
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case <-tun.Done():
		err = tun.Err()
	case <-idle.fired:
		err = fmt.Errorf("%w: no connection for %s", ErrIdle, opts.IdleTimeout)
	}
	cancel() // connections waiting for a pod end now
	for _, l := range listeners {
		l.Close()
	}
	connsMu.Lock()
	for c := range conns {
		c.Close()
	}
	connsMu.Unlock()
	wg.Wait()
	return err
}

// idleTimer fires after a stretch with no open connection.
type idleTimer struct {
	d     time.Duration
	mu    sync.Mutex
	open  int
	t     *time.Timer
	fired chan struct{}
}

func newIdleTimer(d time.Duration) *idleTimer {
	it := &idleTimer{d: d, fired: make(chan struct{})}
	if d > 0 {
		it.t = time.AfterFunc(d, func() { close(it.fired) })
	}
	return it
}

func (it *idleTimer) busy() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.open++
	if it.t != nil {
		it.t.Stop()
	}
}

func (it *idleTimer) free() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.open--
	if it.t != nil && it.open == 0 {
		it.t.Reset(it.d)
	}
}

func (it *idleTimer) stop() {
	if it.t != nil {
		it.t.Stop()
	}
}
