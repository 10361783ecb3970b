package cluster

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
	"k8s.io/client-go/rest"
)

// livez is an API server's /livez that counts requests, answers with
// status, and while silent answers nothing.
type livez struct {
	srv      *httptest.Server
	requests atomic.Int64
	status   atomic.Int64
	mu       sync.Mutex
	silence  chan struct{} // closed to end a silence; nil when answering
}

func newLivez(t *testing.T, status int) *livez {
	l := &livez{}
	l.status.Store(int64(status))
	l.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prefix/livez" {
			http.NotFound(w, r)
			return
		}
		l.requests.Add(1)
		l.mu.Lock()
		silence := l.silence
		l.mu.Unlock()
		if silence != nil {
			select {
			case <-silence:
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(int(l.status.Load()))
	}))
	t.Cleanup(func() {
		l.answer()
		l.srv.Close()
	})
	return l
}

// silent makes the server stop answering.
func (l *livez) silent() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.silence == nil {
		l.silence = make(chan struct{})
	}
}

// answer makes it answer again, the held requests too.
func (l *livez) answer() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.silence != nil {
		close(l.silence)
		l.silence = nil
	}
}

func (l *livez) probe(t *testing.T, period, bound time.Duration) *probe {
	t.Helper()
	// A path in the server's address is a prefix, as a proxy's.
	cfg := &rest.Config{Host: l.srv.URL + "/prefix", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := newProbe(cfg, hc, period, bound, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

// event is what a subscriber heard.
type event struct {
	silent bool
	quiet  time.Duration
	at     time.Time
}

func subscribe(p *probe, n int) (events chan event, unsubscribe func()) {
	events = make(chan event, 64*n)
	var unsubs []func()
	for range n {
		unsubs = append(unsubs, p.Subscribe(func(silent bool, quiet time.Duration) {
			events <- event{silent, quiet, time.Now()}
		}))
	}
	return events, func() {
		for _, u := range unsubs {
			u()
		}
	}
}

// Fifty subscribers (a file's forwards) share one probe: the API server
// sees one request per period, not fifty; the last unsubscribe stops it.
func TestProbeIsOnePerPeriodForManySubscribers(t *testing.T) {
	l := newLivez(t, http.StatusOK)
	const period = 50 * time.Millisecond
	p := l.probe(t, period, time.Second)
	start := time.Now()
	events, unsubscribe := subscribe(p, 50)
	testnet.Within(t, 10*time.Second, "10 probes", func() bool { return l.requests.Load() >= 10 })
	elapsed := time.Since(start)
	n := l.requests.Load()
	if max := int64(elapsed/period) + 1; n > max {
		t.Fatalf("%d /livez requests in %s with 50 subscribers: want at most one per %s (%d)", n, elapsed.Round(time.Millisecond), period, max)
	}
	unsubscribe()
	p.mu.Lock()
	running := p.cancel != nil
	p.mu.Unlock()
	if running {
		t.Fatal("the probe still runs after its last subscriber left")
	}
	select {
	case e := <-events:
		t.Fatalf("a subscriber was told %+v while the API server answered", e)
	default:
	}
}

// An answer of any status is alive: an authenticating proxy's 401 or
// 403, a failing server's 500. Subscribers hear nothing over many bounds.
func TestProbeTakesAnyAnswerAsAlive(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusInternalServerError, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			l := newLivez(t, status)
			// A bound of many periods: one answer slower than its period
			// (a loaded CI machine) is not silence.
			const period, bound = 25 * time.Millisecond, 250 * time.Millisecond
			p := l.probe(t, period, bound)
			events, unsubscribe := subscribe(p, 3)
			defer unsubscribe()
			start := time.Now()
			// Enough answers to span five bounds.
			testnet.Within(t, 10*time.Second, "answers over five bounds", func() bool {
				return l.requests.Load() >= 5*int64(bound/period) && time.Since(start) > 5*bound
			})
			select {
			case e := <-events:
				t.Fatalf("status %d: a subscriber was told %+v; an answer is alive", status, e)
			default:
			}
		})
	}
}

// An API server that stops answering: every subscriber is told within
// the bound (plus the probe's own timeout), and told again once it
// answers.
func TestProbeTellsSilenceAndReturn(t *testing.T) {
	l := newLivez(t, http.StatusOK)
	const period, bound = 50 * time.Millisecond, 300 * time.Millisecond
	p := l.probe(t, period, bound)
	const subscribers = 5
	events, unsubscribe := subscribe(p, subscribers)
	defer unsubscribe()
	testnet.Within(t, 10*time.Second, "a first answer", func() bool { return l.requests.Load() >= 2 })
	silentAt := time.Now()
	l.silent()
	for range subscribers {
		select {
		case e := <-events:
			if !e.silent || e.quiet < bound {
				t.Fatalf("told %+v, want silent for at least %s", e, bound)
			}
			// The last answer came at most a period before the silence
			// began; the request that finds the bound passed waits at
			// most a period; then the next tick.
			if late := e.at.Sub(silentAt); late > bound+3*period+200*time.Millisecond {
				t.Fatalf("told of the silence %s after it began, want within %s", late.Round(time.Millisecond), bound+3*period)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("subscribers were not told of the silence")
		}
	}
	l.answer()
	for range subscribers {
		select {
		case e := <-events:
			if e.silent {
				t.Fatalf("told %+v, want the API server back", e)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("subscribers were not told the API server answers again")
		}
	}
}

// After kpf was stopped (SIGSTOP, a laptop's sleep) longer than the
// bound, the time that passed unseen is not the API server's silence:
// a probe that fails right after (its kept connection died meanwhile)
// does not drop every tunnel, while silence for the bound after the
// pause still does.
func TestPauseIsNoSilence(t *testing.T) {
	l := newLivez(t, http.StatusOK)
	const period, bound = 50 * time.Millisecond, 300 * time.Millisecond
	p := l.probe(t, period, bound)
	var jump atomic.Int64 // what the clock skipped: the pause
	p.now = func() time.Time { return time.Now().Add(time.Duration(jump.Load())) }
	events, unsubscribe := subscribe(p, 1)
	defer unsubscribe()
	start := l.requests.Load()
	testnet.WaitFor(t, func() bool { return l.requests.Load() >= start+2 })
	// The pause, and a probe after it that gets no answer (the next
	// one is asked once it has given up).
	l.silent()
	jump.Store(int64(time.Minute))
	n := l.requests.Load()
	testnet.WaitFor(t, func() bool { return l.requests.Load() >= n+2 })
	l.answer()
	n = l.requests.Load()
	testnet.WaitFor(t, func() bool { return l.requests.Load() >= n+2 })
	select {
	case e := <-events:
		t.Fatalf("after a pause, an unanswered probe: the subscriber heard %+v", e)
	default:
	}
	// Silence for the bound, with no pause: tunnels are dropped.
	l.silent()
	e := <-events
	if !e.silent || e.quiet < bound {
		t.Fatalf("silence: heard %+v", e)
	}
}
