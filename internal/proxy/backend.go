package proxy

import (
	"context"
	"time"

	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// backend is a service's or pod's follower: its pods, their tunnel pools,
// shared by every connection and port routed to it.
type backend struct {
	p      *Proxy
	key    string
	f      *follow.Follower
	cancel context.CancelFunc
	users  int       // connections using it; guarded by p.mu
	last   time.Time // when the last one ended
}

// backendIdle is how long a backend no connection uses keeps its watch
// subscription and tunnels.
const backendIdle = 2 * time.Minute

// backend returns the route's backend, starting one if there is none (or
// the last one gave up).
func (p *Proxy) backend(rt Route) (*backend, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := rt.key()
	if b, ok := p.backends[k]; ok {
		select {
		case <-b.f.Done():
			b.cancel()
			delete(p.backends, k)
		default:
			b.users++
			return b, nil
		}
	}
	ctx, cancel := context.WithCancel(p.ctx)
	ns := rt.Namespace
	f, err := follow.New(ctx, follow.Options{
		Namespace:     ns,
		Ref:           rt.Ref,
		PodName:       rt.Pod,
		Selector:      rt.Selector,
		Client:        p.o.Client,
		Balance:       rt.Pod == "", // new connections spread over the ready pods, as the Service does
		ReconnectWait: p.o.ReconnectWait,
		Dial: func(ctx context.Context, pod string) (*tunnel.Conn, error) {
			return p.dial(ctx, ns, pod)
		},
		Log:      p.o.Log.With("backend", k),
		Watches:  p.o.Watches,
		Liveness: p.o.Liveness,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	b := &backend{p: p, key: k, f: f, cancel: cancel, users: 1}
	p.backends[k] = b
	return b, nil
}

func (b *backend) release() {
	b.p.mu.Lock()
	b.users--
	b.last = time.Now()
	b.p.mu.Unlock()
}

// reap closes backends no connection used for backendIdle.
func (p *Proxy) reap(ctx context.Context) {
	t := time.NewTicker(backendIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.mu.Lock()
			for k, b := range p.backends {
				if b.users == 0 && now.Sub(b.last) > backendIdle {
					b.cancel()
					delete(p.backends, k)
				}
			}
			p.mu.Unlock()
		}
	}
}
