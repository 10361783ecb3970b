// Package testnet has helpers for tests of the network code: loopback TCP
// pairs, and waiting on a condition; only tests import it.
package testnet

import (
	"net"
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test after 10 s.
func WaitFor(t testing.TB, cond func() bool) {
	t.Helper()
	Within(t, 10*time.Second, "the condition", cond)
}

// Within polls cond until it holds, failing the test after timeout with
// what it waited for.
func Within(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TCPPair is two ends of a loopback TCP connection, closed when the test
// ends.
func TCPPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		c.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}
