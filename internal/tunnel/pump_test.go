package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// failingStream delivers a few bytes from the pod, then fails as a tunnel
// lost mid-stream does.
type failingStream struct{ done chan struct{} }

func (f failingStream) copyIn(l net.Conn) (int64, error) {
	n, _ := io.WriteString(l, "partial")
	return int64(n), errors.New("spdy: connection closed")
}
func (f failingStream) copyOut(l net.Conn) (int64, error) { <-f.done; return 0, nil }
func (f failingStream) closeWrite()                       {}
func (f failingStream) reset() {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
}

// TestPumpResetsAFailedConnection: when the tunnel fails under a
// connection, its client reads what came before, then a reset: an error,
// not the end of a stream that looks whole (the fault matrix's blackhole
// found kpf closing it with a FIN).
func TestPumpResetsAFailedConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	local, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	errDone := make(chan struct{})
	close(errDone)
	if _, err := pump(context.Background(), local, failingStream{make(chan struct{})}, errDone, func() error { return nil }, nil); err == nil {
		t.Fatal("pump returned no error for a failed stream")
	}
	client.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client read %q, then %v; want \"partial\", then a reset", got, err)
	}
}
