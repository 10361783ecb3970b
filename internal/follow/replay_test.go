package follow

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/tunnel"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (client, server net.Conn) {
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
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestReplayConnAbort: a failed connection the pod has answered is reset
// through its replay wrapper (the matrix's blackhole found it closed with a
// FIN: the wrapper hid its socket from tunnel.Abort); one still kept for
// another attempt is only detached, its socket open for the retry.
func TestReplayConnAbort(t *testing.T) {
	t.Run("committed", func(t *testing.T) {
		client, server := tcpPair(t)
		r := newReplayConn(server)
		r.commit()
		io.WriteString(r, "partial")
		tunnel.Abort(r)
		client.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(client)
		if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read %q, then %v; want \"partial\", then a reset", got, err)
		}
	})
	t.Run("kept for a retry", func(t *testing.T) {
		client, server := tcpPair(t)
		r := newReplayConn(server)
		tunnel.Abort(r)
		if !r.rewind() {
			t.Fatal("an uncommitted connection could not be rewound after Abort")
		}
		io.WriteString(r, "answer")
		client.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 6)
		if _, err := io.ReadFull(client, got); err != nil || string(got) != "answer" {
			t.Fatalf("after Abort and a rewind, the retry's answer: %q, %v", got, err)
		}
	})
}
