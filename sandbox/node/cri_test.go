package node

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// testNode is an Agent with one running pod, whose port-forward handler is
// served over plain HTTP (the TLS and client-certificate check are the
// server's, not under test here).
type testNode struct {
	a    *Agent
	url  string // the pod's port-forward URL
	port int    // the pod's echo port
}

func startTestNode(t *testing.T, topo Topology, idle time.Duration) *testNode {
	t.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	a := &Agent{
		cfg:     Config{Topology: topo, StreamIdleTimeout: idle},
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		workers: map[types.UID]*podWorker{},
	}
	uid := types.UID("uid-1")
	a.workers[uid] = &podWorker{a: a, uid: uid, namespace: "ns", name: "pod", podRunning: true,
		local: podAddr{Local: netip.MustParseAddr("127.0.0.1")}}
	if topo == TopologyCRI {
		if a.cri, err = a.startCRIStreams(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.cri.close)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{pod}", a.servePortForward)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &testNode{a: a, url: srv.URL + "/portForward/ns/pod", port: echo.Addr().(*net.TCPAddr).Port}
}

// dial opens a port-forward connection to the node as kubectl does: SPDY,
// or SPDY tunnelled in a WebSocket.
func (n *testNode) dial(t *testing.T, transport string) httpstream.Connection {
	t.Helper()
	u, _ := url.Parse(n.url)
	cfg := &restclient.Config{Host: u.Scheme + "://" + u.Host}
	var d httpstream.Dialer
	if transport == "websocket" {
		var err error
		if d, err = portforward.NewSPDYOverWebsocketDialerForStreaming(u, cfg); err != nil {
			t.Fatal(err)
		}
	} else {
		rt, up, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		d = spdy.NewDialerForStreaming(up, &http.Client{Transport: rt}, http.MethodPost, u)
	}
	conn, _, err := d.Dial(portforward.PortForwardProtocolV1Name)
	if err != nil {
		t.Fatalf("%s: dial the node: %v", transport, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// echo opens a stream pair to the pod's echo port and checks a round trip.
func (n *testNode) echo(conn httpstream.Connection, id int) error {
	h := http.Header{}
	h.Set("port", fmt.Sprint(n.port))
	h.Set("requestID", fmt.Sprint(id))
	h.Set("streamType", "error")
	errs, err := conn.CreateStream(h)
	if err != nil {
		return err
	}
	errs.Close()
	h.Set("streamType", "data")
	data, err := conn.CreateStream(h)
	if err != nil {
		return err
	}
	defer data.Close()
	msg := fmt.Sprintf("hello %d\n", id)
	if _, err := io.WriteString(data, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(data).ReadString('\n')
	if err != nil || got != msg {
		return fmt.Errorf("echo: got %q, %v; want %q", got, err, msg)
	}
	return nil
}

// TestCRITopologyTunnelsWebSocketsAndProxiesToTheRuntime: on the default
// topology, the kubelet handler takes SPDY out of a tunnelling WebSocket
// itself (counted in its metric) and serves both transports through the
// CRI streaming server, not in the handler.
func TestCRITopologyTunnelsWebSocketsAndProxiesToTheRuntime(t *testing.T) {
	for _, topo := range Topologies {
		t.Run(string(topo), func(t *testing.T) {
			n := startTestNode(t, topo, time.Hour)
			for i, tr := range []string{"spdy", "websocket"} {
				if topo == TopologyLegacy && tr == "websocket" {
					continue // the API server translates for a legacy node
				}
				conn := n.dial(t, tr)
				if err := n.echo(conn, i); err != nil {
					t.Fatalf("%s: %v", tr, err)
				}
			}
			want := int64(1)
			if topo == TopologyLegacy {
				want = 0
			}
			if got := n.a.tunnelled.Load(); got != want {
				t.Fatalf("WebSockets the node tunnelled: %d, want %d", got, want)
			}
			if (n.a.cri != nil) != (topo == TopologyCRI) {
				t.Fatalf("CRI streaming server running: %v on topology %s", n.a.cri != nil, topo)
			}
		})
	}
}

// TestCRIStreamsIdleTimeout: the CRI streaming server closes a connection
// that carries no frame for the node's streaming idle timeout, and keeps
// one whose client pings more often (SPDY PINGs reset the timer).
func TestCRIStreamsIdleTimeout(t *testing.T) {
	const idle = time.Second
	n := startTestNode(t, TopologyCRI, idle)
	// client-go's SPDY round tripper pings every 5 s: rarer than the timeout.
	conn := n.dial(t, "spdy")
	if err := n.echo(conn, 1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-conn.CloseChan():
		if took := time.Since(start); took < idle/2 {
			t.Fatalf("the idle connection was closed after %s, before the %s idle timeout", took, idle)
		}
	case <-time.After(10 * idle):
		t.Fatalf("an idle connection was still open %s after the node's %s idle timeout", 10*idle, idle)
	}
	// client-go's tunnelling WebSocket dialer pings every 10 s as well;
	// a stream kept busy more often than the timeout keeps the connection.
	conn = n.dial(t, "websocket")
	deadline := time.Now().Add(3 * idle)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := n.echo(conn, i); err != nil {
			t.Fatalf("a busy connection failed after %s: %v", time.Since(deadline.Add(-3*idle)), err)
		}
		time.Sleep(idle / 5)
	}
	select {
	case <-conn.CloseChan():
		t.Fatal("a busy connection was closed")
	default:
	}
}

func TestParseTopologyAndIdleTimeout(t *testing.T) {
	for _, s := range []string{"", "cri", "legacy"} {
		if _, err := ParseTopology(s); err != nil {
			t.Errorf("ParseTopology(%q): %v", s, err)
		}
	}
	if _, err := ParseTopology("new"); err == nil || !strings.Contains(err.Error(), "--node-topology") || !strings.Contains(err.Error(), "legacy") {
		t.Errorf("ParseTopology(new): %v; want an error naming the flag and the choices", err)
	}
	if d, err := ParseStreamIdleTimeout("30s"); err != nil || d != 30*time.Second {
		t.Errorf("ParseStreamIdleTimeout(30s) = %s, %v", d, err)
	}
	for _, s := range []string{"x", "0", "-1m", "10ms"} {
		if _, err := ParseStreamIdleTimeout(s); err == nil || !strings.Contains(err.Error(), "--streaming-connection-idle-timeout") {
			t.Errorf("ParseStreamIdleTimeout(%q): %v; want an error naming the flag", s, err)
		}
	}
	if got := TopologyCRI.declaredFeatures(); !slices.Equal(got, []string{"ExtendWebSocketsToKubelet"}) {
		t.Errorf("a cri node declares %v, want [ExtendWebSocketsToKubelet]", got)
	}
	if got := TopologyLegacy.declaredFeatures(); len(got) != 0 {
		t.Errorf("a legacy node declares %v, want nothing", got)
	}
}
