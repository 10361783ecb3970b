package cli

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/kpf-dev/kpf/internal/metrics"
)

const metricsAddrUsage = "serve Prometheus metrics at HOST:PORT/metrics (e.g. 127.0.0.1:9090; another address than loopback prints a warning)"

// serveMetrics listens on addr ("" none) and serves src until ctx ends. It
// listens before returning, so a bad or busy address fails the command.
func serveMetrics(ctx context.Context, addr string, src metrics.Source, errOut io.Writer) (net.Addr, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := metrics.Listen(addr, errOut)
	if err != nil {
		return nil, usageError{err}
	}
	go metrics.Serve(ctx, ln, src)
	fmt.Fprintf(errOut, "metrics: http://%s/metrics\n", ln.Addr())
	return ln.Addr(), nil
}
