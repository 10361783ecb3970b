package tunnelpool

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kpf-dev/kpf/internal/testnet"
)

// A burst of connections must not dial a tunnel each: past maxDialling
// dials under way, connections join those dials (or share open tunnels),
// spread evenly; and each one still gets a working tunnel.
func TestBurstJoinsDialsUnderWay(t *testing.T) {
	gate := make(chan struct{})
	var dials atomic.Int32
	dial := func(ctx context.Context) (*fake, error) {
		if dials.Add(1) > 1 { // the sentinel is dialled at once
			<-gate
		}
		return newFake(), nil
	}
	p, err := New(context.Background(), dial)
	if err != nil {
		t.Fatal(err)
	}
	// The first connection takes the sentinel; the others dial, join
	// dials, or share the sentinel, evenly.
	const n = 40
	got := make(chan *fake, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire()
			if err != nil {
				t.Error(err)
				return
			}
			got <- c
		}()
	}
	// Wait until every connection is dialling, has joined a dial, or is
	// on the sentinel.
	for {
		p.mu.Lock()
		placed := p.busy[p.sentinel]
		for _, d := range p.pending {
			placed += d.conns
		}
		p.mu.Unlock()
		if placed == n {
			break
		}
		runtime.Gosched()
	}
	close(gate)
	wg.Wait()
	close(got)
	per := map[*fake]int{}
	for c := range got {
		per[c]++
	}
	if d := dials.Load(); d > 1+1+maxDialling { // sentinel, spare, the burst's
		t.Fatalf("%d connections dialled %d tunnels, want at most %d", n, d, 2+maxDialling)
	}
	if len(per) != 1+maxDialling || per[p.sentinel] == 0 {
		t.Fatalf("%d connections on %d tunnels (%d on the sentinel), want %d tunnels with the sentinel", n, len(per), per[p.sentinel], 1+maxDialling)
	}
	for c, k := range per {
		if k != n/(1+maxDialling) {
			t.Fatalf("uneven: a tunnel carries %d connections, want %d (%v)", k, n/(1+maxDialling), per)
		}
		if p.busy[c] != k {
			t.Fatalf("the pool counts %d connections on a tunnel that carries %d", p.busy[c], k)
		}
	}
	for c, k := range per {
		for range k {
			p.Release(c)
		}
	}
	if len(p.busy) != 0 {
		t.Fatalf("%d tunnels still busy after every release", len(p.busy))
	}
}

// A pool holds one tunnel until it is used: the sentinel carries the first
// connection without a dial, a spare is dialled then for the next, and the
// sentinel is neither closed nor made idle when its connection ends.
func TestSentinelCarriesTheFirstConnection(t *testing.T) {
	var dials atomic.Int32
	dialled := make(chan *fake, 3)
	block := make(chan struct{}) // dials after the third wait
	defer close(block)
	dial := func(ctx context.Context) (*fake, error) {
		if dials.Add(1) > 3 {
			<-block
		}
		c := newFake()
		dialled <- c
		return c, nil
	}
	p, err := New(context.Background(), dial)
	if err != nil {
		t.Fatal(err)
	}
	sentinel := <-dialled
	if d := dials.Load(); d != 1 {
		t.Fatalf("an unused pool dialled %d tunnels, want 1", d)
	}
	first, err := p.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if first != sentinel {
		t.Fatal("the first connection did not get the sentinel")
	}
	spare := <-dialled // dialled for the next connection
	testWaitIdle(t, p, 1)
	second, err := p.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if second != spare {
		t.Fatal("the second connection did not get the spare")
	}
	<-dialled // the next spare
	testWaitIdle(t, p, 1)
	p.Release(first)
	p.Release(second)
	p.mu.Lock()
	idle, busy := slices.Clone(p.idle), len(p.busy)
	p.mu.Unlock()
	if len(idle) != 2 || slices.Contains(idle, sentinel) || busy != 0 || isDone(sentinel) {
		t.Fatalf("after release: idle %v (sentinel %p), %d busy, sentinel closed %v", idle, sentinel, busy, isDone(sentinel))
	}
	// Idle tunnels go first; then the sentinel, free again.
	for i := range 2 {
		if c, _ := p.Acquire(); c == sentinel {
			t.Fatalf("connection %d got the sentinel while idle tunnels were left", i)
		}
	}
	if c, _ := p.Acquire(); c != sentinel {
		t.Fatal("with no idle tunnel, a connection did not get the free sentinel")
	}
}

func testWaitIdle(t *testing.T, p *Pool[*fake], n int) {
	t.Helper()
	for {
		p.mu.Lock()
		k := len(p.idle)
		p.mu.Unlock()
		if k >= n {
			return
		}
		runtime.Gosched()
	}
}

// fake is a tunnel that carries nothing: the pool sees only that it is
// done and that it closes.
type fake struct {
	done chan struct{}
	once sync.Once
}

func newFake() *fake { return &fake{done: make(chan struct{})} }

func (f *fake) Done() <-chan struct{} { return f.done }

func (f *fake) Close() error {
	f.once.Do(func() { close(f.done) })
	return nil
}

// staleFake is a tunnel that may say it went unheard from too long.
type staleFake struct {
	*fake
	stale atomic.Bool
}

func (s *staleFake) Stale() bool { return s.stale.Load() }

// After a pause (the tunnels went unheard from too long), the first
// connection does not take the sentinel or a spare: they are closed, the
// connection gets a freshly dialled tunnel, and the sentinel is dialled
// again. A tunnel that is not stale is used as before.
func TestStaleTunnelsAreNotUsed(t *testing.T) {
	var dialled []*staleFake
	var mu sync.Mutex
	dial := func(ctx context.Context) (*staleFake, error) {
		c := &staleFake{fake: newFake()}
		mu.Lock()
		dialled = append(dialled, c)
		mu.Unlock()
		return c, nil
	}
	p, err := New(context.Background(), dial)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first, _ := p.Acquire() // the sentinel; a spare is dialled
	if first != p.sentinel {
		t.Fatal("the first connection did not take the sentinel")
	}
	testnet.WaitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.idle) == 1 })
	p.Release(first)
	// The pause: everything open went unheard from.
	p.mu.Lock()
	spare, sentinel := p.idle[0], p.sentinel
	p.mu.Unlock()
	spare.stale.Store(true)
	sentinel.stale.Store(true)
	c, err := p.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if c == spare || c == sentinel || c.Stale() {
		t.Fatal("a stale tunnel carried the first connection after the pause")
	}
	if !isDone(spare) || !isDone(sentinel) {
		t.Error("the stale tunnels were not closed")
	}
	testnet.WaitFor(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.sentinel != sentinel && !isDone(p.sentinel)
	})
	p.Release(c)
	// Fresh ones are used again.
	again, _ := p.Acquire()
	if again.Stale() || isDone(again) {
		t.Error("a fresh tunnel was not used")
	}
}
