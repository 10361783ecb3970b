package tunnel

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// A burst of connections must not dial a tunnel each: past maxDialling
// dials under way, connections join those dials (or share open tunnels),
// spread evenly; and each one still gets a working tunnel.
func TestBurstJoinsDialsUnderWay(t *testing.T) {
	gate := make(chan struct{})
	var dials atomic.Int32
	dial := func(ctx context.Context) (*Conn, error) {
		if dials.Add(1) > 1 { // the sentinel is dialled at once
			<-gate
		}
		return &Conn{done: make(chan struct{})}, nil
	}
	p, err := NewPool(context.Background(), dial)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	got := make(chan *Conn, n)
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
	// Wait until every connection is either dialling or has joined a dial.
	for {
		p.mu.Lock()
		joined := 0
		for _, d := range p.pending {
			joined += d.conns
		}
		p.mu.Unlock()
		if joined == n {
			break
		}
		runtime.Gosched()
	}
	close(gate)
	wg.Wait()
	close(got)
	per := map[*Conn]int{}
	for c := range got {
		per[c]++
	}
	if d := dials.Load(); d > 1+1+maxDialling { // sentinel, spare, the burst's
		t.Fatalf("%d connections dialled %d tunnels, want at most %d", n, d, 2+maxDialling)
	}
	if len(per) != maxDialling {
		t.Fatalf("%d connections on %d tunnels, want %d", n, len(per), maxDialling)
	}
	for c, k := range per {
		if k != n/maxDialling {
			t.Fatalf("uneven: a tunnel carries %d connections, want %d (%v)", k, n/maxDialling, per)
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
