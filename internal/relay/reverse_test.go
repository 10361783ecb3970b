package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/testnet"
)

// exposeServer runs a relay with one exposed port and returns its
// address and the relay's stream address.
func exposeServer(t *testing.T, tweak func(*Server)) (exposed, control string) {
	t.Helper()
	ctl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: quiet, IdleExit: -1, Reverses: []Reverse{{Port: 80, Listener: rl}}}
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
	return rl.Addr().String(), ctl.Addr().String()
}

// runExposer holds an exposure of port 80 to local until the test ends;
// it returns once the relay accepted the control stream.
func runExposer(t *testing.T, control, local string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{}, 1)
	e := &Exposer{
		Dial:  func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", control) },
		Local: func(p uint16) (string, bool) { return local, p == 80 },
		Log:   quiet, Ping: time.Second,
		OnControl: func(err error) {
			if err == nil {
				select {
				case up <- struct{}{}:
				default:
				}
			}
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); e.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-up:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not accept the control stream within 5 s")
	}
}

// A connection to the exposed port reaches the local side byte-exact both
// ways, the end of each side's input passed on (half-close); several at
// once, a stalled one holding up no other.
func TestExposeCarriesConnections(t *testing.T) {
	exposed, control := exposeServer(t, nil)
	local := tcpEcho(t, "|end")
	runExposer(t, control, local)

	// A connection that sends and never reads nor ends: it must not stall
	// the others.
	stalled, err := net.Dial("tcp", exposed)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	go stalled.Write(make([]byte, 4<<20))

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := make([]byte, 256<<10+i)
			rand.Read(body)
			c, err := net.Dial("tcp", exposed)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			go func() {
				c.Write(body)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			if !bytes.Equal(got, append(body, "|end"...)) {
				t.Errorf("connection %d: got %d bytes, want the %d sent and the trailer", i, len(got), len(body))
			}
		}()
	}
	wg.Wait()
}

// With no kpf holding the exposure, a connection is reset, not left
// hanging.
func TestExposeWithoutControlResets(t *testing.T) {
	exposed, _ := exposeServer(t, nil)
	c, err := net.Dial("tcp", exposed)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return // reset before the dial returned
		}
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %v, want the connection ended", err)
	}
}

// A local side that refuses resets the cluster's connection at once; a
// connection kpf never takes is reset after JoinTimeout.
func TestExposeLocalRefusedAndJoinTimeout(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().String()
	ln.Close()
	exposed, control := exposeServer(t, nil)
	runExposer(t, control, refused)
	c, err := net.Dial("tcp", exposed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read a byte from a connection whose local side refused")
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("the refused connection ended after %s, want at once", time.Since(start))
	}

	exposed2, control2 := exposeServer(t, func(s *Server) { s.JoinTimeout = 300 * time.Millisecond })
	conn, err := net.Dial("tcp", control2)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := Expose(conn, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var ids []uint32
	go Control(context.Background(), conn, time.Second, func(id uint32, port uint16) {
		mu.Lock()
		ids = append(ids, id)
		mu.Unlock()
	})
	c2, err := net.Dial("tcp", exposed2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	testnet.Within(t, 5*time.Second, "the relay announces the connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == 1
	})
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("read a byte from a connection no kpf took")
	}
	// Too late: the relay says so.
	late, err := net.Dial("tcp", control2)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	var he *HelloError
	if err := Join(late, ids[0], "", 5*time.Second); !errors.As(err, &he) {
		t.Fatalf("Join of a connection reset long ago: %v, want the relay's refusal", err)
	}
}

// A control stream that dies (kpf's tunnel dropped) is dialled again, and
// the exposed port answers again within seconds.
func TestExposeRedialsTheControlStream(t *testing.T) {
	exposed, control := exposeServer(t, nil)
	local := tcpEcho(t, "|end")
	var mu sync.Mutex
	var streams []net.Conn
	ups := make(chan struct{}, 4)
	ctx, cancel := context.WithCancel(context.Background())
	e := &Exposer{
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", control)
			if err == nil {
				mu.Lock()
				streams = append(streams, c)
				mu.Unlock()
			}
			return c, err
		},
		Local: func(uint16) (string, bool) { return local, true },
		Log:   quiet, Ping: time.Second,
		OnControl: func(err error) {
			if err == nil {
				ups <- struct{}{}
			}
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); e.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	<-ups
	mu.Lock()
	streams[0].Close() // the first stream is the control stream
	mu.Unlock()
	select {
	case <-ups:
	case <-time.After(5 * time.Second):
		t.Fatal("the control stream was not dialled again within 5 s")
	}
	c, err := net.Dial("tcp", exposed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "again")
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "again|end" {
		t.Fatalf("after the redial: %q, %v", got, err)
	}
}
