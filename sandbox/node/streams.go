package node

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
)

// A pod's port-forward sessions end when the pod does, as they do on a real
// node: clients then see the tunnel close ("lost connection to pod").

// sessions tracks the hijacked connections of one pod's port-forwards.
type sessions struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (s *sessions) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *sessions) remove(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// closeAll ends every session and refuses new ones.
func (s *sessions) closeAll() {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// trackingWriter records the connection that the streaming server hijacks.
type trackingWriter struct {
	http.ResponseWriter
	s *sessions
}

func (t trackingWriter) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (t trackingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := t.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	c, rw, err := h.Hijack()
	if err != nil {
		return nil, nil, err
	}
	tc := &trackedConn{Conn: c, s: t.s}
	if !t.s.add(tc) {
		c.Close()
		return nil, nil, errors.New("pod is terminating")
	}
	return tc, rw, nil
}

type trackedConn struct {
	net.Conn
	s    *sessions
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.s.remove(c) })
	return c.Conn.Close()
}
