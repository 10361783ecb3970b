package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// pauseFor is how long TestFirstConnectionAfterAPause stops kpf: long
// enough for the proxy to cut its idle tunnels (proxyIdleTimeout) and
// for kpf to count them unheard from (a ping period and a half, 15 s
// apart by default); KPF_E2E_PAUSE=2m is a laptop's short sleep.
func pauseFor(t *testing.T) time.Duration {
	d := 30 * time.Second
	if v := os.Getenv("KPF_E2E_PAUSE"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d < proxyIdleTimeout {
			t.Fatalf("KPF_E2E_PAUSE=%q: want a duration of at least %s (the proxy's idle timeout)", v, proxyIdleTimeout)
		}
	}
	return d
}

// TestFirstConnectionAfterAPause: kpf forward through a proxy that cuts
// tunnels idle for 20 s is stopped (SIGSTOP, as a laptop sleeps) longer
// than that, so the proxy cuts its sentinel and its spare while it
// cannot answer; the first connection made right after SIGCONT succeeds:
// kpf does not hand it a tunnel it has not heard from since the pause.
// On both transports.
func TestFirstConnectionAfterAPause(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "nap", 1)
	proxy := startIdleCuttingProxy(t, proxyIdleTimeout)
	cfg := kubeconfigVia(t, sb, proxy)
	pause := pauseFor(t)
	for _, transport := range []string{"websocket", "spdy"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			f := forwarder{name: "kpf", argv: func(args ...string) []string {
				return append([]string{kpfBin, "--kubeconfig", cfg, "forward"}, args...)
			}}
			p, ls := f.start(t, 2, "--transport", transport, "-n", ns, "deployment/nap", ":8080")
			// One connection before: the sentinel carries it and a spare
			// is dialled, so both kinds of idle tunnel are cut.
			if _, err := fetch(ls[0].Addr, 1024); err != nil {
				t.Fatalf("before the pause: %v", err)
			}
			p.Signal(syscall.SIGSTOP)
			// The pause is the fault under test: its length is the point.
			time.Sleep(pause)
			// As on a laptop that wakes, the client is as quick as kpf:
			// its connection is in the listener's queue and its request
			// on the socket before kpf runs again.
			written := make(chan struct{})
			var once sync.Once
			tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return notifyConn{c, func() { once.Do(func() { close(written) }) }}, nil
			}}
			res := make(chan error, 1)
			go func() {
				_, err := fetchWith(tr, ls[0].Addr, 64<<10)
				res <- err
			}()
			select {
			case <-written:
			case err := <-res:
				t.Fatalf("the request could not be sent to kpf's listener while kpf was stopped: %v", err)
			}
			p.Signal(syscall.SIGCONT)
			if err := <-res; err != nil {
				t.Fatalf("the first connection after a pause of %s: %v\nkpf:\n%s", pause, err, p.Output())
			}
		})
	}
}

// notifyConn calls wrote after each write.
type notifyConn struct {
	net.Conn
	wrote func()
}

func (c notifyConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wrote()
	return n, err
}
