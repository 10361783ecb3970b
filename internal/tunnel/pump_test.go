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
func (f failingStream) finished() (fin, known bool)       { return false, true }
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
	if _, err := pump(context.Background(), local, failingStream{make(chan struct{})}, closed(), func() error { return nil }, nil); err == nil {
		t.Fatal("pump returned no error for a failed stream")
	}
	client.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client read %q, then %v; want \"partial\", then a reset", got, err)
	}
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// endingStream sends what it was given from the pod, then ends the copy
// without an error of its own (as a FIN does, and as client-go's streams
// report a reset and the tunnel's loss too); fin and known are what
// finished says. The local client never writes.
type endingStream struct {
	send       string
	fin, known bool
	done       chan struct{}
}

func (e endingStream) copyIn(l net.Conn) (int64, error) {
	n, _ := io.WriteString(l, e.send)
	return int64(n), nil
}
func (e endingStream) copyOut(l net.Conn) (int64, error) { <-e.done; return 0, nil }
func (e endingStream) closeWrite()                       {}
func (e endingStream) finished() (fin, known bool)       { return e.fin, e.known }
func (e endingStream) reset() {
	select {
	case <-e.done:
	default:
		close(e.done)
	}
}

// localPair is a connected TCP pair: what kpf accepted, and its client.
func localPair(t *testing.T) (local, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	local, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	return local, client
}

// TestPumpEndsAConnectionAsItsStreamEnded: the local client sees a clean
// end (EOF) only when the pod's side closed cleanly; whenever kpf knows
// the stream failed, a reset (issue 26: a connection that crosses a
// failure ends with an error the client sees). Before, a connection that
// had sent nothing got a FIN when its tunnel died, and one to a port
// where nothing listens got a FIN: both looked like an empty answer.
func TestPumpEndsAConnectionAsItsStreamEnded(t *testing.T) {
	refused := &RemoteError{Pod: "ns/pod", Port: 9, Message: "dial tcp4 127.0.0.1:9: connect: connection refused"}
	tests := []struct {
		name       string
		fin, known bool
		tunnelDone chan struct{}
		verdict    error
		wantReset  bool
		wantErr    error
	}{
		{name: "the pod closed", fin: true, known: true},
		{name: "the pod closed (client-go's data path)"},
		{name: "the tunnel died under an idle connection", fin: false, known: true, tunnelDone: closed(), wantReset: true, wantErr: errEndedBadly},
		{name: "the tunnel died (client-go's data path)", tunnelDone: closed(), wantReset: true, wantErr: errEndedBadly},
		{name: "the stream was reset", fin: false, known: true, wantReset: true, wantErr: errEndedBadly},
		{name: "nothing listens on the port", fin: false, known: true, verdict: refused, wantReset: true, wantErr: refused},
		{name: "nothing listens on the port (client-go's data path)", verdict: refused, wantReset: true, wantErr: refused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, client := localPair(t)
			data := endingStream{send: "answer", fin: tt.fin, known: tt.known, done: make(chan struct{})}
			_, err := pump(context.Background(), local, data, closed(), func() error { return tt.verdict }, tt.tunnelDone)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("pump returned %v, want %v", err, tt.wantErr)
			}
			client.SetDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(client)
			switch {
			case string(got) != "answer":
				t.Errorf("the client read %q, want \"answer\"", got)
			case tt.wantReset && !errors.Is(err, syscall.ECONNRESET):
				t.Errorf("the client read to %v, want a reset", err)
			case !tt.wantReset && err != nil:
				t.Errorf("the client read to %v, want a clean end (EOF)", err)
			}
		})
	}
}

// TestPumpWaitsNotForAVerdictOnALostTunnel: a connection whose tunnel is
// gone ends at once, whatever the error stream does (the kubelet's
// verdict will never come).
func TestPumpWaitsNotForAVerdictOnALostTunnel(t *testing.T) {
	local, client := localPair(t)
	data := endingStream{done: make(chan struct{}), known: true}
	start := time.Now()
	pump(context.Background(), local, data, make(chan struct{}), func() error { return nil }, closed())
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client read to %v, want a reset", err)
	}
	if d := time.Since(start); d >= errorStreamWait {
		t.Errorf("the connection ended %s after its tunnel: the verdict was waited for", d)
	}
}
