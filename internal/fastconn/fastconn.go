// Package fastconn is the TCP socket under a tunnel's TLS, shaped to cut
// the system calls that are most of what moving bytes costs the client:
// large pooled reads, paced at bulk rates, and corked writes. FastPath is
// what the data path (internal/spdy, internal/tunnel) relies on of it;
// the dialers hold the socket as a FastPath, so a wrapper that hid it
// would not compile, rather than silently turn the fast path off. It
// knows nothing of TLS, SPDY or proxies.
package fastconn

import (
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/bufpool"
	ownspdy "github.com/kpf-dev/kpf/internal/spdy"
	"github.com/kpf-dev/kpf/internal/sysio"
)

// FastPath is what the data path relies on of the socket under a
// tunnel's TLS: a read loop that hands on what it collected before a read
// waits (spdy.Waiter), and writes corked into one system call (Corker).
type FastPath interface {
	net.Conn
	ownspdy.Waiter
	Corker
}

var _ FastPath = (*fastConn)(nil)

// fastConn is the TCP connection under a tunnel's TLS. It exists to cut
// system calls, which are most of what moving bytes through a tunnel
// costs the client:
//   - reads take whatever the socket holds, up to 1 MiB, into a pooled
//     buffer that TLS then reads record by record from memory (one read
//     system call per many records instead of one per record); the buffer
//     is taken only once data is there, so an idle tunnel holds none;
//   - between Cork and Flush, writes collect in a pooled buffer and go out
//     in one write: a large frame that TLS cuts into 16 KiB records is one
//     system call, not one per record;
//   - at bulk rates reads are paced (see pace): one wake-up per ~512 KiB.
type fastConn struct {
	net.Conn
	rc syscall.RawConn

	rbuf       *[]byte // pooled; rdata is its unread part
	rdata      []byte
	lastFillAt time.Time     // pace: when the last read returned
	rate       float64       // and the rate it saw, bytes per second
	lowat      int           // the socket's SO_RCVLOWAT while pacing, else 0
	paced      int           // reads paced so far (tests)
	paceD      time.Duration // the longest the next paced read waits
	// readDeadline is the caller's; pace sets its own and restores it.
	dmu          sync.Mutex
	readDeadline time.Time

	// beforeWait runs (on the reading goroutine) before a read waits for
	// the network: the SPDY read loop hands on what it has collected.
	beforeWait func()

	// ackNow: small reads send the delayed ACK at once (see
	// Tunnel).
	ackNow bool

	// portableRead is the next read's size in the portable build (0 in
	// the raw one): see fillPortable.
	portableRead int

	wmu      sync.Mutex
	corked   bool
	corkSize int     // the buffer a Cork takes
	wbuf     *[]byte // pooled, while corked
	werr     error
}

// ackNowMax: reads under this size on a socket to a proxy are
// interactive, and acknowledged at once (see Tunnel).
const ackNowMax = 16 << 10

// readChunk is what one read system call may take.
const readChunk = 1 << 20

// New wraps c. Without raw system calls (the portable build, or a c that
// is no socket) reads and writes go through c: large reads and corked
// writes still, no pacing.
func New(c net.Conn) FastPath { return newFastConn(c) }

func newFastConn(c net.Conn) *fastConn {
	portable := &fastConn{Conn: c, portableRead: minPortableRead}
	if !sysio.Raw {
		return portable
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return portable
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return portable
	}
	return &fastConn{Conn: c, rc: rc}
}

// Tunnel wraps the socket of a tunnel dialled through proxy (nil for
// none). A proxy that relays without TCP_NODELAY
// (tinyproxy and microsocks do) holds each small segment until the one
// before it is acknowledged (Nagle), and Linux delays the ACK of a small
// segment by up to 40 ms once a connection looks interactive: through
// such a proxy every request and answer that spans two segments waited
// ~40 ms (new connections: p50 42 ms against 1 ms without the proxy).
// Small reads on such a socket acknowledge at once; bulk reads
// (ackNowMax and more) leave ACKs to the kernel, which acknowledges full
// segments promptly anyway: acknowledging after every read cost kpf ~15%
// more CPU per downloaded GiB through tinyproxy.
func Tunnel(c net.Conn, proxy *url.URL) FastPath {
	f := newFastConn(c)
	f.ackNow = proxy != nil
	return f
}

func (f *fastConn) Read(p []byte) (int, error) {
	if len(f.rdata) == 0 {
		if len(p) >= readChunk/2 {
			return f.Conn.Read(p)
		}
		if err := f.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.rdata)
	f.rdata = f.rdata[n:]
	if len(f.rdata) == 0 {
		bufpool.Put(f.rbuf)
		f.rbuf, f.rdata = nil, nil
	}
	return n, nil
}

