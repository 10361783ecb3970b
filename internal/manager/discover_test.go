package manager

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/testnet"
)

// sets is a discover opener fed by a test: each set sent is applied,
// with a note that says how many, and what note says.
func sets(ch chan []config.Forward, note *atomic.Value) DiscoverOpener {
	return func(ctx context.Context, fw config.Forward, apply func([]config.Forward, string)) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case s := <-ch:
				apply(s, fmt.Sprintf("%d forwards%s", len(s), note.Load()))
			}
		}
	}
}

func names(m *Manager) []string { n := m.Names(); slices.Sort(n); return n }

// TestDiscoverEntryRunsItsSet: a discover entry's forwards start, change
// and stop with its sets, apart from the file's; applying the file again
// leaves them alone; stopping the entry stops them.
func TestDiscoverEntryRunsItsSet(t *testing.T) {
	h := newHarness(t, spec.Defaults())
	h.m.o.Retry = fast
	h.s.Pod(t, ns, "web-1", nil, true, fakeapi.Echo(t, "web-1"))
	h.s.Pod(t, ns, "web-2", nil, true, fakeapi.Echo(t, "web-2"))
	ch := make(chan []config.Forward)
	var note atomic.Value
	note.Store("")
	h.m.o.OpenDiscover = sets(ch, &note)
	var evMu sync.Mutex
	var events []string
	h.m.o.Events = func(e Event) {
		if e.Forward == "all" {
			evMu.Lock()
			events = append(events, e.Message)
			evMu.Unlock()
		}
	}
	entry := config.Forward{Name: "all", Namespace: ns, Target: "services", Discover: &config.Discover{Kinds: config.DiscoverKinds}}
	file := []config.Forward{fw("plain", "web-1", nil), entry}
	ctx := context.Background()
	h.m.Start(ctx, file)
	want := func(what string, n ...string) {
		t.Helper()
		slices.Sort(n)
		testnet.Within(t, 10*time.Second, what, func() bool { return slices.Equal(names(h.m), n) })
	}
	ch <- []config.Forward{fw("a.shop:80", "web-1", nil), fw("b.shop:80", "web-2", nil)}
	want("the entry's set to run", "all", "plain", "a.shop:80", "b.shop:80")
	if err := h.m.WaitGood(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	b := h.row(t, "b.shop:80")
	if got := greeting(t, b.Local[0]); got != "web-2" {
		t.Errorf("b answers %q, want web-2", got)
	}
	if r := h.row(t, "all"); r.State != Ready {
		t.Errorf("the entry is %s", r.State)
	}

	started, restarted, unchanged, stopped := h.m.Apply(ctx, file, true)
	if len(started)+len(restarted)+len(stopped) != 0 || len(unchanged) != 2 {
		t.Errorf("the same file again: started %v restarted %v unchanged %v stopped %v", started, restarted, unchanged, stopped)
	}
	if h.row(t, "b.shop:80").Local[0] != b.Local[0] {
		t.Error("applying the file again restarted the entry's forward")
	}

	a2 := fw("a.shop:80", "web-2", nil)
	ch <- []config.Forward{a2}
	want("b to stop", "all", "plain", "a.shop:80")
	testnet.Within(t, 10*time.Second, "a to follow its change", func() bool {
		r := h.row(t, "a.shop:80")
		return r.State == Ready && r.Pod == "web-2"
	})

	// The same set again: nothing to tell. The same forwards and another
	// note (a service skipped): told.
	ch <- []config.Forward{a2}
	ch <- []config.Forward{a2}
	note.Store("; not forwarded: ext (ExternalName)")
	ch <- []config.Forward{a2}
	ch <- []config.Forward{a2}
	evMu.Lock()
	got := slices.Clone(events)
	evMu.Unlock()
	wantEvents := []string{"ready: 2 forwards", "started a.shop:80, b.shop:80 (2 forwards)", "restarted a.shop:80; stopped b.shop:80 (1 forwards)", "1 forwards; not forwarded: ext (ExternalName)"}
	if !slices.Equal(got, wantEvents) {
		t.Errorf("events\n %q\nwant\n %q", got, wantEvents)
	}

	if got := h.m.StopNames([]string{"all"}); !slices.Equal(got, []string{"all", "a.shop:80"}) {
		t.Errorf("stopping the entry stopped %v, want it and its forward", got)
	}
	want("the entry's forwards to stop with it", "plain")
}

// TestDiscoverEntryStoppedWhileApplying: an entry that applies a set
// while the file's apply stops it neither deadlocks nor leaves forwards.
func TestDiscoverEntryStoppedWhileApplying(t *testing.T) {
	m := New(Options{Settings: spec.Defaults(), Log: discard, Retry: fast,
		Open: func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
		OpenDiscover: func(ctx context.Context, fw config.Forward, apply func([]config.Forward, string)) error {
			for i := 0; ctx.Err() == nil; i++ {
				set := []config.Forward{fw1("x.shop:80")}
				if i%2 == 1 {
					set = append(set, fw1("y.shop:80"))
				}
				apply(set, "")
			}
			return nil
		}})
	defer m.Stop()
	entry := config.Forward{Name: "all", Namespace: ns, Target: "services", Discover: &config.Discover{Kinds: config.DiscoverKinds}}
	ctx := context.Background()
	for range 20 {
		m.Apply(ctx, []config.Forward{entry}, true)
		testnet.Within(t, 5*time.Second, "the entry to start its set", func() bool { return slices.Contains(m.Names(), "x.shop:80") })
		done := make(chan struct{})
		go func() { m.Apply(ctx, []config.Forward{fw1("other")}, true); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("applying a file without the entry hangs while the entry applies its set")
		}
		if got := m.Names(); !slices.Equal(got, []string{"other"}) {
			t.Fatalf("after the entry was removed: %v", got)
		}
	}
}

func fw1(name string) config.Forward { return fw(name, "none", nil) }
