// Package tunnelpool keeps a pod's tunnels: one per local connection (the
// reason is on Pool), spares dialled ahead, tunnels taken back for reuse,
// and a sentinel that says when the pod can no longer be reached. It
// knows nothing of what a tunnel carries.
package tunnelpool

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultMaxTunnels bounds a pool's tunnels. Past the bound, connections
// share the least busy tunnels, and a reader that stalls holds back only
// the connections on its own tunnel. Measured with make bench at 1,000
// concurrent connections: 1,000 tunnels (one TLS connection each through
// the API server) halved the aggregate throughput and cost ~100 KiB per
// idle connection; 64 shared tunnels did better on both, on either data
// path. (On client-go's, each tunnel that has carried a stream also holds
// spdystream's ~400 KiB zlib writer for SPDY headers; kpf's keeps none.)
const DefaultMaxTunnels = 64

// maxDialling bounds the tunnels that connections dial at once; while
// that many dials are under way, a new connection shares the least busy
// open tunnel, or joins the dial with the fewest connections waiting,
// instead of dialling one more. Each dial costs a TLS handshake and an
// upgrade through the API server to the kubelet (~8 ms of CPU across the
// processes on the sandbox, most of it on the API server and the node):
// a burst of 100 connections dialled ~55 tunnels, and the dials, not the
// data, set the burst's pace (c100 at 300 MiB/s; 460 once warm). A few
// connections opened together still get a tunnel each.
const maxDialling = 4

// Tunnel is what a pool holds: a tunnel says when it is done, and closes.
type Tunnel interface {
	comparable
	Done() <-chan struct{}
	Close() error
}

// Pool gives each local connection a tunnel of its own.
//
// The kubelet's SPDY library (moby/spdystream) has no flow control: every
// stream of a connection is fed by one read loop that blocks until the
// stream's reader takes the data. One local client that stops reading would
// freeze every other connection on a shared tunnel, which is what happens to
// kubectl. With a tunnel per connection, a slow reader holds back only its
// own tunnel, through TCP back-pressure, and memory stays bounded.
//
// Dialling costs a TLS handshake and an upgrade, so the pool keeps idle
// tunnels ready and takes back the tunnels of finished connections. Past
// MaxTunnels, or in a burst (maxDialling dials under way), connections
// share the least busy tunnel.
//
// A forward nobody has used yet holds one tunnel, the sentinel, which
// carries its first connection; the spare is dialled then. A file of 200
// forwards so dials 200 tunnels to start, not 400, and keeps half the
// connections open through the API server to the kubelets (measured on
// the sandbox: ready in less time, and less memory per forward; see
// docs/benchmarks.md).
type Pool[T Tunnel] struct {
	dial func(ctx context.Context) (T, error)
	ctx  context.Context

	// Spare is how many idle tunnels are kept dialled ahead of need.
	Spare int
	// MaxIdle bounds the idle tunnels kept for reuse.
	MaxIdle int
	// MaxTunnels bounds the open tunnels; 0 means no bound.
	MaxTunnels int
	// Opened is when the pool's first tunnel was dialled.
	Opened time.Time

	mu       sync.Mutex
	sentinel T
	idle     []T
	busy     map[T]int
	dialling int
	pending  []*pendingDial[T] // the dials of Acquire (not refill's)
	closed   bool
	lost     chan struct{}
	lostOnce sync.Once
}

// New starts a pool with one tunnel dialled by dial, which it keeps as
// a sentinel: when that tunnel closes and a new one cannot be dialled, the
// pod is gone and Done is closed.
func New[T Tunnel](ctx context.Context, dial func(ctx context.Context) (T, error)) (*Pool[T], error) {
	p := &Pool[T]{dial: dial, ctx: ctx, Spare: 1, MaxIdle: 8, MaxTunnels: DefaultMaxTunnels, busy: map[T]int{}, lost: make(chan struct{})}
	sentinel, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	p.Opened = time.Now()
	p.sentinel = sentinel
	go p.watch(sentinel)
	return p, nil
}

// watch keeps a sentinel tunnel open and closes Done when the pod can no
// longer be reached.
func (p *Pool[T]) watch(sentinel T) {
	for {
		select {
		case <-p.ctx.Done():
			sentinel.Close()
			return
		case <-sentinel.Done():
		}
		if p.isClosed() {
			return
		}
		// Closed under us: idle timeouts close tunnels too, so only a
		// failed redial means the pod is gone.
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		next, err := p.dial(ctx)
		cancel()
		if err != nil {
			p.lostOnce.Do(func() { close(p.lost) })
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			next.Close()
			return
		}
		p.sentinel, sentinel = next, next
		p.mu.Unlock()
	}
}

// Done is closed when the pod can no longer be reached, or the pool is
// closed.
func (p *Pool[T]) Done() <-chan struct{} { return p.lost }

