package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The first Ctrl-C asks kpf to stop cleanly; a second while it is still
// stopping exits at once, saying so. Before, the second was swallowed and
// a shutdown that hung (a relay pod that would not delete, an API server
// gone silent) could only be killed from another terminal.
func TestSecondInterruptExitsAtOnce(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	stopping := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	var errOut bytes.Buffer
	result := make(chan int, 1)
	go func() {
		result <- run(context.Background(), sigs, &errOut, func(ctx context.Context) int {
			<-ctx.Done()
			close(stopping)
			<-release // a shutdown that does not end
			return 0
		})
	}()
	sigs <- os.Interrupt
	select {
	case <-stopping:
	case <-time.After(10 * time.Second):
		t.Fatal("the first Ctrl-C did not cancel kpf's context")
	}
	select {
	case code := <-result:
		t.Fatalf("kpf returned %d before its shutdown ended", code)
	default:
	}
	sigs <- syscall.SIGTERM
	select {
	case code := <-result:
		if code != ExitInterrupted || !strings.Contains(errOut.String(), "kpf: terminated again: exiting now, without finishing the shutdown") {
			t.Fatalf("exit %d, %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second signal did not end kpf")
	}
}

// With one Ctrl-C, kpf's own exit code stands (0: stopped by a signal).
func TestOneInterruptStopsCleanly(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	sigs <- os.Interrupt
	code := run(context.Background(), sigs, &bytes.Buffer{}, func(ctx context.Context) int {
		<-ctx.Done()
		return 0
	})
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
}
