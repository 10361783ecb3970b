package e2e

// The fault injector: Toxiproxy, as a library, in the test process, on the
// real path between kpf and the API server. Each faultPath is one Toxiproxy
// proxy in front of the sandbox's API server and a kubeconfig whose server
// is that proxy (the API server's certificate covers 127.0.0.1), so that
// every byte kpf exchanges with the cluster (API reads, watches, the
// liveness probe and every tunnel) crosses it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"github.com/rs/zerolog"
	"k8s.io/client-go/tools/clientcmd"
)

func init() {
	// Toxiproxy's registry of toxic types is the library's own (global);
	// ours is registered once for the test binary.
	toxics.Register("idle_cut", new(idleCutToxic))
}

// toxiServer is the in-process Toxiproxy that every faultPath belongs to
// (it serves no HTTP API: the tests call it directly).
var toxiServer = sync.OnceValue(func() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
})

// faultPath is one Toxiproxy proxy between kpf and the API server.
type faultPath struct {
	t          testing.TB
	proxy      *toxiproxy.Proxy
	addr       string // where kpf connects (127.0.0.1:port)
	upstream   string // the API server's host:port
	kubeconfig string // the admin kubeconfig, its server the proxy
	moved      *toxiproxy.Proxy
}

// newFaultPath starts a proxy on a free loopback port in front of the
// sandbox's API server, and a kubeconfig through it; both go at cleanup.
func newFaultPath(t testing.TB, sb *sandboxtest.Sandbox) *faultPath {
	t.Helper()
	fp := startFaultPath(t, strings.TrimPrefix(sb.APIServer, "https://"))
	kc, err := clientcmd.LoadFromFile(sb.Kubeconfig(cluster.UserAdmin))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + fp.addr
	}
	fp.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, fp.kubeconfig); err != nil {
		t.Fatal(err)
	}
	return fp
}

// startFaultPath starts a proxy on a free loopback port in front of
// upstream; it goes at cleanup.
func startFaultPath(t testing.TB, upstream string) *faultPath {
	t.Helper()
	p := toxiproxy.NewProxy(toxiServer(), fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: %v", err)
	}
	fp := &faultPath{t: t, proxy: p, upstream: upstream}
	p.Lock()
	fp.addr = p.Listen
	p.Unlock()
	t.Cleanup(func() {
		p.Stop()
		if fp.moved != nil {
			fp.moved.Stop()
		}
	})
	return fp
}

// toxic is one Toxiproxy toxic: its type, direction ("upstream" is kpf
// to the API server, "downstream" the way back) and attributes.
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Attributes map[string]any `json:"attributes"`
}

// both is the toxic on both directions of every connection.
func both(typ string, attrs map[string]any) []toxic {
	return []toxic{
		{Name: typ + "_up", Type: typ, Stream: "upstream", Attributes: attrs},
		{Name: typ + "_down", Type: typ, Stream: "downstream", Attributes: attrs},
	}
}

// add puts toxics on the path: on the connections it carries now and on
// every new one. Like remove and move, it may be called from any goroutine
// (it fails the test with Errorf).
func (fp *faultPath) add(ts ...toxic) {
	for _, tx := range ts {
		b, err := json.Marshal(tx)
		if err != nil {
			fp.t.Error(err)
			return
		}
		if _, err := fp.proxy.Toxics.AddToxicJson(bytes.NewReader(b)); err != nil {
			fp.t.Errorf("toxiproxy: add %s: %v", tx.Name, err)
		}
	}
}

// remove takes toxics off the path. Toxiproxy closes the connections a
// timeout toxic held (as a blackhole that ends leaves connections whose
// bytes were dropped: they cannot go on).
func (fp *faultPath) remove(ts ...toxic) {
	for _, tx := range ts {
		if err := fp.proxy.Toxics.RemoveToxic(context.Background(), tx.Name); err != nil {
			fp.t.Errorf("toxiproxy: remove %s: %v", tx.Name, err)
		}
	}
}

