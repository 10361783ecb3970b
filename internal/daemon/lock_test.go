package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// Two daemons of one user started at once: exactly one runs, the other
// ends saying why, whichever wins. With check-then-listen both could pass
// the check, and the second's socket replaced the first's: a daemon left
// running with no socket, forever.
func TestOneDaemonPerUser(t *testing.T) {
	for round := range 20 {
		home, err := os.MkdirTemp("", "kpfd")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go0 := make(chan struct{})
		done := make(chan error, 2)
		for range 2 {
			s := &Server{Home: Home(home), Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener}
			go func() {
				<-go0
				done <- s.Serve(ctx)
			}()
		}
		close(go0)
		select {
		case err := <-done:
			if !errors.Is(err, ErrAnotherDaemon) || !strings.Contains(err.Error(), "kpf down --all stops it") {
				t.Fatalf("round %d: the second daemon ended with %v, want %v and how to stop the first", round, err, ErrAnotherDaemon)
			}
		case <-time.After(lockWait + 5*time.Second):
			t.Fatalf("round %d: two daemons run for one user", round)
		}
		if !NewClient(Home(home)).Running() {
			t.Fatalf("round %d: the daemon that won does not answer", round)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: the daemon that ran: %v", round, err)
		}
		os.RemoveAll(home)
	}
}

// A daemon that is stopping still holds the lock: one started meanwhile
// waits for it and then runs (kpf up -d right after the last kpf down).
func TestADaemonWaitsForOneStopping(t *testing.T) {
	home, err := os.MkdirTemp("", "kpfd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(home)
	// The lock held by a process that does not answer yet.
	f, err := os.OpenFile(Home(home).Lock(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := tryLock(f); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := &Server{Home: Home(home), Log: discard}
	go func() { done <- s.Serve(ctx) }()
	c := NewClient(Home(home))
	select {
	case err := <-done:
		t.Fatalf("the daemon did not wait for the lock: %v", err)
	case <-time.After(200 * time.Millisecond): // it waits: nothing to wait on but time
	}
	if c.Running() {
		t.Fatal("a daemon answers while another holds the lock")
	}
	f.Close() // the other one is gone
	waitRunning(t, c, done)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
