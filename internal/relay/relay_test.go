package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

var quiet = slog.New(slog.DiscardHandler)

// udpServer answers each datagram with replies copies of it (0: none),
// and keeps what it got.
type udpServer struct {
	c    *net.UDPConn
	mu   sync.Mutex
	got  [][]byte
	addr string
}

func newUDPServer(t *testing.T, replies int) *udpServer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	s := &udpServer{c: c, addr: c.LocalAddr().String()}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, bytes.Clone(buf[:n]))
			s.mu.Unlock()
			for range replies {
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	return s
}

// harness is a relay server on a TCP port and a client whose streams go
// straight to it.
type harness struct {
	client    *Client
	relay     *Server
	local     string // the client's UDP address
	relayAddr string // the relay's TCP address
	mu        sync.Mutex
	streams   []net.Conn // the client's streams, to break them
	done      chan error
}

func start(t *testing.T, target string, tweak func(*Client, *Server)) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{relay: &Server{Log: quiet, IdleExit: -1, Allow: allow(target)}, relayAddr: ln.Addr().String(), done: make(chan error, 1)}
	local, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	local.SetReadBuffer(4 << 20)
	h.local = local.LocalAddr().String()
	h.client = &Client{Local: local, Target: target, Log: quiet, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err == nil {
			h.mu.Lock()
			h.streams = append(h.streams, c)
			h.mu.Unlock()
		}
		return c, err
	}}
	if tweak != nil {
		tweak(h.client, h.relay)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go h.relay.Serve(ctx, ln)
	go func() { h.done <- h.client.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Error("the client did not stop within 10s of its context ending")
		}
		local.Close()
	})
	return h
}

