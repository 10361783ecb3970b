package forward

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/meter"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func addrs(t *testing.T, s ...string) []portspec.Address {
	a, err := portspec.ParseAddresses(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestListenRandomPortIsSharedAcrossAddresses(t *testing.T) {
	var out, errOut syncBuffer
	ls, _, err := Listen(addrs(t, "localhost"), []portspec.Resolved{{Local: 0, Remote: 80}}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(ls)
	port := ls[0].Port.Local
	for _, l := range ls {
		if l.Port.Local != port {
			t.Errorf("ports differ: %d and %d", port, l.Port.Local)
		}
	}
	want := "Forwarding from 127.0.0.1:" + strconv.Itoa(int(port)) + " -> 80\n"
	if !strings.HasPrefix(out.String(), want) {
		t.Errorf("output %q, want it to start with %q", out.String(), want)
	}
	if errOut.String() != "" {
		t.Errorf("unexpected warnings: %q", errOut.String())
	}
}

func closeAll(ls []*Listener) {
	for _, l := range ls {
		l.Close()
	}
}

func TestListenPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := uint16(busy.Addr().(*net.TCPAddr).Port)
	var out, errOut syncBuffer
	// Explicit address: its failure fails the port, and with it the forward.
	_, _, err = Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: port, Remote: 80}}, &out, &errOut)
	if !errors.Is(err, ErrNoListener) {
		t.Fatalf("err = %v, want ErrNoListener", err)
	}
	wantMsg := "address already in use (another process holds port " + strconv.Itoa(int(port)) + "; pick another local port, or use :80 for a free one)"
	if !strings.Contains(errOut.String(), wantMsg) {
		t.Errorf("stderr %q lacks %q", errOut.String(), wantMsg)
	}
	// localhost: ::1 may still bind, and that is enough (kubectl's rule);
	// on a machine without an IPv6 loopback nothing binds, and the port
	// fails as with an explicit address.
	out, errOut = syncBuffer{}, syncBuffer{}
	v6 := ipv6Loopback(port)
	ls, unbound, err := Listen(addrs(t, "localhost"), []portspec.Resolved{{Local: port, Remote: 80}}, &out, &errOut)
	switch {
	case v6:
		if err != nil {
			t.Fatalf("localhost with ::1 free: %v, want a listener on ::1", err)
		}
		defer closeAll(ls)
		// ... but not silently: which address, and why (kubectl says
		// nothing; a client that resolves localhost to 127.0.0.1 finds
		// the other process).
		p := strconv.Itoa(int(port))
		want := "not listening on 127.0.0.1:" + p + ": address already in use (another process holds port " + p + "; pick another local port, or use :80 for a free one)"
		if len(unbound) != 1 || unbound[0].Error() != want || !errors.Is(unbound[0], syscall.EADDRINUSE) {
			t.Errorf("unbound %v, want one: %q", unbound, want)
		}
		if line := "Warning: " + want + "; the port listens on [::1]:" + p + " only\n"; errOut.String() != line {
			t.Errorf("stderr %q, want %q", errOut.String(), line)
		}
		if len(ls) != 1 || !ls[0].Addr().(*net.TCPAddr).IP.Equal(net.IPv6loopback) {
			t.Errorf("listeners %v, want only [::1]", ls)
		}
		if want := "Forwarding from [::1]:" + strconv.Itoa(int(port)) + " -> 80"; !strings.Contains(out.String(), want) {
			t.Errorf("stdout %q lacks %q", out.String(), want)
		}
	default:
		if !errors.Is(err, ErrNoListener) || len(ls) != 0 {
			t.Fatalf("localhost without ::1: listeners %v, err %v; want ErrNoListener", ls, err)
		}
		if !strings.Contains(errOut.String(), wantMsg) {
			t.Errorf("stderr %q lacks %q", errOut.String(), wantMsg)
		}
	}
	// Two ports, one busy: the forward goes on with the other.
	out, errOut = syncBuffer{}, syncBuffer{}
	ls, _, err = Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: port, Remote: 80}, {Local: 0, Remote: 81}}, &out, &errOut)
	if err != nil {
		t.Fatalf("one free port should be enough: %v", err)
	}
	closeAll(ls)
	if !strings.Contains(errOut.String(), "Unable to listen on port "+strconv.Itoa(int(port))) {
		t.Errorf("stderr %q does not name the busy port", errOut.String())
	}
}

// ipv6Loopback says whether this machine can listen on [::1]:port.
func ipv6Loopback(port uint16) bool {
	ln, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(int(port))))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func TestListenWarnsOffLoopback(t *testing.T) {
	var out, errOut syncBuffer
	ls, _, err := Listen([]portspec.Address{{IP: netip.MustParseAddr("0.0.0.0")}}, []portspec.Resolved{{Local: 0, Remote: 80}}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ls)
	if !strings.Contains(errOut.String(), "Warning: listening on 0.0.0.0:") || !strings.Contains(errOut.String(), "reachable from the network") {
		t.Errorf("no warning for 0.0.0.0: %q", errOut.String())
	}
}

// fakeTunnel echoes, except to remote port 666, which it refuses.
type fakeTunnel struct{ done chan struct{} }

func (f *fakeTunnel) Forward(_ context.Context, c net.Conn, port uint16, m *meter.Meter) (tunnel.Stats, error) {
	if port == 666 {
		return tunnel.Stats{}, &tunnel.RemoteError{Pod: "ns/p", Port: port, Message: "connection refused"}
	}
	if port == 667 { // a tunnel lost mid-stream, after a byte each way
		c.Read(make([]byte, 1))
		io.WriteString(c, "partial")
		return tunnel.Stats{In: 7}, errLost
	}
	n, err := io.Copy(c, c)
	m.AddIn(n)
	m.AddOut(n)
	return tunnel.Stats{In: n, Out: n}, err
}

