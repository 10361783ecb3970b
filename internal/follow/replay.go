package follow

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/sysio"
	"github.com/kpf-dev/kpf/internal/tunnel"
)

// replayLimit bounds what a connection may send before kpf stops keeping a
// copy to replay on another pod.
const replayLimit = 64 << 10

// replayConn keeps a copy of what the local client sends until the pod
// answers, so that a connection the pod refused (it was terminating, or
// not listening yet) can be sent again, whole, to another pod. Once the pod
// has written anything, or the client sent more than replayLimit, the
// connection is committed and behaves as the plain connection.
type replayConn struct {
	net.Conn

	mu        sync.Mutex
	buf       []byte
	pos       int  // next byte of buf to replay
	eof       bool // the client closed its write side after buf
	committed bool
	detached  bool // Close was called before commit: kept for a retry
}

func newReplayConn(c net.Conn) *replayConn { return &replayConn{Conn: c} }

func (r *replayConn) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.pos < len(r.buf) {
		n := copy(p, r.buf[r.pos:])
		r.pos += n
		r.mu.Unlock()
		return n, nil
	}
	if r.eof && !r.committed {
		r.mu.Unlock()
		return 0, io.EOF
	}
	r.mu.Unlock()
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keepLocked(p[:n], err == io.EOF)
	if err != nil && r.detached {
		// Read was woken by detach: the bytes are kept for the retry.
		return n, io.EOF
	}
	return n, err
}

func (r *replayConn) Write(p []byte) (int, error) {
	r.commit()
	return r.Conn.Write(p)
}

// Close closes a committed connection; an uncommitted one is only detached
// from the attempt that used it: a pending Read wakes up, and the
// connection can be rewound and tried again.
func (r *replayConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.committed {
		return r.Conn.Close()
	}
	r.detached = true
	return r.Conn.SetReadDeadline(time.Unix(1, 0))
}

// Abort is tunnel.Abort for a connection that may be replayed: a
// committed one is reset (its client sees the failure); one kept for
// another attempt is only detached, as Close does, and its socket keeps
// its orderly close for when the attempt that carries it ends.
func (r *replayConn) Abort() {
	r.mu.Lock()
	committed := r.committed
	r.mu.Unlock()
	if committed {
		tunnel.Abort(r.Conn)
		return
	}
	r.Close()
}

// rewind prepares an uncommitted connection for another attempt; false if
// it is committed (the pod answered, or too much was sent to keep).
func (r *replayConn) rewind() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.committed {
		return false
	}
	r.pos, r.detached = 0, false
	r.Conn.SetReadDeadline(time.Time{})
	return true
}

// finish closes the connection for good: with a reset if it failed.
func (r *replayConn) finish(failed bool) {
	r.mu.Lock()
	r.committed = true
	r.mu.Unlock()
	if failed {
		tunnel.Abort(r.Conn)
		return
	}
	r.Conn.Close()
}

// SyscallConn lets the data path read a committed connection straight from
// its socket (polling without a buffer); an uncommitted one must go through
// Read, which keeps the copy.
func (r *replayConn) SyscallConn() (syscall.RawConn, error) {
	r.mu.Lock()
	ready := r.committed && r.pos >= len(r.buf)
	r.mu.Unlock()
	sc, ok := r.Conn.(syscall.Conn)
	if !ready || !ok {
		return nil, errNotRaw
	}
	return sc.SyscallConn()
}

var errNotRaw = errors.New("connection not readable directly yet")

// WriteBuffers writes bufs in one system call where the connection can
// (writev), and commits the connection as Write does.
func (r *replayConn) WriteBuffers(bufs *net.Buffers) (int64, error) {
	r.commit()
	return bufs.WriteTo(r.Conn)
}

// DirectWrite lets the data path write the pod's answer straight to the
// socket; like Write, that commits the connection.
func (r *replayConn) DirectWrite() (syscall.RawConn, func()) {
	sc, ok := r.Conn.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil
	}
	return rc, r.commit
}

func (r *replayConn) commit() {
	r.mu.Lock()
	r.committed, r.buf = true, nil
	r.mu.Unlock()
}

// ReadNow reads what has already arrived, without waiting, keeping the copy
// as Read does.
func (r *replayConn) ReadNow(p []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pos < len(r.buf) {
		n := copy(p, r.buf[r.pos:])
		r.pos += n
		return n
	}
	if r.eof && !r.committed {
		return 0
	}
	n := tunnel.ReadNowRaw(r.Conn, p)
	r.keepLocked(p[:n], false)
	return n
}

// keepLocked keeps a copy of what an uncommitted connection read, for a
// replay; past replayLimit the connection is committed instead. r.mu is
// held.
func (r *replayConn) keepLocked(b []byte, eof bool) {
	if r.committed {
		return
	}
	if len(r.buf)+len(b) > replayLimit {
		r.committed, r.buf = true, nil
		return
	}
	r.buf = append(r.buf, b...)
	r.pos = len(r.buf)
	if eof {
		r.eof = true
	}
}

// WaitReadable waits until Read has something to return (data, EOF, an
// error, or a detach), without holding a buffer meanwhile: what keeps an
// idle connection cheap before it is committed.
func (r *replayConn) WaitReadable() {
	r.mu.Lock()
	pending := r.pos < len(r.buf) || r.eof
	r.mu.Unlock()
	if pending || !sysio.Raw {
		return // the portable build reads (and takes a buffer) at once
	}
	sc, ok := r.Conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(func(fd uintptr) bool {
		return sysio.Peek(int(fd)) != syscall.EAGAIN
	})
}
