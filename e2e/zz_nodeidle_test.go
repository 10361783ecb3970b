package e2e

// This test restarts the node agent (twice), so it runs after the others
// (Go runs test files in name order).

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// nodeIdleTimeout is the node's --streaming-connection-idle-timeout in
// TestIdleForwardAcrossTheNodesIdleTimeout: what CIS-hardened nodes set
// (5 min), shortened.
const nodeIdleTimeout = 30 * time.Second

// TestIdleForwardAcrossTheNodesIdleTimeout: with the node's streaming
// idle timeout at 30 s, a forward left idle for 90 s still works, for kpf
// on both transports and for kubectl on both: an HTTP keep-alive
// connection opened before the idle spell carries a second request after
// it, and a new connection opened after it works at once. Their pings
// (kpf's every --ping-interval, 15 s by default; kubectl's every 5 s over
// SPDY, 10 s over WebSocket) are SPDY frames that reach the streaming
// server and reset its idle timer. The control, kpf with pings rarer than
// the timeout, shows the node does cut idle tunnels: its keep-alive
// connection is lost, and kpf redials, so a new connection still works.
func TestIdleForwardAcrossTheNodesIdleTimeout(t *testing.T) {
	sb := sandboxtest.Get(t)
	old := nodeSettings(t, sb)
	fault(t, sb, "restart", "node", "--streaming-connection-idle-timeout", nodeIdleTimeout.String())
	t.Cleanup(func() {
		fault(t, sb, "restart", "node", "--streaming-connection-idle-timeout", old.StreamingConnectionIdleTimeout)
	})
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: web, image: kpf.test/http, ports: [{containerPort: 8080}]}]
`)
	sb.ReadyPods(t, ns, "app=web", 1)
	const idle = 90 * time.Second
	type forward struct {
		name string
		kept bool // the keep-alive connection survives the idle spell
		addr string
		held net.Conn
		r    *bufio.Reader
	}
	var fs []*forward
	for _, tc := range []struct {
		name string
		f    forwarder
		args []string
		kept bool
	}{
		{"kpf/websocket", kpf(sb), []string{"--transport", "websocket"}, true},
		{"kpf/spdy", kpf(sb), []string{"--transport", "spdy"}, true},
		{"kubectl/websocket", kubectl(sb), nil, true},
		{"kubectl/spdy", withEnv(kubectl(sb), "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"), nil, true},
		{"kpf/pings rarer than the timeout", kpf(sb), []string{"--transport", "websocket", "--ping-interval", "60s"}, false},
	} {
		_, ls := tc.f.start(t, 2, append(tc.args, "-n", ns, "pod/web", ":8080")...)
		held, err := net.Dial("tcp", ls[0].Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		fw := &forward{name: tc.name, kept: tc.kept, addr: ls[0].Addr, held: held, r: bufio.NewReader(held)}
		if err := httpGet(held, fw.r); err != nil {
			t.Fatalf("%s: first request: %v", tc.name, err)
		}
		fs = append(fs, fw)
	}
	// One idle spell for all of them (it is what is under test: nothing
	// may pass in it, so there is no condition to wait on).
	time.Sleep(idle)
	for _, fw := range fs {
		t.Run(fw.name, func(t *testing.T) {
			err := httpGet(fw.held, fw.r)
			t.Logf("a keep-alive connection after %s idle: %s", idle, errOrOK(err))
			if fw.kept && err != nil {
				t.Errorf("the keep-alive connection was lost across the node's %s idle timeout: %v", nodeIdleTimeout, err)
			}
			if !fw.kept && err == nil {
				t.Errorf("the keep-alive connection survived %s idle with pings every 60 s: the node's %s idle timeout did not apply", idle, nodeIdleTimeout)
			}
			// A new connection works at the first try.
			c, err := net.Dial("tcp", fw.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := httpGet(c, bufio.NewReader(c)); err != nil {
				t.Errorf("a new connection after %s idle failed: %v", idle, err)
			}
		})
	}
}

func withEnv(f forwarder, env ...string) forwarder {
	f.env = append(f.env, env...)
	return f
}

func errOrOK(err error) string {
	if err != nil {
		return err.Error()
	}
	return "kept"
}

// httpGet sends one request on c and reads its answer (20 s at most).
func httpGet(c net.Conn, r *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// nodeSettings reads the sandbox's recorded node settings.
func nodeSettings(t *testing.T, sb *sandboxtest.Sandbox) cluster.NodeSettings {
	t.Helper()
	st, err := sb.Dir.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Node
}