func (f *fakeTunnel) Done() <-chan struct{} { return f.done }
func (f *fakeTunnel) Err() error            { return errLost }

var errLost = errors.New("lost")

func TestServeSurvivesAFailedConnection(t *testing.T) {
	var out, errOut syncBuffer
	ls, cancel, served := serveFake(t, 666, &out, &errOut)
	bad, good := ls[0].Addr().String(), ls[1].Addr().String()
	for range 3 {
		c, err := net.Dial("tcp", bad)
		if errors.Is(err, syscall.ECONNRESET) {
			// The fake refuses at once: the reset can beat the dial.
			echoOnce(t, good)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, _ := c.Read(make([]byte, 1)); n != 0 {
			t.Error("refused connection delivered data")
		}
		c.Close()
		echoOnce(t, good)
	}
	if !strings.Contains(errOut.String(), "refused the connection to port 666: nothing listens there") {
		t.Errorf("log lacks the reason: %q", errOut.String())
	}
	if got := strings.Count(out.String(), "Handling connection for"); got != 6 {
		t.Errorf("%d Handling lines, want 6:\n%s", got, out.String())
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve after cancel = %v, want nil", err)
	}
	if _, err := net.Dial("tcp", good); err == nil {
		t.Error("listener still open after Serve returned")
	}
}

// TestFailedConnectionIsReset: a connection whose tunnel failed mid-stream
// ends with a reset, after the bytes that came before it: its client sees
// an error, not the end of a stream that looks whole.
func TestFailedConnectionIsReset(t *testing.T) {
	var out, errOut syncBuffer
	ls, cancel, served := serveFake(t, 667, &out, &errOut)
	defer func() { cancel(); <-served }()
	c, err := net.Dial("tcp", ls[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "x")
	got, err := io.ReadAll(c)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection whose tunnel failed: read %q, then %v; want \"partial\", then a reset", got, err)
	}
	// One that ends well ends with a FIN.
	c2, err := net.Dial("tcp", ls[1].Addr().String())
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c2, "ok")
	c2.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c2); string(got) != "ok" || err != nil {
		t.Fatalf("a connection that ended well: read %q, %v; want \"ok\" and its end", got, err)
	}
}

// serveFake serves two ports through a fakeTunnel: remote (which the fake
// answers as its test needs) and 7 (echo); cancel stops Serve, whose
// result comes on served.
func serveFake(t *testing.T, remote uint16, out, errOut *syncBuffer) ([]*Listener, context.CancelFunc, chan error) {
	t.Helper()
	ls, _, err := Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: 0, Remote: remote}, {Local: 0, Remote: 7}}, out, errOut)
	if err != nil {
		t.Fatal(err)
	}
	tun := &fakeTunnel{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, ls, tun, out, slog.New(slog.NewTextHandler(errOut, nil)), Options{})
	}()
	return ls, cancel, served
}

func echoOnce(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "ping" {
		t.Fatalf("echo through %s = %q, %v", addr, b, err)
	}
}

func TestServeEndsWhenTheTunnelIsLost(t *testing.T) {
	var out, errOut syncBuffer
	ls, _, err := Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: 0, Remote: 7}}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	tun := &fakeTunnel{done: make(chan struct{})}
	close(tun.done)
	if err := Serve(context.Background(), ls, tun, &out, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{}); !errors.Is(err, errLost) {
		t.Errorf("Serve = %v, want the backend's error", err)
	}
}

func TestServeIdleTimeout(t *testing.T) {
	var out syncBuffer
	ls, _, err := Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: 0, Remote: 7}}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	tun := &fakeTunnel{done: make(chan struct{})}
	served := make(chan error, 1)
	start := time.Now()
	go func() {
		served <- Serve(context.Background(), ls, tun, &out, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{IdleTimeout: 300 * time.Millisecond})
	}()
	// A connection held open keeps the forward alive past the timeout.
	c, err := net.Dial("tcp", ls[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	c.Read(buf)
	select {
	case err := <-served:
		t.Fatalf("Serve ended with a connection open: %v", err)
	case <-time.After(600 * time.Millisecond):
	}
	c.Close()
	if err := <-served; !errors.Is(err, ErrIdle) {
		t.Fatalf("Serve = %v, want ErrIdle", err)
	}
	if time.Since(start) < 900*time.Millisecond {
		t.Errorf("ended after %s: before the idle time had passed", time.Since(start))
	}
}

func TestExplainListenPermission(t *testing.T) {
	err := explainListen(&net.OpError{Op: "listen", Err: syscall.EACCES}, netip.MustParseAddr("127.0.0.1"), portspec.Resolved{Local: 80, Remote: 80})
	if !strings.Contains(err.Error(), "ports below 1024 need privileges") {
		t.Errorf("got %v", err)
	}
}

// Stopping a forward (Ctrl-C, kpf down) cuts its open connections without
// logging each as a failed one.
func TestStoppingLogsNoFailedConnections(t *testing.T) {
	var out, errOut syncBuffer
	ls, _, err := Listen(addrs(t, "127.0.0.1"), []portspec.Resolved{{Local: 0, Remote: 7}}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	tun := &fakeTunnel{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, ls, tun, &out, slog.New(slog.NewTextHandler(&errOut, nil)), Options{})
	}()
	c, err := net.Dial("tcp", ls[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil { // it is being forwarded
		t.Fatal(err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if strings.Contains(errOut.String(), "connection failed") {
		t.Errorf("stopping logged the open connection as failed:\n%s", errOut.String())
	}
}
