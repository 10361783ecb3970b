// Command kpf-sandbox runs a one-node Kubernetes cluster on this machine for
// kpf's tests, benchmarks and demo: upstream etcd, kube-apiserver and
// kube-controller-manager, and a node agent that runs pods as processes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kpf-dev/kpf/sandbox/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpf-sandbox:", err)
		var ec cli.ExitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec))
		}
		os.Exit(1)
	}
}