func (p *Pool[T]) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Stale is a tunnel that can say it may be dead without knowing it yet
// (tunnel.Conn: unheard from for longer than its pings allow, as after
// kpf was stopped or the machine slept).
type Stale interface {
	Stale() bool
}

func isStale[T Tunnel](c T) bool {
	s, ok := any(c).(Stale)
	return ok && s.Stale()
}

// Acquire returns a tunnel for one connection; give it back with Release.
//
// An idle tunnel (a spare, the sentinel) that is stale is closed, not
// used: after a pause long enough for a proxy to cut it, the first new
// connection goes on a fresh tunnel instead of one that fails it.
func (p *Pool[T]) Acquire() (T, error) {
	var stale []T
	defer func() {
		for _, c := range stale {
			c.Close() // the sentinel's watch redials it
		}
	}()
	p.mu.Lock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if isDone(c) {
			continue
		}
		if isStale(c) {
			stale = append(stale, c)
			continue
		}
		p.busy[c]++
		p.mu.Unlock()
		p.refill()
		return c, nil
	}
	if s := p.sentinel; s != zero[T]() && p.busy[s] == 0 && !isDone(s) && isStale(s) {
		stale = append(stale, s)
	} else if s != zero[T]() && p.busy[s] == 0 && !isDone(s) {
		// The first connection (or the first after a quiet spell with no
		// idle tunnel left) takes the sentinel, without a dial; a spare
		// is dialled for the next.
		p.busy[s] = 1
		p.mu.Unlock()
		p.refill()
		return s, nil
	}
	atCap := p.MaxTunnels > 0 && len(p.busy)+p.dialling >= p.MaxTunnels
	if atCap || len(p.pending) >= maxDialling {
		// Share: the least busy of the open tunnels and of the dials under
		// way, which a connection can join.
		var least T
		for c, n := range p.busy {
			if !isDone(c) && (least == zero[T]() || n < p.busy[least]) {
				least = c
			}
		}
		var join *pendingDial[T]
		for _, d := range p.pending {
			if join == nil || d.conns < join.conns {
				join = d
			}
		}
		switch {
		case join != nil && (least == zero[T]() || join.conns < p.busy[least]):
			join.conns++
			p.mu.Unlock()
			<-join.done
			if join.err != nil {
				return zero[T](), join.err
			}
			return join.c, nil
		case least != zero[T]():
			p.busy[least]++
			p.mu.Unlock()
			return least, nil
		}
	}
	d := &pendingDial[T]{conns: 1, done: make(chan struct{})}
	p.pending = append(p.pending, d)
	p.dialling++
	p.mu.Unlock()
	c, err := p.dial(p.ctx)
	p.mu.Lock()
	p.dialling--
	for i, x := range p.pending {
		if x == d {
			p.pending = append(p.pending[:i], p.pending[i+1:]...)
			break
		}
	}
	d.c, d.err = c, err
	if err == nil {
		p.busy[c] += d.conns
	}
	p.mu.Unlock()
	close(d.done)
	return c, err
}

// pendingDial is a tunnel being dialled for a connection, which others
// may join in a burst.
type pendingDial[T Tunnel] struct {
	conns int // connections that will use it
	done  chan struct{}
	c     T
	err   error
}

// Release gives back a tunnel taken with Acquire.
func (p *Pool[T]) Release(c T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy[c]--
	if p.busy[c] > 0 {
		return
	}
	delete(p.busy, c)
	if c == p.sentinel {
		return // it stays the sentinel, and free for the next connection
	}
	if p.closed || isDone(c) || len(p.idle) >= p.MaxIdle {
		c.Close()
		return
	}
	p.idle = append(p.idle, c)
}

// refill dials idle tunnels in the background up to Spare.
func (p *Pool[T]) refill() {
	p.mu.Lock()
	need := p.Spare - len(p.idle) - p.dialling
	if p.closed || need <= 0 {
		p.mu.Unlock()
		return
	}
	p.dialling += need
	p.mu.Unlock()
	for range need {
		go func() {
			c, err := p.dial(p.ctx)
			p.mu.Lock()
			defer p.mu.Unlock()
			p.dialling--
			if err != nil {
				return // the next connection dials for itself, and reports
			}
			if p.closed {
				c.Close()
				return
			}
			p.idle = append(p.idle, c)
		}()
	}
}

// Close closes every tunnel.
func (p *Pool[T]) Close() error {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	if p.sentinel != zero[T]() {
		idle = append(idle, p.sentinel)
	}
	p.idle = nil
	var busy []T
	for c := range p.busy {
		if c != p.sentinel {
			busy = append(busy, c)
		}
	}
	p.mu.Unlock()
	p.lostOnce.Do(func() { close(p.lost) })
	var errs []error
	for _, c := range append(idle, busy...) {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// zero is no tunnel.
func zero[T Tunnel]() (z T) { return z }

func isDone[T Tunnel](c T) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}
