package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpEcho echoes each connection, half-close aware: at the end of its
// input it sends a trailer, then closes its write side.
func tcpEcho(t *testing.T, trailer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				io.WriteString(c, trailer)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// routeServer runs a relay whose one route pipes to dest, and returns the
// route's address.
func routeServer(t *testing.T, dest string, tweak func(*Server)) (routeAddr string, s *Server, control string, done chan error) {
	t.Helper()
	d, err := ParseDest(dest)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s = &Server{Log: quiet, IdleExit: -1, Routes: []Route{{Listener: rl, Dest: d}}, dialLoopback: true}
	if tweak != nil {
		tweak(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- s.Serve(ctx, ctl) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10 s of its context ending")
		}
	})
	return rl.Addr().String(), s, ctl.Addr().String(), ch
}

// TestRouteByteExactHalfClose: a route carries 4 MiB each way byte for
// byte; the client's half-close reaches the destination, whose answer
// after it (a trailer) still comes back, then the end of input.
func TestRouteByteExactHalfClose(t *testing.T) {
	addr, _, _, _ := routeServer(t, tcpEcho(t, "END"), nil)
	var wg sync.WaitGroup
	for range 4 { // a few at once, each its own
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := make([]byte, 4<<20)
			rand.Read(msg)
			go func() {
				c.Write(msg)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Error(err)
				return
			}
			if !bytes.Equal(got, append(msg, "END"...)) {
				t.Errorf("%d bytes back, want %d and the trailer, byte for byte", len(got), len(msg)+3)
			}
		}()
	}
	wg.Wait()
}

// TestRouteUnreachableResets: a destination that refuses resets the
// client's connection (an error, not an empty answer).
func TestRouteUnreachableResets(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	addr, _, _, _ := routeServer(t, closed, nil)
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return // the reset came first
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v, want a reset", err)
	}
}

// TestRouteRefusesLoopback: the relay never dials its pod's own
// loopback, whatever the route names (an address, or a name that
// resolves there): a route to its own listener would dial itself for
// every connection it makes, without end. The client's connection is
// reset, and the loopback listener never hears of it.
func TestRouteRefusesLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, dest := range []string{ln.Addr().String(), net.JoinHostPort("localhost", strconv.Itoa(port))} {
		addr, _, _, _ := routeServer(t, dest, func(s *Server) { s.dialLoopback = false })
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) { // at the dial, or after
			t.Fatalf("a route to %s: read %v, want a reset", dest, err)
		}
	}
	select {
	case <-accepted:
		t.Fatal("the relay dialled a loopback destination")
	default:
	}
}

// TestParseRouteRefusesLoopback: --tcp to loopback is refused when the
// relay starts, naming the value and why.
func TestParseRouteRefusesLoopback(t *testing.T) {
	for _, s := range []string{"4091=127.0.0.1:4090", "4091=127.3.2.1:80", "4091=[::1]:80", "4091=[::ffff:127.0.0.1]:80", "4091=localhost:4090", "4091=db.localhost:5432"} {
		_, err := ParseRoute(s)
		if !errors.Is(err, ErrLoopback) || !strings.Contains(err.Error(), s) {
			t.Errorf("ParseRoute(%q): %v, want ErrLoopback naming the value", s, err)
		}
	}
	if _, err := ParseRoute("4091=10.0.0.1:80"); err != nil {
		t.Errorf("ParseRoute of a pod's address: %v", err)
	}
}

// TestRouteNotOnLoopbackRefused: Serve refuses a route listener beyond
// loopback, as it refuses such a stream listener.
func TestRouteNotOnLoopbackRefused(t *testing.T) {
	wide, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	ctl, _ := Listen("127.0.0.1:0")
	s := &Server{Log: quiet, Routes: []Route{{Listener: wide, Dest: Dest{Host: "10.0.0.1", Port: 80}}}}
	var nl *NotLoopbackError
	if err := s.Serve(context.Background(), ctl); !errors.As(err, &nl) {
		t.Fatalf("Serve: %v, want a NotLoopbackError", err)
	}
}

// TestCheckKeepsRelayAlive: a stream that opened with PING (Check) and
// pings on (Keep) is a client: the relay does not exit while it lasts,
// and exits once it is gone.
func TestCheckKeepsRelayAlive(t *testing.T) {
	_, _, ctl, done := routeServer(t, "127.0.0.1:9", func(s *Server) {
		s.IdleExit = 300 * time.Millisecond
		s.ClientTimeout = time.Second
	})
	c, err := net.Dial("tcp", ctl)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan error, 1)
	go func() { kept <- Keep(ctx, c, 100*time.Millisecond) }()
	select {
	case err := <-done:
		t.Fatalf("the relay exited with a client: %v", err)
	case err := <-kept:
		t.Fatalf("Keep: %v", err)
	case <-time.After(2 * time.Second): // 6 idle exits' worth
	}
	cancel()
	<-kept
	select {
	case err := <-done:
		done <- err // for the cleanup
		if !errors.Is(err, ErrIdleExit) {
			t.Fatalf("Serve: %v, want ErrIdleExit", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not exit once its client was gone")
	}
}

// TestVersionMismatch: each side names the other's version and the fix.
// A relay that reads another version answers with its own opening and an
// ERROR saying so; kpf that reads another version's opening says to run
// its own release's relay image.
func TestVersionMismatch(t *testing.T) {
	_, _, ctl, _ := routeServer(t, "127.0.0.1:9", nil)
	c, err := net.Dial("tcp", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(append([]byte(Magic), 3))
	if err := readMagic(c); err != nil {
		t.Fatal(err)
	}
	f, err := NewReader(c).Read()
	if err != nil || f.Type != TypeError || string(f.Payload) != "kpf speaks relay protocol version 3 and this relay version 2: run kpf and the relay image of the same release" {
		t.Fatalf("answer to version 3: %v %q, %v", f.Type, f.Payload, err)
	}

	// A relay of version 3, as kpf of version 2 sees it.
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		io.ReadFull(b, make([]byte, len(Magic)+1+headerLen+5))
		b.Write(append([]byte(Magic), 3))
		b.Close()
	}()
	err = Check(a, 5*time.Second)
	var ve *VersionError
	if !errors.As(err, &ve) || err.Error() != "relay protocol: the relay speaks version 3 and this kpf version 2: run the relay image of this kpf's release (--relay-image; kpf relay image prints it)" {
		t.Fatalf("Check against version 3: %v", err)
	}
}

// TestHelloOtherDestinationRefused: a route's relay refuses a HELLO for a
// destination it was not made for, naming what it allows.
func TestHelloOtherDestinationRefused(t *testing.T) {
	_, _, ctl, _ := routeServer(t, "127.0.0.1:9", func(s *Server) { s.Allow = allow("orders.example:53") })
	c, err := net.Dial("tcp", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	writeMagic(c)
	c.Write(Append(nil, Frame{Type: TypeHello, Payload: []byte("10.9.9.9:53")}))
	if err := readMagic(c); err != nil {
		t.Fatal(err)
	}
	f, err := NewReader(c).Read()
	if err != nil || f.Type != TypeError || !strings.Contains(string(f.Payload), `destination "10.9.9.9:53" is not allowed: this relay sends only to orders.example:53`) {
		t.Fatalf("answer: %d %q, %v", f.Type, f.Payload, err)
	}
}
