package tunnel

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// DefaultMaxTunnels bounds a pool's tunnels. Past the bound, connections
// share the least busy tunnels, and a reader that stalls holds back only
// the connections on its own tunnel.
const DefaultMaxTunnels = 64

// MaxTunnels is the bound for a data path. On client-go's, each tunnel that
// has carried a stream holds spdystream's zlib writer for SPDY headers
// (about 400 KiB at BestCompression): hundreds of MiB at 1,000 tunnels.
// kpf's own path keeps no compressor, and a tunnel costs a TLS connection
// and a 16 KiB read buffer.
func MaxTunnels(path DataPath) int {
	// Measured with make bench at 1,000 concurrent connections: 1,000
	// tunnels (one TLS connection each through the API server) halved the
	// aggregate throughput and cost ~100 KiB per idle connection; 64 shared
	// tunnels did better on both, on either data path.
	_ = path
	return DefaultMaxTunnels
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
// MaxTunnels, connections share the least busy tunnel.
type Pool struct {
	dial func(ctx context.Context) (*Conn, error)
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
	sentinel *Conn
	idle     []*Conn
	busy     map[*Conn]int
	dialling int
	closed   bool
	lost     chan struct{}
	lostOnce sync.Once
}

// NewPool starts a pool with one tunnel dialled by dial, which it keeps as
// a sentinel: when that tunnel closes and a new one cannot be dialled, the
// pod is gone and Done is closed.
func NewPool(ctx context.Context, dial func(ctx context.Context) (*Conn, error)) (*Pool, error) {
	p := &Pool{dial: dial, ctx: ctx, Spare: 1, MaxIdle: 8, MaxTunnels: DefaultMaxTunnels, busy: map[*Conn]int{}, lost: make(chan struct{})}
	sentinel, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	p.Opened = time.Now()
	p.sentinel = sentinel
	go p.watch(sentinel)
	p.refill()
	return p, nil
}

// watch keeps a sentinel tunnel open and closes Done when the pod can no
// longer be reached.
func (p *Pool) watch(sentinel *Conn) {
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
func (p *Pool) Done() <-chan struct{} { return p.lost }

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Forward carries one local connection on a tunnel of its own.
func (p *Pool) Forward(local net.Conn, port uint16) (Stats, error) {
	c, err := p.Acquire()
	if err != nil {
		local.Close()
		return Stats{}, err
	}
	st, ferr := c.Forward(local, port)
	p.Release(c)
	return st, ferr
}

// Acquire returns a tunnel for one connection; give it back with Release.
func (p *Pool) Acquire() (*Conn, error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if isDone(c) {
			continue
		}
		p.busy[c]++
		p.mu.Unlock()
		p.refill()
		return c, nil
	}
	if p.MaxTunnels > 0 && len(p.busy)+p.dialling >= p.MaxTunnels {
		var least *Conn
		for c, n := range p.busy {
			if !isDone(c) && (least == nil || n < p.busy[least]) {
				least = c
			}
		}
		if least != nil {
			p.busy[least]++
			p.mu.Unlock()
			return least, nil
		}
	}
	p.dialling++
	p.mu.Unlock()
	c, err := p.dial(p.ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialling--
	if err != nil {
		return nil, err
	}
	p.busy[c]++
	return c, nil
}

// Release gives back a tunnel taken with Acquire.
func (p *Pool) Release(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy[c]--
	if p.busy[c] > 0 {
		return
	}
	delete(p.busy, c)
	if p.closed || isDone(c) || len(p.idle) >= p.MaxIdle {
		c.Close()
		return
	}
	p.idle = append(p.idle, c)
}

// refill dials idle tunnels in the background up to Spare.
func (p *Pool) refill() {
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
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	if p.sentinel != nil {
		idle = append(idle, p.sentinel)
	}
	p.idle = nil
	var busy []*Conn
	for c := range p.busy {
		busy = append(busy, c)
	}
	p.mu.Unlock()
	p.lostOnce.Do(func() { close(p.lost) })
	var errs []error
	for _, c := range append(idle, busy...) {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func isDone(c *Conn) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// SetMaxTunnels changes the bound on open tunnels.
func (p *Pool) SetMaxTunnels(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.MaxTunnels = n
}
