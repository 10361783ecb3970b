package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// probe asks the API server's /livez every period while anyone listens:
// one probe per connection, however many forwards and proxies subscribe
// (200 forwards of one context used to send 40 requests a second).
//
// Any answer, whatever its status, is alive: an authenticating proxy in
// front of the API server may answer 401 or 403, a busy server 429 or
// 500, and each of them carried the request and its answer, which is all
// a tunnel needs. Only silence (no answer within the period) counts, and
// silence for bound is death: subscribers drop their tunnels (busy ones
// too; they hang until TCP gives up otherwise) and hear again when the
// API server answers.
type probe struct {
	url           string
	hc            *http.Client // the connection's, with its credentials
	period, bound time.Duration
	log           *slog.Logger
	now           func() time.Time // time.Now; a test's clock that jumps

	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	cancel context.CancelFunc // of the running probe; nil when none runs
	done   chan struct{}      // closed when it has stopped
}

type subscriber struct {
	on func(silent bool, quiet time.Duration)
}

func newProbe(cfg *rest.Config, hc *http.Client, period, bound time.Duration, log *slog.Logger) (*probe, error) {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", cfg.Host, err)
	}
	if u.Scheme == "" {
		u.Scheme = "https"
	}
	// A path in the server's address is a prefix (a proxy's), as client-go
	// reads it.
	u.Path = strings.TrimRight(u.Path, "/") + "/livez"
	u.RawQuery, u.Fragment = "", ""
	return &probe{url: u.String(), hc: hc, period: period, bound: bound, log: log, now: time.Now, subs: map[*subscriber]struct{}{}}, nil
}

// Subscribe implements follow.Liveness: the first subscriber starts the
// probe, the last one's unsubscribe stops it and waits until it has.
func (p *probe) Subscribe(on func(silent bool, quiet time.Duration)) (unsubscribe func()) {
	s := &subscriber{on: on}
	p.mu.Lock()
	p.subs[s] = struct{}{}
	if p.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		p.cancel, p.done = cancel, done
		go p.run(ctx, done)
	}
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			delete(p.subs, s)
			var wait func()
			if len(p.subs) == 0 {
				wait = p.stopLocked()
			}
			p.mu.Unlock()
			if wait != nil {
				wait()
			}
		})
	}
}

// stop ends the probe, subscribers or not (the connection closed).
func (p *probe) stop() {
	p.mu.Lock()
	clear(p.subs)
	wait := p.stopLocked()
	p.mu.Unlock()
	if wait != nil {
		wait()
	}
}

// stopLocked cancels the running probe and returns what waits for it to
// stop, to be called without p.mu; nil if none runs.
func (p *probe) stopLocked() func() {
	if p.cancel == nil {
		return nil
	}
	cancel, done := p.cancel, p.done
	p.cancel, p.done = nil, nil
	return func() {
		cancel()
		<-done
	}
}

func (p *probe) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	lastAnswer := p.now()
	lastAsked := lastAnswer
	silent := false
	t := time.NewTicker(p.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := p.now(); unseen(lastAsked, now) > 2*p.period {
			// The probe did not run meanwhile: kpf was stopped (SIGSTOP)
			// or the machine slept. Time that passed unseen is no
			// silence of the API server's: it gets the whole bound
			// again, counted from now. (Dropping every tunnel at once
			// on the first probe after the pause cut the very
			// connections that woke kpf up, on fresh tunnels too.)
			lastAnswer = now
		}
		ok := p.answers(ctx)
		lastAsked = p.now()
		if ok {
			lastAnswer = lastAsked
			if silent {
				silent = false
				p.log.Info("the API server answers again")
				p.tell(false, 0)
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if quiet := p.now().Sub(lastAnswer); !silent && quiet >= p.bound {
			silent = true
			p.log.Warn("the API server is silent: tunnels dropped", "quiet", quiet.Round(time.Second).String())
			p.tell(true, quiet)
		}
	}
}

// unseen is how long passed from then to now, by the longer of the
// monotonic and the wall clock (a sleeping machine's monotonic clock
// stands still on Linux; its wall clock does not).
func unseen(then, now time.Time) time.Duration {
	return max(now.Sub(then), now.Round(0).Sub(then.Round(0)))
}

// answers reports whether the API server answered /livez within the
// period (or the bound, if shorter), with any status.
func (p *probe) answers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, min(p.period, p.bound))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return false
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return false
	}
	// Read to the end so that the connection is kept for the next one.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return true
}

// tell calls every subscriber, outside the lock: a subscriber drops its
// tunnels, which takes its own.
func (p *probe) tell(silent bool, quiet time.Duration) {
	p.mu.Lock()
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		s.on(silent, quiet)
	}
}