// allow is the destinations of targets that are IP:PORT.
func allow(targets ...string) []Dest {
	var out []Dest
	for _, t := range targets {
		if d, err := ParseDest(t); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// peer is a local client of the forward.
func peer(t *testing.T, to string) *net.UDPConn {
	t.Helper()
	raddr, _ := net.ResolveUDPAddr("udp", to)
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDatagramsKeepTheirBoundariesAndPeers: 8 peers at once send
// datagrams of random sizes (1 to 65,507 bytes; the largest and smallest
// always among them); every one comes back, byte for byte, to the peer
// that sent it.
func TestDatagramsKeepTheirBoundariesAndPeers(t *testing.T) {
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, nil)
	const peers, each = 8, 250
	var wg sync.WaitGroup
	errs := make(chan error, peers)
	for p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := peer(t, h.local)
			rng := rand.New(rand.NewPCG(uint64(p), 7))
			buf := make([]byte, 65536)
			for i := range each {
				n := 1 + rng.IntN(MaxDatagram)
				switch i {
				case 0:
					n = MaxDatagram
				case 1:
					n = 1
				}
				msg := make([]byte, n)
				for j := range msg {
					msg[j] = byte(rng.Uint32())
				}
				copy(msg, fmt.Sprintf("peer %d #%d", p, i))
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				got, err := c.Read(buf)
				if err != nil {
					errs <- fmt.Errorf("peer %d datagram %d (%d bytes): %w", p, i, n, err)
					return
				}
				if !bytes.Equal(buf[:got], msg) {
					errs <- fmt.Errorf("peer %d datagram %d: got %d bytes %.20q, want %d bytes %.20q", p, i, got, buf[:got], n, msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := h.client.DatagramsIn.Load(), int64(peers*each); got != want {
		t.Errorf("DatagramsIn %d, want %d", got, want)
	}
	if h.client.Peers() != peers {
		t.Errorf("%d flows, want one per peer (%d)", h.client.Peers(), peers)
	}
}

// TestManyRepliesAndNone: a server that answers each datagram three times
// (every answer reaches the peer), and one that never answers (statsd,
// syslog: every datagram reaches it).
func TestManyRepliesAndNone(t *testing.T) {
	three := newUDPServer(t, 3)
	h := start(t, three.addr, nil)
	c := peer(t, h.local)
	buf := make([]byte, 100)
	for i := range 20 {
		c.Write([]byte(fmt.Sprintf("q%d", i)))
		for k := range 3 {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != fmt.Sprintf("q%d", i) {
				t.Fatalf("reply %d to q%d: %q, %v", k, i, buf[:n], err)
			}
		}
	}
	sink := newUDPServer(t, 0)
	h2 := start(t, sink.addr, nil)
	c2 := peer(t, h2.local)
	for i := range 100 {
		c2.Write([]byte(fmt.Sprintf("<14>line %d", i)))
	}
	waitFor(t, "100 lines at the sink", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.got) == 100
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for i, g := range sink.got {
		if string(g) != fmt.Sprintf("<14>line %d", i) {
			t.Fatalf("line %d: %q", i, g)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFlowsOutliveTheirStream: the stream breaks (a pod gone, a tunnel
// lost); the client dials a new one and its peers' flows go on over it,
// replies still reaching the right peer.
func TestFlowsOutliveTheirStream(t *testing.T) {
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, nil)
	a, b := peer(t, h.local), peer(t, h.local)
	roundTrip := func(c *net.UDPConn, msg string) {
		t.Helper()
		buf := make([]byte, 100)
		for range 50 { // the first datagrams after a break may be lost, as UDP may
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if n, err := c.Read(buf); err == nil {
				if string(buf[:n]) != msg {
					t.Fatalf("sent %q, got %q", msg, buf[:n])
				}
				return
			}
		}
		t.Fatalf("%q never came back", msg)
	}
	roundTrip(a, "a1")
	roundTrip(b, "b1")
	h.mu.Lock()
	first := h.streams[0]
	h.mu.Unlock()
	first.Close()
	waitFor(t, "a second stream", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.streams) >= 2 })
	roundTrip(a, "a2")
	roundTrip(b, "b2")
	if h.client.Peers() != 2 {
		t.Errorf("%d flows after the break, want 2", h.client.Peers())
	}
}

// TestIdleFlowsClose: a peer silent for the idle timeout loses its flow
// (and the relay its socket).
func TestIdleFlowsClose(t *testing.T) {
	echo := newUDPServer(t, 1)
	h := start(t, echo.addr, func(c *Client, _ *Server) { c.IdleTimeout = 300 * time.Millisecond })
	c := peer(t, h.local)
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle flow closed", func() bool { return h.client.Peers() == 0 })
}

// TestRefusedTargetEndsServe: a target the relay was not made for ends
// the client with the relay's reason.
func TestRefusedTargetEndsServe(t *testing.T) {
	h := start(t, "no-such-host.invalid:53", func(_ *Client, s *Server) { s.Allow = allow("127.0.0.1:9") })
	select {
	case err := <-h.done:
		var he *HelloError
		if !errors.As(err, &he) {
			t.Fatalf("Serve: %v, want a HelloError", err)
		}
		h.done <- err // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("Serve went on with a target the relay refused")
	}
}

// TestRelayExitsWithoutItsClient: a relay whose client stopped talking
// drops the stream after ClientTimeout and exits after IdleExit: what
// removes a relay pod when kpf is killed.
func TestRelayExitsWithoutItsClient(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	s := &Server{Log: quiet, ClientTimeout: 300 * time.Millisecond, IdleExit: 500 * time.Millisecond, Allow: allow("127.0.0.1:9")}
	res := make(chan error, 1)
	go func() { res <- s.Serve(context.Background(), ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(append([]byte(Magic), Version))
	c.Write(Append(nil, Frame{Type: TypeHello, Payload: []byte("127.0.0.1:9")}))
	// ... and then nothing: a kpf that was killed, its socket kept open.
	start := time.Now()
	select {
	case err := <-res:
		if !errors.Is(err, ErrIdleExit) {
			t.Fatalf("Serve: %v, want ErrIdleExit", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("exited after %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay kept running without a client")
	}
}

// TestMalformedStreamsAreRefused: a stream that is not the protocol, or
// a newer version, or a frame that breaks it, gets an ERROR and is closed;
// no datagram of it is sent.
func TestMalformedStreamsAreRefused(t *testing.T) {
	sink := newUDPServer(t, 0)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&Server{Log: quiet, IdleExit: -1, Allow: allow(sink.addr)}).Serve(ctx, ln)
	hello := Append(nil, Frame{Type: TypeHello, Payload: []byte(sink.addr)})
	for name, tc := range map[string]struct {
		send []byte
		want string
	}{
		"not kpf":     {[]byte("GET / HTTP/1.1\r\n\r\n"), ""},
		"version 9":   {append([]byte(Magic), 9), ""},
		"oversized":   {append(append(append([]byte(Magic), Version), hello...), 4, 0, 0xff, 0xff, 0, 0, 0, 1), "relay protocol"},
		"flow 0 data": {append(append(append([]byte(Magic), Version), hello...), Append(nil, Frame{Type: TypeData, Payload: []byte("x")})...), "DATA of flow 0"},
		"unknown":     {append(append(append([]byte(Magic), Version), hello...), 99, 0, 0, 0, 0, 0, 0, 0), "unknown frame type 99"},
		// The first frame breaks the rules: the relay still says why.
		"hello over 1,024 bytes": {append(append([]byte(Magic), Version), Append(nil, Frame{Type: TypeHello, Payload: bytes.Repeat([]byte("x"), 2000)})...), "relay protocol"},
		"reserved byte first":    {append(append([]byte(Magic), Version), 1, 1, 0, 0, 0, 0, 0, 0), "relay protocol"},
	} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(tc.send)
		var all bytes.Buffer
		all.ReadFrom(c) // until the relay closes
		c.Close()
		if !bytes.Contains(all.Bytes(), []byte(tc.want)) {
			t.Errorf("%s: the relay answered %q, want %q in it", name, all.Bytes(), tc.want)
		}
	}
	time.Sleep(100 * time.Millisecond)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.got) != 0 {
		t.Errorf("malformed streams delivered %d datagrams", len(sink.got))
	}
}

// TestProbesDoNotKeepTheRelayAlive: connections that say nothing (a TCP
// readiness probe every second) are not clients: the relay still exits.
func TestProbesDoNotKeepTheRelayAlive(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	s := &Server{Log: quiet, ClientTimeout: time.Second, IdleExit: 700 * time.Millisecond}
	res := make(chan error, 1)
	go func() { res <- s.Serve(context.Background(), ln) }()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				c.Close()
			}
		}
	}()
	select {
	case err := <-res:
		if !errors.Is(err, ErrIdleExit) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("probe connections kept the relay running")
	}
}
