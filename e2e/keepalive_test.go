package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// proxyIdleTimeout is the idle timeout of the proxy in front of the API
// server in TestIdleTunnelThroughAProxySurvives: above kpf's default ping
// interval (15 s), as a proxy kpf's default is meant for.
const proxyIdleTimeout = 20 * time.Second

// TestIdleTunnelThroughAProxySurvives: through an HTTP CONNECT proxy that
// cuts connections idle for 20 s (tinyproxy's Timeout), a local connection
// left idle for 45 s still carries bytes both ways, on both transports:
// kpf's data path pings its tunnels (--ping-interval, 15 s by default). A
// plain CONNECT tunnel through the same proxy, left idle, is cut, and so
// is kpf's with pings further apart than the proxy's timeout: the proxy
// does what the test says it does, and the pings are what keep the
// tunnels up.
func TestIdleTunnelThroughAProxySurvives(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	proxy := startIdleCuttingProxy(t, proxyIdleTimeout)
	cfg := kubeconfigVia(t, sb, proxy)
	const idle = 45 * time.Second
	// The subtests run side by side: the test costs one idle spell.
	t.Run("group", func(t *testing.T) {
		t.Run("control", func(t *testing.T) {
			t.Parallel()
			c := connectVia(t, proxy, strings.TrimPrefix(sb.APIServer, "https://"))
			defer c.Close()
			start := time.Now()
			c.SetReadDeadline(start.Add(idle))
			n, err := c.Read(make([]byte, 1))
			took := time.Since(start)
			if err == nil || n > 0 || took < proxyIdleTimeout-2*time.Second || took > proxyIdleTimeout+10*time.Second {
				t.Fatalf("an idle CONNECT tunnel through the proxy: read %d bytes, %v, after %s; want it cut after ~%s", n, err, took.Round(time.Second), proxyIdleTimeout)
			}
			t.Logf("the proxy cut an idle tunnel after %s", took.Round(100*time.Millisecond))
		})
		for _, tc := range []struct {
			name, transport string
			args            []string // more flags of kpf's
			survives        bool
		}{
			{"websocket", "websocket", nil, true},
			{"spdy", "spdy", nil, true},
			// Pings further apart than the proxy's timeout: the tunnel
			// is cut. The interval is kpf's, and no other ping (a
			// WebSocket ping of its own) keeps the tunnel up.
			{"websocket/pings too rare", "websocket", []string{"--ping-interval", "60s"}, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				f := forwarder{name: "kpf", argv: func(args ...string) []string {
					return append([]string{kpfBin, "--kubeconfig", cfg, "forward"}, args...)
				}}
				p, ls := f.start(t, 2, append(tc.args, "--transport", tc.transport, "-n", ns, "pod/bulk", ":9000")...)
				c, err := net.Dial("tcp", ls[0].Addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				r := bufio.NewReader(c)
				echo := func(msg string) error {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := io.WriteString(c, msg); err != nil {
						return err
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(r, got); err != nil {
						return err
					}
					if string(got) != msg {
						return fmt.Errorf("echoed %q, want %q", got, msg)
					}
					return nil
				}
				if _, err := io.WriteString(c, "ECHO\n"); err != nil {
					t.Fatal(err)
				}
				if err := echo("before the idle spell\n"); err != nil {
					t.Fatalf("echo: %v", err)
				}
				// Idle on purpose: the time is what is tested.
				time.Sleep(idle)
				err = echo("after 45 s idle\n")
				if !tc.survives {
					if err == nil {
						t.Fatalf("with pings %s apart, an echo after %s idle went through a proxy that cuts tunnels idle for %s: the proxy cuts nothing?", tc.args[1], idle, proxyIdleTimeout)
					}
					return
				}
				if err != nil {
					t.Fatalf("echo after %s idle through a proxy that cuts tunnels idle for %s: %v\nkpf:\n%s", idle, proxyIdleTimeout, err, p.Output())
				}
				if out := p.Output(); strings.Contains(out, "answered no ping") {
					t.Errorf("kpf closed a tunnel for not answering pings:\n%s", out)
				}
			})
		}
	})
}

// startIdleCuttingProxy runs tinyproxy on a free loopback port, cutting
// connections idle for timeout (both ways), and returns its URL.
func startIdleCuttingProxy(t *testing.T, timeout time.Duration) string {
	bin := needTool(t, "tinyproxy")
	port := freePort(t)
	dir := t.TempDir()
	conf := fmt.Sprintf("Port %d\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout %d\nMaxClients 100\nLogLevel Info\nLogFile %q\n",
		port, int(timeout.Seconds()), filepath.Join(dir, "tinyproxy.log"))
	if err := os.WriteFile(filepath.Join(dir, "tinyproxy.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sandboxtest.Start(t, exec.Command(bin, "-d", "-c", filepath.Join(dir, "tinyproxy.conf")))
	waitListening(t, "tinyproxy", port)
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// connectVia opens a CONNECT tunnel to dest through the proxy at proxyURL.
func connectVia(t *testing.T, proxyURL, dest string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dest, dest)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Read the answer byte by byte up to its blank line, so that nothing of
	// the tunnel is buffered away.
	var head []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		if _, err := c.Read(b); err != nil {
			c.Close()
			t.Fatalf("CONNECT through %s: %v (read %q)", proxyURL, err, head)
		}
		head = append(head, b[0])
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(head))), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		t.Fatalf("CONNECT through %s: %q, %v", proxyURL, head, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// TestSilentTunnelIsClosedAndRedialled: when the path under kpf's tunnels
// goes silent (a load balancer that forgot them, with no reset), each
// tunnel answers no ping and is closed within two intervals, with a log
// line that says why; the connection on it ends instead of hanging, and
// the next connection gets a new tunnel and works. On both transports.
func TestSilentTunnelIsClosedAndRedialled(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := zooNamespace(t, sb)
	for _, transport := range []string{"websocket", "spdy"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			path := startSilencer(t, strings.TrimPrefix(sb.APIServer, "https://"))
			f := forwarder{name: "kpf", argv: func(args ...string) []string {
				return append([]string{kpfBin, "--kubeconfig", sb.Kubeconfig(cluster.UserAdmin), "--server", "https://" + path.addr, "forward"}, args...)
			}}
			p, ls := f.start(t, 2, "--ping-interval", "1s", "--transport", transport, "-n", ns, "pod/bulk", ":9000")
			c, err := net.Dial("tcp", ls[0].Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := startEcho(c, "before\n"); err != nil {
				t.Fatalf("echo: %v", err)
			}
			path.silence()
			silenced := time.Now()
			// The connection on the silent tunnel ends within the bound
			// (two intervals, and one for the first ping to go out).
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil || n > 0 {
				t.Fatalf("the connection on a silent tunnel read %d bytes, %v; want its end", n, err)
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the connection on a silent tunnel is still open 15 s later:\n%s", p.Output())
			}
			took := time.Since(silenced)
			p.WaitLine(t, `tunnel closed: it answered no ping.*no ping in 2s`, 5*time.Second)
			if took > 5*time.Second {
				t.Errorf("the connection on a silent tunnel ended %s after the silence, want within ~3 s (pings 1 s apart)", took.Round(100*time.Millisecond))
			}
			t.Logf("the connection on the silent tunnel ended %s after the silence", took.Round(100*time.Millisecond))
			// A new connection, on a new tunnel.
			c2, err := net.Dial("tcp", ls[0].Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if err := startEcho(c2, "after\n"); err != nil {
				t.Fatalf("echo on a new connection after the old tunnels went silent: %v\n%s", err, p.Output())
			}
		})
	}
}

// startEcho starts kpf.test/bulk's ECHO on c and checks one echo of msg.
func startEcho(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(15 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ECHO\n"+msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// silencer relays TCP connections to an address until silence: from then
// on, the connections it carries swallow every byte both ways and stay
// open (a path that died without a reset); new connections pass.
type silencer struct {
	addr string
	mu   sync.Mutex
	cut  []*atomic.Bool // one per relayed connection
}

func startSilencer(t *testing.T, to string) *silencer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silencer{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns []net.Conn
	var connsMu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", to)
			if err != nil {
				a.Close()
				continue
			}
			connsMu.Lock()
			conns = append(conns, a, b)
			connsMu.Unlock()
			cut := &atomic.Bool{}
			s.mu.Lock()
			s.cut = append(s.cut, cut)
			s.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 && !cut.Load() {
						dst.Write(buf[:n])
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			wg.Add(2)
			go pipe(a, b)
			go pipe(b, a)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return s
}

// silence makes every connection relayed so far swallow what it carries.
func (s *silencer) silence() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cut {
		c.Store(true)
	}
}
