package relay

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// hello opens a raw stream to the relay at addr, says HELLO with target,
// and returns the relay's first frame after its opening.
func hello(t *testing.T, addr, target string) Frame {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(append([]byte(Magic), Version))
	c.Write(Append(nil, Frame{Type: TypeHello, Payload: []byte(target)}))
	if err := readMagic(c); err != nil {
		t.Fatalf("HELLO %s: the relay's opening: %v", target, err)
	}
	f, err := NewReader(c).Read()
	if err != nil {
		t.Fatalf("HELLO %s: the relay's answer: %v", target, err)
	}
	f.Payload = bytes.Clone(f.Payload)
	return f
}

// TestTheRelaySendsOnlyWhereItWasMadeTo: a relay made for one
// destination answers OK to it and ERROR, naming what it allows, to any
// other (another port, another address, a name, a mapped form of the
// same address on another port); nothing reaches the others, and a
// client asking for another ends with the relay's reason.
func TestTheRelaySendsOnlyWhereItWasMadeTo(t *testing.T) {
	allowed, other := newUDPServer(t, 1), newUDPServer(t, 1)
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Log: quiet, IdleExit: -1, Allow: allow(allowed.addr)}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()

	if f := hello(t, addr, allowed.addr); f.Type != TypeOK {
		t.Fatalf("HELLO %s (allowed): type %d %q, want OK", allowed.addr, f.Type, f.Payload)
	}
	_, port, _ := net.SplitHostPort(allowed.addr)
	for _, target := range []string{
		other.addr,                // another port
		"10.1.2.3:" + port,        // another address
		"localhost:" + port,       // a name: only literal addresses
		"[::ffff:127.0.0.1]:1",    // a mapped address, another port
		"8.8.8.8:53",              // the open relay of old
		strings.Repeat("x", 1000), // nonsense
	} {
		f := hello(t, addr, target)
		want := "is not allowed: this relay sends only to " + allowed.addr + " (its --allow, fixed when kpf made it)"
		if f.Type != TypeError || !strings.Contains(string(f.Payload), want) {
			t.Errorf("HELLO %.40s: type %d %q, want ERROR %q", target, f.Type, f.Payload, want)
		}
	}
	// The IPv4-mapped form of the allowed destination is that destination.
	if f := hello(t, addr, "[::ffff:127.0.0.1]:"+port); f.Type != TypeOK {
		t.Errorf("HELLO of the allowed destination, IPv4-mapped: type %d %q, want OK", f.Type, f.Payload)
	}

	// kpf's client, asked for another destination, ends with the reason.
	local, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer local.Close()
	c := &Client{Local: local, Target: other.addr, Log: quiet, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	go func() {
		p := peer(t, local.LocalAddr().String())
		p.Write([]byte("to the other one"))
	}()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	var he *HelloError
	if err := c.Serve(cctx); !errors.As(err, &he) || !strings.Contains(he.Msg, "not allowed") {
		t.Fatalf("Client.Serve to another destination: %v, want the relay's refusal", err)
	}
	select {
	case <-c.Ready():
		t.Error("Ready after the relay refused every stream")
	default:
	}
	other.mu.Lock()
	defer other.mu.Unlock()
	if len(other.got) != 0 {
		t.Errorf("the destination the relay was not made for got %d datagrams", len(other.got))
	}
}

// TestARelayWithoutAllowSendsNowhere: the zero Server refuses every
// destination.
func TestARelayWithoutAllowSendsNowhere(t *testing.T) {
	sink := newUDPServer(t, 1)
	ln, _ := Listen("127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&Server{Log: quiet, IdleExit: -1}).Serve(ctx, ln)
	if f := hello(t, ln.Addr().String(), sink.addr); f.Type != TypeError || !strings.Contains(string(f.Payload), "this relay sends nowhere") {
		t.Errorf("type %d %q, want ERROR: sends nowhere", f.Type, f.Payload)
	}
}

// TestTheRelayListensOnLoopbackOnly: Listen takes loopback addresses
// only, and Serve refuses a listener on any other: what the pod's
// network reaches is not the relay.
func TestTheRelayListensOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "10.0.0.7:4090", "example.com:4090"} {
		ln, err := Listen(addr)
		var nl *NotLoopbackError
		if !errors.As(err, &nl) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%q): %v, want a NotLoopbackError", addr, err)
			continue
		}
		if want := "--listen " + addr + ": the relay listens on loopback only"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Listen(%q): %q, want it to begin %q", addr, err, want)
		}
	}
	if _, err := Listen("4090"); err == nil || !strings.Contains(err.Error(), "want 127.0.0.1:PORT") {
		t.Errorf("Listen(\"4090\"): %v", err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	// Serve itself refuses a listener on every interface.
	wide, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer wide.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = (&Server{Log: quiet, IdleExit: -1, Allow: allow("127.0.0.1:9")}).Serve(ctx, wide)
	var nl *NotLoopbackError
	if !errors.As(err, &nl) {
		t.Fatalf("Serve on %s: %v, want a NotLoopbackError", wide.Addr(), err)
	}
	if _, err := wide.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the wide listener was left open: %v", err)
	}
}