// fill reads what the socket holds into a pooled buffer, waiting for data
// without holding one.
func (f *fastConn) fill() error {
	if f.portableRead > 0 {
		return f.fillPortable()
	}
	f.pace()
	b, n, err := bufpool.ReadRaw(f.rc, 0, readChunk, f.unpace)
	if err != nil {
		bufpool.Put(b)
		return err
	}
	f.rbuf, f.rdata = b, (*b)[:n]
	f.noteFill(n)
	if f.ackNow && n < ackNowMax {
		quickAck(f.rc)
	}
	return nil
}

// minPortableRead is the portable build's smallest read: what an idle
// tunnel's buffer costs while it waits.
const minPortableRead = 16 << 10

// fillPortable is fill without raw system calls: the read waits holding
// its buffer, so the buffer follows the traffic (a read that fills it
// doubles the next, up to readChunk; one under a quarter halves it), and
// an idle tunnel holds a small one.
func (f *fastConn) fillPortable() error {
	if f.beforeWait != nil {
		f.beforeWait() // the read may wait: hand on what was collected
	}
	b := bufpool.Get(f.portableRead)
	n, err := f.Conn.Read(*b)
	if n == 0 {
		bufpool.Put(b)
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	switch {
	case n == len(*b) && f.portableRead < readChunk:
		f.portableRead *= 2
	case n < len(*b)/4 && f.portableRead > minPortableRead:
		f.portableRead /= 2
	}
	f.rbuf, f.rdata = b, (*b)[:n]
	return nil
}

// Read pacing. Reading a busy socket as eagerly as possible costs more
// than it seems: each read takes the one record or part of a record that
// has just arrived, so a GiB takes a hundred thousand reads and as many
// wake-ups, and on a machine whose cores the API server and the kubelet
// share, those are cycles taken from the senders. When data arrives at
// bulk rates (bulkRate or more, measured from one read to the next) and
// the last read did not fill the buffer, the next read first waits for
// about paceTarget bytes to collect, or paceMax at most.
//
// The wait must not be a plain sleep: the netpoller's epoll is
// edge-triggered, so every segment that arrives during a sleep wakes an
// idle thread that then finds nothing to do (~30,000 wake-ups per GiB,
// most of the client's CPU in this VM). Where the kernel can (Linux),
// SO_RCVLOWAT holds the socket's readiness back until the bytes are there
// (or the receive window runs low, so a sender never stalls on it), and
// the read waits for readiness with a deadline: one wake-up per paced
// read. Interactive traffic never comes near bulkRate and is never
// delayed. A burst's last bytes may wait out the deadline, which starts at
// paceMin for the first paced read of a burst and doubles with each one
// up to paceMax, so a medium response pays a fraction of a millisecond
// and a long download pays paceMax once. Before any unpaced wait the
// low-water mark goes back to one byte.
const (
	bulkRate   = 64 << 20 // bytes per second
	paceTarget = 512 << 10
	paceMin    = 250 * time.Microsecond
	paceMax    = 2 * time.Millisecond
)

// noteFill records a read of n bytes for pace.
func (f *fastConn) noteFill(n int) {
	now := time.Now()
	f.rate = 0
	if el := now.Sub(f.lastFillAt); el > 0 && n < readChunk {
		f.rate = float64(n) / el.Seconds()
	}
	f.lastFillAt = now
}

func (f *fastConn) pace() {
	if f.rate < bulkRate {
		f.paceD = 0 // the burst is over
		return
	}
	f.paced++
	if f.beforeWait != nil {
		f.beforeWait()
	}
	if f.lowat == 0 {
		f.lowat = rcvLowat(f.rc, paceTarget)
	}
	if f.lowat <= 1 {
		// No low-water mark here: sleep for about paceTarget bytes.
		d := time.Duration(paceTarget / f.rate * float64(time.Second))
		time.Sleep(min(paceMax, max(paceMin, d)))
		return
	}
	// The first paced wait of a burst is short and each one that runs out
	// doubles the next, up to paceMax: a medium response (a few hundred
	// KiB) that ends before the low-water mark pays ~paceMin, not paceMax.
	f.paceD = min(paceMax, max(paceMin, 2*f.paceD))
	f.dmu.Lock()
	until := time.Now().Add(f.paceD)
	if !f.readDeadline.IsZero() && f.readDeadline.Before(until) {
		until = f.readDeadline
	}
	f.Conn.SetReadDeadline(until)
	f.dmu.Unlock()
	waited := false
	f.rc.Read(func(uintptr) bool {
		if waited {
			return true
		}
		waited = true
		return false // wait for readiness: lowat bytes, or the deadline
	})
	f.dmu.Lock()
	f.Conn.SetReadDeadline(f.readDeadline)
	f.dmu.Unlock()
}

// SetReadDeadline and SetDeadline keep the caller's read deadline, which
// pace restores after its own.
func (f *fastConn) SetReadDeadline(t time.Time) error {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.readDeadline = t
	return f.Conn.SetReadDeadline(t)
}

func (f *fastConn) SetDeadline(t time.Time) error {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.readDeadline = t
	return f.Conn.SetDeadline(t)
}

// unpace drops the low-water mark before a read waits for any data: the
// next bytes may be a few, and they must not wait.
func (f *fastConn) unpace() {
	if f.lowat > 1 {
		rcvLowat(f.rc, 1)
		f.lowat = 0
	}
	if f.beforeWait != nil {
		f.beforeWait()
	}
}

func (f *fastConn) Write(p []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.werr != nil {
		return 0, f.werr
	}
	if !f.corked {
		return f.write(p)
	}
	written := 0
	for len(p) > 0 {
		if f.wbuf == nil {
			f.wbuf = bufpool.Get(min(max(f.corkSize, len(p)), bufpool.Max))
			*f.wbuf = (*f.wbuf)[:0]
		}
		if len(*f.wbuf) == cap(*f.wbuf) {
			if err := f.flushLocked(); err != nil {
				return written, err
			}
			continue
		}
		n := min(len(p), cap(*f.wbuf)-len(*f.wbuf))
		*f.wbuf = append(*f.wbuf, p[:n]...)
		p, written = p[n:], written+n
	}
	return written, nil
}

// BeforeWait sets the function run before a read waits for the network.
// Set it before the first read that may wait.
func (f *fastConn) BeforeWait(fn func()) { f.beforeWait = fn }

// Cork starts collecting writes, about n bytes of them (a frame of n bytes
// and its TLS records' overhead); Flush sends them in one write. More
// than fits one pooled buffer goes out as each fills.
func (f *fastConn) Cork(n int) {
	f.wmu.Lock()
	f.corked = true
	f.corkSize = min(n+n/32+64, bufpool.Max)
	f.wmu.Unlock()
}

// Flush ends Cork and writes what was collected.
func (f *fastConn) Flush() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.corked = false
	err := f.flushLocked()
	bufpool.Put(f.wbuf)
	f.wbuf = nil
	return err
}

