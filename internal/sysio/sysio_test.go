//go:build linux && !kpf_portable

package sysio

import (
	"bytes"
	"net"
	"syscall"
	"testing"

	"github.com/kpf-dev/kpf/internal/testnet"
)

// pair is a connected TCP pair on loopback and the raw connection of the
// first (non-blocking, as the net package leaves it).
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn, syscall.RawConn) {
	a, b := testnet.TCPPair(t)
	rc, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return a, b, rc
}

func TestReadWaitsThenReads(t *testing.T) {
	_, b, rc := pair(t)
	var peek error
	rc.Control(func(fd uintptr) { peek = Peek(int(fd)) })
	if peek != syscall.EAGAIN {
		t.Fatalf("Peek on an empty socket = %v, want EAGAIN", peek)
	}
	var first error
	rc.Control(func(fd uintptr) { _, first = Read(int(fd), make([]byte, 8)) })
	if first != syscall.EAGAIN {
		t.Fatalf("Read on an empty socket = %v, want EAGAIN", first)
	}
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		n, rerr = Read(int(fd), buf)
		return rerr != syscall.EAGAIN
	})
	if err != nil || rerr != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read = %q, %v, %v; want hello", buf[:n], rerr, err)
	}
	b.CloseWrite()
	err = rc.Read(func(fd uintptr) bool {
		rerr = Peek(int(fd))
		return rerr != syscall.EAGAIN
	})
	if err != nil || rerr != nil {
		t.Fatalf("Peek after the peer's FIN = %v, %v; want nil", rerr, err)
	}
	rc.Control(func(fd uintptr) { n, rerr = Read(int(fd), buf) })
	if n != 0 || rerr != nil {
		t.Fatalf("Read after the peer's FIN = %d, %v; want 0 (EOF)", n, rerr)
	}
}

func TestWritevSkipsEmptyAndKeepsOrder(t *testing.T) {
	_, b, rc := pair(t)
	v := [][]byte{[]byte("one "), nil, []byte("two "), {}, []byte("three")}
	var n int
	var werr error
	rc.Control(func(fd uintptr) { n, werr = Writev(int(fd), v) })
	if werr != nil || n != len("one two three") {
		t.Fatalf("Writev = %d, %v", n, werr)
	}
	rc.Control(func(fd uintptr) { _, werr = Write(int(fd), []byte("!")) })
	if werr != nil {
		t.Fatal(werr)
	}
	want := []byte("one two three!")
	got := make([]byte, len(want))
	for off := 0; off < len(got); {
		m, err := b.Read(got[off:])
		if err != nil {
			t.Fatal(err)
		}
		off += m
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("peer read %q, want %q", got, want)
	}
}

func TestWriteReportsEAGAINWhenFull(t *testing.T) {
	_, _, rc := pair(t)
	chunk := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 1024 && werr == nil; i++ { // the peer never reads
		rc.Control(func(fd uintptr) { _, werr = Write(int(fd), chunk) })
	}
	if werr != syscall.EAGAIN {
		t.Fatalf("writing to a full socket: %v, want EAGAIN", werr)
	}
	rc.Control(func(fd uintptr) { _, werr = Writev(int(fd), [][]byte{chunk}) })
	if werr != syscall.EAGAIN {
		t.Fatalf("writev to a full socket: %v, want EAGAIN", werr)
	}
}