// TestReadyOnlyOnceTheRelayAnswers: while nothing listens where the relay
// will be (a container that has just started), Ready stays open and the
// client dials again; datagrams sent meanwhile wait, and reach the target
// once the relay answers.
func TestReadyOnlyOnceTheRelayAnswers(t *testing.T) {
	echo := newUDPServer(t, 1)
	// Reserve a port, and keep nothing on it for now.
	hold, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := hold.Addr().String()
	hold.Close()
	local, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer local.Close()
	var mu sync.Mutex
	dials := 0
	c := &Client{Local: local, Target: echo.addr, Log: quiet, Dial: func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	p := peer(t, local.LocalAddr().String())
	p.Write([]byte("early"))
	waitFor(t, "three refused dials", func() bool { mu.Lock(); defer mu.Unlock(); return dials >= 3 })
	select {
	case <-c.Ready():
		t.Fatal("Ready while nothing listens")
	default:
	}
	ln, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	go (&Server{Log: quiet, IdleExit: -1, Allow: allow(echo.addr)}).Serve(rctx, ln)
	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not Ready 10s after the relay listened")
	}
	buf := make([]byte, 100)
	p.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := p.Read(buf); err != nil || string(buf[:n]) != "early" {
		t.Fatalf("the datagram sent before Ready: %q, %v", buf[:n], err)
	}
}

// TestMoveChangesRelayAndTargetTogether: flows moved to another relay
// made for another destination go on there; neither relay is ever asked
// for the other's destination, though streams are dialled while the
// route changes back and forth.
func TestMoveChangesRelayAndTargetTogether(t *testing.T) {
	type side struct {
		echo *udpServer
		addr string
		dial func(context.Context) (net.Conn, error)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var refused sync.Map
	mk := func() side {
		e := newUDPServer(t, 1)
		ln, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		log := quiet
		s := &Server{Log: log, IdleExit: -1, Allow: allow(e.addr)}
		go s.Serve(ctx, ln)
		return side{echo: e, addr: ln.Addr().String(), dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				return nil, err
			}
			return &watchConn{Conn: c, refused: &refused}, nil
		}}
	}
	a, b := mk(), mk()
	local, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer local.Close()
	c := &Client{Local: local, Target: a.echo.addr, Dial: a.dial, Log: quiet}
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	<-c.Ready()
	p := peer(t, local.LocalAddr().String())
	for i := range 40 {
		to := []side{a, b}[i%2]
		c.Move(to.echo.addr, to.dial)
	}
	// Last Move was to b.
	buf := make([]byte, 100)
	waitFor(t, "an echo through the relay of b", func() bool {
		p.Write([]byte("x"))
		p.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := p.Read(buf)
		if err != nil || string(buf[:n]) != "x" {
			return false
		}
		b.echo.mu.Lock()
		defer b.echo.mu.Unlock()
		return len(b.echo.got) > 0
	})
	select {
	case err := <-done:
		t.Fatalf("Serve ended: %v", err)
	default:
	}
	refused.Range(func(k, _ any) bool {
		t.Errorf("a relay refused: %s", k)
		return true
	})
}

// watchConn records an ERROR frame right after the relay's opening.
type watchConn struct {
	net.Conn
	refused *sync.Map
	seen    []byte
}

func (w *watchConn) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	if len(w.seen) < 9+headerLen+maxControl {
		w.seen = append(w.seen, b[:n]...)
		if len(w.seen) > 9 && w.seen[9] == TypeError {
			w.refused.Store(string(w.seen[9+headerLen:]), true)
		}
	}
	return n, err
}

// TestAllowNamesOneDestination: --allow takes one host's address or DNS
// name and a port. What reads like a wildcard (0.0.0.0, [::], port 0),
// names many hosts (multicast, broadcast) or is no host name is refused
// with the value and the fix, rather than taken as a destination nobody
// meant.
func TestAllowNamesOneDestination(t *testing.T) {
	for _, ok := range []string{"10.0.3.7:53", "[fd00::7]:53", "127.0.0.1:5300", "[::ffff:10.0.3.7]:53", "localhost:53", "orders.abc.eu-west-1.rds.amazonaws.com:5432", "DNS.Example.:53"} {
		if _, err := ParseAllow(ok); err != nil {
			t.Errorf("--allow %s: %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:53", "[::]:53", "10.0.3.7:0", "224.0.0.1:53", "[ff02::1]:53", "255.255.255.255:53", "[::ffff:0.0.0.0]:53", "10.0.3.7", "-a.example:53", "a..b:53", "a b:53", "1.2.3:53", "[fe80::1%eth0]:53", "x.example:65536"} {
		_, err := ParseAllow(bad)
		if err == nil || !strings.Contains(err.Error(), "--allow "+`"`+bad+`"`) || !strings.Contains(err.Error(), "10.0.3.7:53") {
			t.Errorf("--allow %s: %v, want an error naming it and what to give", bad, err)
		}
	}
}
