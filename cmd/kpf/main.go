// Command kpf is Kubernetes port forwarding: kubectl port-forward's syntax,
// and forwards that do not fall over.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/kpf-dev/kpf/internal/cli"
)

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	code := run(context.Background(), sigs, os.Stderr, func(ctx context.Context) int {
		return cli.RunAs(ctx, filepath.Base(os.Args[0]), os.Args[1:], os.Stdout, os.Stderr)
	})
	os.Exit(code)
}

// ExitInterrupted is the exit code after a second Ctrl-C (or SIGTERM)
// cut the shutdown short: 128 + SIGINT, as shells report it.
const ExitInterrupted = 130

// run runs kpf under signals: the first cancels its context, so that it
// stops cleanly (listeners closed, relay pods deleted, the daemon's
// socket removed); a second, while that shutdown is still going on,
// returns at once with ExitInterrupted and leaves the rest undone.
func run(ctx context.Context, sigs <-chan os.Signal, errOut io.Writer, kpf func(context.Context) int) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- kpf(ctx) }()
	select {
	case code := <-done:
		return code
	case <-sigs:
		cancel()
	}
	select {
	case code := <-done:
		return code
	case sig := <-sigs:
		fmt.Fprintf(errOut, "kpf: %v again: exiting now, without finishing the shutdown\n", sig)
		return ExitInterrupted
	}
}