func (f *fastConn) flushLocked() error {
	if f.werr != nil {
		return f.werr
	}
	if f.wbuf == nil || len(*f.wbuf) == 0 {
		return nil
	}
	_, err := f.write(*f.wbuf)
	*f.wbuf = (*f.wbuf)[:0]
	if err != nil {
		// TLS believes the records went out: nothing may follow them.
		f.werr = err
	}
	return err
}

// write writes all of p, waiting for the socket as needed (and as the
// write deadline allows), with system calls that do not enter the
// scheduler (see sysio).
func (f *fastConn) write(p []byte) (int, error) {
	if f.rc == nil {
		return f.Conn.Write(p) // the portable build
	}
	written := 0
	var werr error
	err := f.rc.Write(func(fd uintptr) bool {
		for len(p) > 0 {
			n, err := sysio.Write(int(fd), p)
			switch {
			case err == syscall.EAGAIN:
				return false // wait until writable
			case err != nil:
				werr = os.NewSyscallError("write", err)
				return true
			case n == 0:
				werr = io.ErrShortWrite
				return true
			}
			written += n
			p = p[n:]
		}
		return true
	})
	if werr == nil {
		werr = err
	}
	if werr != nil {
		return written, &net.OpError{Op: "write", Net: "tcp", Source: f.LocalAddr(), Addr: f.RemoteAddr(), Err: werr}
	}
	return written, nil
}

// Corker collects writes between Cork and Flush into one system call.
type Corker interface {
	Cork(n int)
	Flush() error
}

// CorkedWriter writes each p (one SPDY frame, through the TLS connection
// over C's socket) as one system call.
type CorkedWriter struct {
	io.Writer
	C Corker
}

func (w CorkedWriter) Write(p []byte) (int, error) {
	w.C.Cork(len(p))
	n, err := w.Writer.Write(p)
	if ferr := w.C.Flush(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}