// move is the API server's address changing under the same name: the
// proxy kpf's kubeconfig names now leads to the API server through a
// second listener (a new address). Toxiproxy closes every connection of
// the old upstream, as a load balancer whose backend moved does; kpf
// keeps its kubeconfig and must carry on through the new path.
func (fp *faultPath) move() {
	next := toxiproxy.NewProxy(toxiServer(), fmt.Sprintf("%s-moved-%d", fp.t.Name(), time.Now().UnixNano()), "127.0.0.1:0", fp.upstream)
	if err := next.Start(); err != nil {
		fp.t.Errorf("toxiproxy: %v", err)
		return
	}
	next.Lock()
	addr := next.Listen
	next.Unlock()
	if fp.moved != nil {
		fp.moved.Stop()
	}
	fp.moved = next
	fp.proxy.Lock()
	listen := fp.proxy.Listen
	fp.proxy.Unlock()
	if err := fp.proxy.Update(&toxiproxy.Proxy{Listen: listen, Upstream: addr, Enabled: true}); err != nil {
		fp.t.Errorf("toxiproxy: move the upstream to %s: %v", addr, err)
	}
}

// idleCutToxic closes a connection on which this direction carried
// nothing for Idle milliseconds: a proxy or load balancer that cuts idle
// tunnels (put on both directions, a connection is cut when either way has
// been silent that long; kpf's pings go one way and their answers the
// other, so a kept-alive tunnel is never idle either way).
type idleCutToxic struct {
	Idle int64 `json:"idle"` // milliseconds
}

func (t *idleCutToxic) Pipe(stub *toxics.ToxicStub) {
	idle := time.Duration(t.Idle) * time.Millisecond
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		select {
		case <-stub.Interrupt:
			return
		case <-timer.C:
			stub.Close()
			return
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			timer.Reset(idle)
			stub.Output <- c
		}
	}
}

// TestFaultPathDoesWhatItSays: the matrix's faults, on a local echo
// server, do what docs/reliability.md says they do: the idle cut closes an
// idle connection and spares a busy one, the blackhole answers nothing and
// closes nothing until it ends, and a moved upstream closes the old
// connections while new ones work. (No sandbox needed.)
func TestFaultPathDoesWhatItSays(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	fp := startFaultPath(t, ln.Addr().String())
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", fp.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// echo sends a byte and waits for it for up to wait.
	echo := func(c net.Conn, wait time.Duration) error {
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(wait))
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}

	t.Run("idle cut", func(t *testing.T) {
		idle, busy := dial(), dial()
		for _, c := range []net.Conn{idle, busy} {
			if err := echo(c, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		cut := both("idle_cut", map[string]any{"idle": 500})
		fp.add(cut...)
		defer fp.remove(cut...)
		start := time.Now()
		for time.Since(start) < 2*time.Second {
			if err := echo(busy, 5*time.Second); err != nil {
				t.Fatalf("a connection busy every 100 ms was cut after %s: %v", time.Since(start), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		idle.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("a connection idle for 2 s past a 500 ms idle cut: %v, want it closed", err)
		}
	})

	t.Run("blackhole", func(t *testing.T) {
		c := dial()
		if err := echo(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		hole := both("timeout", map[string]any{"timeout": 0})
		fp.add(hole...)
		if err := echo(c, time.Second); !isTimeout(err) {
			t.Fatalf("an echo into the blackhole: %v, want no answer and no close", err)
		}
		fresh := dial()
		if err := echo(fresh, time.Second); !isTimeout(err) {
			t.Fatalf("a new connection in the blackhole: %v, want no answer", err)
		}
		fp.remove(hole...)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("a connection held by the blackhole after it ended: %v, want it closed", err)
		}
		if err := echo(dial(), 5*time.Second); err != nil {
			t.Fatalf("a new connection after the blackhole: %v", err)
		}
	})

	t.Run("moved", func(t *testing.T) {
		old := dial()
		if err := echo(old, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		fp.move()
		old.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := old.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("a connection to the old address after the move: %v, want it closed", err)
		}
		if err := echo(dial(), 5*time.Second); err != nil {
			t.Fatalf("a new connection after the move: %v", err)
		}
	})
}
