// Package spdy is the client side of the SPDY/3.1 subset that port-forward
// uses, written for kpf's data path: header blocks are sent as zlib stored
// blocks (no compressor state: a few hundred bytes per connection instead of
// spdystream's ~400 KiB BestCompression writer), both streams of a
// forwarded connection are opened without waiting for replies, and each
// frame goes out in one write (one WebSocket message when tunnelled).
//
// It speaks to the kubelet's upstream server (moby/spdystream), through the
// API server; e2e tests run it against that server in the sandbox.
package spdy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/adler32"
	"io"
	"net"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/bufpool"
	"github.com/kpf-dev/kpf/internal/sysio"
)

// Frame types and flags of SPDY/3.
const (
	version = 3

	typeSynStream    = 1
	typeSynReply     = 2
	typeRstStream    = 3
	typeSettings     = 4
	typePing         = 6
	typeGoAway       = 7
	typeHeaders      = 8
	typeWindowUpdate = 9

	flagFin = 0x01

	rstCancel = 5

	// maxFrame bounds a frame kpf accepts (SPDY's own limit is 16 MiB).
	maxFrame = 1 << 24
)

// ErrClosed is returned for operations on a closed connection.
var ErrClosed = errors.New("spdy: connection closed")

// ErrPingTimeout is why a connection closed whose server stopped answering
// pings (see KeepAlive).
var ErrPingTimeout = errors.New("spdy: the server answered no ping")

// Conn is a client SPDY connection over an established upgrade.
type Conn struct {
	w  io.Writer
	c  io.Closer
	br *bufio.Reader

	// Writes go out one at a time; frames sent while another goroutine
	// writes join the next batch, which goes out in one write (see send).
	wmu     sync.Mutex
	wcond   sync.Cond // L is &wmu: a batch went out, or the connection failed
	writing bool      // a goroutine is writing; others queue
	queue   []byte    // frames waiting for the next batch
	spare   []byte    // the last batch's buffer, for the next queue
	own     []byte    // the writer's frames built under wmu (SYN_STREAM)
	gather  []byte    // the writer's frame with the queue, in one write
	batch   uint64    // the number the queued frames go out as
	sent    uint64    // batches written so far
	werr    error     // why writing stopped

	hdrStarted bool // the zlib header of our header stream is out

	mu      sync.Mutex
	streams map[uint32]*Stream
	nextID  uint32
	done    chan struct{}
	err     error
	once    sync.Once

	// Data the read loop has read but not yet handed on: it collects while
	// more frames are already in memory and goes out (one writev per
	// stream) before the read loop would wait for the network. Read loop
	// only.
	coalesce  bool
	pend      []pendChunk
	pendBytes int

	// What KeepAlive watches: frames read, writes done, and whether the
	// read loop waits for a stream's reader (a stall of ours, not the
	// server's).
	framesRead atomic.Uint64
	writes     atomic.Uint64
	stalled    atomic.Bool
	pinger     chan struct{} // closed when KeepAlive's goroutine is done; set once, under mu
	// heard is when the server last answered a ping, or (at KeepAlive's
	// ticks, for an answer queued behind data) last sent frames: for Quiet.
	// Nothing per data frame on the read path.
	heard atomic.Pointer[time.Time]
}

type pendChunk struct {
	s   *Stream
	c   chunk
	fin bool
}

// Waiter is a connection that can run a function each time a read is
// about to wait for the network (see NewConn).
type Waiter interface {
	BeforeWait(func())
}

// NewConn starts a connection over rw (the upgraded connection, with br
// holding what was read past the upgrade response, if anything). With a
// Waiter (the socket under rw), the read loop hands data on in batches:
// everything read before the socket runs dry goes out together.
func NewConn(rw io.ReadWriteCloser, br *bufio.Reader, w Waiter) *Conn {
	if br == nil {
		br = bufio.NewReaderSize(rw, 16<<10)
	}
	c := &Conn{w: rw, c: rw, br: br, streams: map[uint32]*Stream{}, nextID: 1, done: make(chan struct{}), batch: 1}
	c.wcond.L = &c.wmu
	if w != nil {
		c.coalesce = true
		w.BeforeWait(c.flush)
	}
	go c.readLoop()
	return c
}

// Done is closed when the connection is closed, by either side.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection closed.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and every stream, and waits for KeepAlive's
// goroutine to end.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.mu.Lock()
	pinger := c.pinger
	c.mu.Unlock()
	if pinger != nil {
		<-pinger
	}
	return nil
}

// pingMisses is how many ping periods in a row may pass with no sign of
// the server before KeepAlive closes the connection.
const pingMisses = 2

// KeepAlive sends a PING frame every period until the connection closes,
// as client-go's SPDY connections do: proxies and load balancers that cut
// idle connections see traffic, and over the WebSocket transport the
// frames ride inside WebSocket messages across every hop to the kubelet,
// which answers them. A connection on which pingMisses periods in a row
// pass with a ping out and nothing read is closed with ErrPingTimeout.
//
// Only the server's silence counts: a period does not count while the
// read loop waits for a slow local reader (it reads nothing then, by
// design), while a write is under way, or when more than the ping went out
// (an answer may queue behind an upload at a slow pod). So a busy tunnel
// is left to TCP; an idle one whose path died silently is found within
// pingMisses periods of its first unanswered ping.
//
// dead, if set, is called with the error just before such a close (to say
// why, in a log). Call KeepAlive at most once; Close waits for its
// goroutine.
func (c *Conn) KeepAlive(period time.Duration, dead func(error)) {
	now := time.Now()
	c.heard.Store(&now)
	done := make(chan struct{})
	c.mu.Lock()
	c.pinger = done
	c.mu.Unlock()
	go c.pingLoop(period, dead, done)
}

func (c *Conn) pingLoop(period time.Duration, dead func(error), done chan struct{}) {
	defer close(done)
	t := time.NewTicker(period)
	defer t.Stop()
	var (
		id          uint32 = 1 // a client's pings are odd
		asked       bool       // a ping went out at the last tick
		read, wrote uint64     // the counters just around that ping
		seen        uint64     // frames read at the last tick, for heard
		missed      int
		frame       = make([]byte, 0, 12)
	)
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if n := c.framesRead.Load(); n != seen {
			seen = n
			now := time.Now()
			c.heard.Store(&now)
		}
		if asked && c.framesRead.Load() == read && c.writes.Load() == wrote && !c.stalled.Load() && !c.writeBusy() {
			missed++
		} else {
			missed = 0
		}
		if missed >= pingMisses {
			err := fmt.Errorf("%w in %s (%d pings %s apart)", ErrPingTimeout, pingMisses*period, pingMisses, period)
			if dead != nil {
				dead(err)
			}
			c.fail(err)
			return
		}
		read = c.framesRead.Load()
		frame = controlHeader(frame[:0], typePing, 0, 4)
		frame = binary.BigEndian.AppendUint32(frame, id)
		if err := c.writeFrame(frame); err != nil {
			return // the connection failed: it says why
		}
		wrote = c.writes.Load()
		asked = true
		id += 2
	}
}

// Quiet is how long the server has not been heard from: since it last
// answered a ping, or since the KeepAlive tick that last saw frames read
// (0 without KeepAlive). While the server answers, it stays within a
// period and the round trip. It takes the longer of the monotonic
// and the wall clock's time: a process that was stopped (SIGSTOP) counts
// on both, a machine that slept only on the wall clock (Go's monotonic
// clock stands still in a Linux suspend). After either, the ping loop has
// not run, and a tunnel that a proxy or a NAT cut meanwhile still looks
// open until its read loop runs: Quiet says it was not heard from.
func (c *Conn) Quiet() time.Duration {
	h := c.heard.Load()
	if h == nil {
		return 0
	}
	now := time.Now()
	return max(now.Sub(*h), now.Round(0).Sub(h.Round(0)))
}

// writeBusy reports whether a write is under way.
func (c *Conn) writeBusy() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writing
}

func (c *Conn) fail(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		streams := c.streams
		c.streams = map[uint32]*Stream{}
		c.mu.Unlock()
		close(c.done)
		c.wmu.Lock()
		if c.werr == nil {
			c.werr = ErrClosed
		}
		c.wcond.Broadcast()
		c.wmu.Unlock()
		c.c.Close()
		for _, s := range streams {
			s.remoteDone(err)
		}
	})
}

// writeFrame writes one whole frame in one Write, or in one batch with
// frames of other streams (see send).
func (c *Conn) writeFrame(b []byte) error { return c.send(b, nil) }

// maxBatch bounds the frames that queue for one write; past it, frames
// wait for the next.
const maxBatch = 256 << 10

// gatherMax: a writer of a frame smaller than this waits for the
// goroutines ready to run to queue theirs (see send); a larger frame
// (bulk data) goes out at once.
const gatherMax = 16 << 10

// send writes frames: frame as it is, or what build appends (called with
// wmu held, so that stream ids and header compression follow the order
// frames go out). One goroutine writes at a time. Frames sent meanwhile,
// by the connections that share this tunnel, are copied into a queue
// that the writer sends next, all in one write, and their senders wait
// until it is out: when many connections send small messages at once
// (a connection pool of a database client, a cache client's), one TLS
// record and one read on each hop (kpf, the API server, the node) carry
// many of them instead of one each. A lone sender writes at once, its
// frame not copied.
func (c *Conn) send(frame []byte, build func([]byte) []byte) error {
	c.wmu.Lock()
	for c.writing && len(c.queue) >= maxBatch && c.werr == nil {
		c.wcond.Wait()
	}
	if c.werr != nil {
		c.wmu.Unlock()
		return ErrClosed
	}
	if c.writing {
		if build != nil {
			c.queue = build(c.queue)
		} else {
			c.queue = append(c.queue, frame...)
		}
		my := c.batch
		for c.sent < my && c.werr == nil {
			c.wcond.Wait()
		}
		var err error
		if c.sent < my {
			err = ErrClosed
		}
		c.wmu.Unlock()
		return err
	}
	c.writing = true
	if build != nil {
		c.own = build(c.own[:0])
		frame = c.own
	}
	var merged uint64 // the batch that goes out with frame, if any
	if len(frame) < gatherMax {
		// Let the goroutines that woke with this one (the netpoller
		// hands out every ready socket at once) queue their frames,
		// and send theirs with this one, in one write.
		c.wmu.Unlock()
		runtime.Gosched()
		c.wmu.Lock()
		if len(c.queue) > 0 {
			c.gather = append(append(c.gather[:0], frame...), c.queue...)
			frame = c.gather
			c.queue = c.queue[:0]
			merged = c.batch
			c.batch++
		}
	}
	c.wmu.Unlock()
	_, err := c.w.Write(frame)
	if err == nil {
		c.writes.Add(1)
	}
	if err == nil && merged != 0 {
		c.wmu.Lock()
		c.sent = merged
		c.wcond.Broadcast()
		c.wmu.Unlock()
	}
	for err == nil {
		c.wmu.Lock()
		if len(c.queue) == 0 {
			c.writing = false
			c.wmu.Unlock()
			return nil
		}
		out, n := c.queue, c.batch
		c.queue, c.spare = c.spare[:0], nil
		c.batch++
		c.wcond.Broadcast() // room in the queue again
		c.wmu.Unlock()
		_, err = c.w.Write(out)
		if err == nil {
			c.writes.Add(1)
		}
		c.wmu.Lock()
		if cap(out) <= maxBatch*2 {
			c.spare = out[:0]
		}
		if err == nil {
			c.sent = n
			c.wcond.Broadcast()
		}
		c.wmu.Unlock()
	}
	c.wmu.Lock()
	c.writing = false
	c.wmu.Unlock()
	c.fail(err)
	return err
}

func controlHeader(b []byte, typ uint16, flags byte, length int) []byte {
	b = binary.BigEndian.AppendUint16(b, 0x8000|version)
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, flags, byte(length>>16), byte(length>>8), byte(length))
}

// headerBlock encodes headers, sorted, names lower-case, as SPDY/3 wants,
// compressed as zlib stored blocks continuing the connection's stream.
func (c *Conn) headerBlock(h http.Header) []byte {
	var raw []byte
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	raw = binary.BigEndian.AppendUint32(raw, uint32(len(names)))
	for _, k := range names {
		name := strings.ToLower(k)
		v := strings.Join(h[k], "\x00")
		raw = binary.BigEndian.AppendUint32(raw, uint32(len(name)))
		raw = append(raw, name...)
		raw = binary.BigEndian.AppendUint32(raw, uint32(len(v)))
		raw = append(raw, v...)
	}
	var out []byte
	if !c.hdrStarted {
		// zlib header with a preset dictionary: CMF 0x78, FLG with FDICT
		// and the check bits, then the dictionary's Adler-32.
		out = append(out, 0x78, 0xbb)
		out = binary.BigEndian.AppendUint32(out, adler32.Checksum(dictionary))
		c.hdrStarted = true
	}
	for len(raw) > 0 {
		n := min(len(raw), 0xffff)
		out = append(out, 0x00, byte(n), byte(n>>8), byte(^n), byte(^n>>8)) // non-final stored block
		out = append(out, raw[:n]...)
		raw = raw[n:]
	}
	// A sync flush (an empty stored block): inflaters hand out a stored
	// block's bytes only once they see the next block, which must be in
	// this frame.
	return append(out, 0x00, 0x00, 0x00, 0xff, 0xff)
}

// Stream is one SPDY stream of a connection.
type Stream struct {
	c  *Conn
	id uint32

	mu      sync.Mutex
	cond    *sync.Cond
	chunks  []chunk
	queued  int
	eof     bool
	err     error
	done    chan struct{} // closed when eof is set
	closedW bool

	// direct is the local connection WriteTo writes to, when the read loop
	// may write to it itself (non-blocking, nothing queued, nobody else
	// writing): no hand-over to WriteTo's goroutine, no wake-up.
	direct  syscall.RawConn
	prepare func() // before each direct write, if set
	writing bool
	directN int64 // bytes the read loop wrote, for WriteTo's count

	// countIn and countOut, if set, see bytes as they move: written to
	// the local connection, and about to be sent to the server (before,
	// so that a request is seen before its answer). They must not keep
	// the slices: the buffers go back to the pool.
	countIn, countOut func([]byte)
}

// chunk is a DATA frame's payload waiting for the stream's reader, in a
// pooled buffer that goes back to the pool once written out.
type chunk struct {
	b  []byte
	pb *[]byte
}

// queueLimit bounds what a stream holds unread before the read loop waits
// for its reader (back-pressure to the sender through TCP).
const queueLimit = 1 << 20

// MaxWrite is the largest DATA payload ReadFrom sends in one frame: what
// one read of the local socket may take. Large frames mean fewer frames,
// records and system calls on every hop (kpf, the API server, the
// kubelet, which allocates and hands over each frame on its own); a frame,
// its TLS records and a WebSocket header still fit one pooled buffer.
// Measured against 252 KiB frames (make bench, upload, 4 alternations):
// kpf's CPU per GiB -16% (WebSocket) and -10% (SPDY), the node agent's
// -14% and -18%, throughput +14% and +16%.
const MaxWrite = 1<<20 - 8<<10

// firstRead is what ReadFrom's first read of a stream may take. Each read
// that fills its buffer doubles the next one's, up to MaxWrite, and one
// that takes less than a quarter halves it again: a bulk upload reaches
// MaxWrite after a few reads, while a connection that moves a little at a
// time never holds more than a small buffer per read.
const firstRead = 64<<10 - 8

// smallRead is what ReadFrom reads at most from a connection it cannot
// read straight from its socket (with its header, one 16 KiB buffer).
const smallRead = 16<<10 - 8

// OpenStream opens a stream with headers; with fin, it is half-closed
// from the start (the error stream of port-forward). It does not wait for
// the server's reply.
func (c *Conn) OpenStream(h http.Header, fin bool) (*Stream, error) {
	var s *Stream
	err := c.send(nil, func(b []byte) []byte {
		c.mu.Lock()
		s = c.newStreamLocked(fin)
		c.mu.Unlock()
		return c.synStream(b, s.id, h, fin)
	})
	if err != nil {
		if s != nil {
			c.forget(s)
		}
		return nil, err
	}
	return s, nil
}

// forget drops a stream whose opening did not go out.
func (c *Conn) forget(s *Stream) {
	c.mu.Lock()
	delete(c.streams, s.id)
	c.mu.Unlock()
}

// OpenPair opens port-forward's two streams, the error stream (half-closed
// from the start) and the data stream, and sends first on the data stream,
// all in one write: one TLS record and one read for every hop on the way,
// instead of three.
func (c *Conn) OpenPair(errHeaders, dataHeaders http.Header, first []byte) (errS, data *Stream, err error) {
	err = c.send(nil, func(b []byte) []byte {
		c.mu.Lock()
		errS = c.newStreamLocked(true)
		data = c.newStreamLocked(false)
		c.mu.Unlock()
		b = c.synStream(b, errS.id, errHeaders, true)
		b = c.synStream(b, data.id, dataHeaders, false)
		if len(first) > 0 {
			n := len(first)
			b = binary.BigEndian.AppendUint32(b, data.id&0x7fffffff)
			b = append(b, 0, byte(n>>16), byte(n>>8), byte(n))
			b = append(b, first...)
		}
		return b
	})
	if err != nil {
		if errS != nil {
			c.forget(errS)
			c.forget(data)
		}
		return nil, nil, err
	}
	return errS, data, nil
}

func (c *Conn) newStreamLocked(fin bool) *Stream {
	id := c.nextID
	c.nextID += 2
	s := &Stream{c: c, id: id, closedW: fin, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	c.streams[id] = s
	return s
}

// synStream appends a SYN_STREAM frame to b. Header compression order must
// match frame order: callers hold wmu (they build in send).
func (c *Conn) synStream(b []byte, id uint32, h http.Header, fin bool) []byte {
	block := c.headerBlock(h)
	flags := byte(0)
	if fin {
		flags = flagFin
	}
	b = controlHeader(b, typeSynStream, flags, 10+len(block))
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, 0) // associated stream
	b = append(b, 0, 0)                     // priority, slot
	return append(b, block...)
}

// ID is the stream's id.
func (s *Stream) ID() uint32 { return s.id }

// Write sends p as DATA frames of at most MaxWrite bytes.
func (s *Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxWrite)
		pb := bufpool.Get(8 + n)
		copy((*pb)[8:], p[:n])
		err := s.writeData(*pb, n)
		bufpool.Put(pb)
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// writeData sends frame[8:8+n] as a DATA frame, its header written into
// frame[:8].
func (s *Stream) writeData(frame []byte, n int) error {
	binary.BigEndian.PutUint32(frame, s.id&0x7fffffff)
	frame[4], frame[5], frame[6], frame[7] = 0, byte(n>>16), byte(n>>8), byte(n)
	return s.c.writeFrame(frame[:8+n])
}

// CloseWrite half-closes: the server reads EOF, and may still answer.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	if s.closedW {
		s.mu.Unlock()
		return nil
	}
	s.closedW = true
	s.mu.Unlock()
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, s.id&0x7fffffff)
	b[4] = flagFin
	return s.c.writeFrame(b)
}

// Reset abandons the stream both ways (RST_STREAM CANCEL). A stream that
// both sides have already ended with a FIN is closed: nothing goes out.
func (s *Stream) Reset() error {
	s.mu.Lock()
	closed := s.closedW && s.eof && s.err == nil
	s.mu.Unlock()
	s.remoteDone(errors.New("stream reset"))
	s.c.mu.Lock()
	delete(s.c.streams, s.id)
	s.c.mu.Unlock()
	if closed {
		return nil
	}
	b := controlHeader(make([]byte, 0, 16), typeRstStream, 0, 8)
	b = binary.BigEndian.AppendUint32(b, s.id)
	b = binary.BigEndian.AppendUint32(b, rstCancel)
	return s.c.writeFrame(b)
}

// Finished reports whether the server ended the stream with a FIN: not
// a reset by either side, not the connection's loss.
func (s *Stream) Finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof && s.err == nil
}

// Done is closed once the server has ended the stream (FIN), or the stream
// was reset or its connection lost: a stream read whole only at its end
// (the error stream) needs no goroutine waiting in Read.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Buffered takes what the stream holds unread, without waiting, and the
// stream's error: nil after a FIN (or before the end).
func (s *Stream) Buffered() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b []byte
	for _, c := range s.chunks {
		b = append(b, c.b...)
		bufpool.Put(c.pb)
	}
	s.chunks, s.queued = nil, 0
	s.cond.Broadcast()
	return b, s.err
}

// Read reads what the server sent; io.EOF after its FIN.
func (s *Stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.chunks) == 0 {
		if s.eof {
			if s.err != nil {
				return 0, s.err
			}
			return 0, io.EOF
		}
		s.cond.Wait()
	}
	n := copy(p, s.chunks[0].b)
	if n == len(s.chunks[0].b) {
		bufpool.Put(s.chunks[0].pb)
		s.chunks[0] = chunk{}
		s.chunks = s.chunks[1:]
	} else {
		s.chunks[0].b = s.chunks[0].b[n:]
	}
	s.queued -= n
	s.cond.Broadcast() // the read loop may be waiting for room
	return n, nil
}

// BuffersWriter is a local connection that can take several buffers in one
// system call (writev), as *net.TCPConn does through net.Buffers.
type BuffersWriter interface {
	WriteBuffers(*net.Buffers) (int64, error)
}

// WriteTo writes what the server sends to w as it arrives. While w keeps
// up, the read loop writes to it directly and this goroutine sleeps; what
// w could not take at once is queued, and every chunk queued since the
// last write goes out in one writev, so the slower w is, the fewer system
// calls it costs.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	var batch []chunk
	var bufs net.Buffers
	for {
		s.mu.Lock()
		if s.direct == nil {
			s.direct, s.prepare = rawConnOf(w)
		}
		for (len(s.chunks) == 0 && !s.eof) || s.writing {
			s.cond.Wait()
		}
		if len(s.chunks) == 0 {
			err := s.err
			s.direct = nil
			s.mu.Unlock()
			return total + s.takeDirect(), err
		}
		count := s.countIn
		batch = append(batch[:0], s.chunks...)
		clear(s.chunks)
		s.chunks = s.chunks[:0]
		s.queued = 0
		s.writing = true
		s.cond.Broadcast()
		s.mu.Unlock()
		bufs = bufs[:0]
		for _, c := range batch {
			bufs = append(bufs, c.b)
		}
		var n int64
		var err error
		if bw, ok := w.(BuffersWriter); ok {
			n, err = bw.WriteBuffers(&bufs)
		} else {
			n, err = bufs.WriteTo(w)
		}
		if count != nil {
			left := n
			for _, c := range batch {
				if left <= 0 {
					break
				}
				k := min(int64(len(c.b)), left)
				count(c.b[:k])
				left -= k
			}
		}
		for i := range batch {
			bufpool.Put(batch[i].pb)
			batch[i] = chunk{}
		}
		total += n
		s.mu.Lock()
		s.writing = false
		if err != nil {
			s.direct = nil
		}
		s.cond.Broadcast()
		s.mu.Unlock()
		if err != nil {
			return total + s.takeDirect(), err
		}
	}
}

// Count makes the stream report bytes as they move: in, written to the
// local connection by WriteTo (or the read loop for it); out, sent by
// ReadFrom. Set it before either runs.
func (s *Stream) Count(in, out func([]byte)) {
	s.mu.Lock()
	s.countIn, s.countOut = in, out
	s.mu.Unlock()
}

// takeDirect returns what the read loop wrote directly so far, resetting
// the count.
func (s *Stream) takeDirect() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.directN
	s.directN = 0
	return n
}

// DirectWriter is a local connection that lets the read loop write to its
// socket itself, calling prepare before each write (the connection may
// need to know it has been written to).
type DirectWriter interface {
	DirectWrite() (rc syscall.RawConn, prepare func())
}

// rawConnOf is w's socket when the read loop may write to it directly.
func rawConnOf(w io.Writer) (syscall.RawConn, func()) {
	if !sysio.Raw {
		return nil, nil // the portable build: WriteTo's goroutine writes
	}
	if d, ok := w.(DirectWriter); ok {
		return d.DirectWrite()
	}
	sc, ok := w.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil
	}
	return rc, nil
}

// writeNow writes chunks to rc without waiting: what the socket takes at
// once. It returns the bytes written and what is left.
//
// count, if set, sees each written piece before its buffer is released.
func writeNow(rc syscall.RawConn, chunks []chunk, count func([]byte)) (int, []chunk) {
	var iov [64][]byte
	v := iov[:0]
	for _, c := range chunks {
		if len(v) == cap(v) {
			break
		}
		if len(c.b) > 0 {
			v = append(v, c.b)
		}
	}
	if len(v) == 0 {
		return 0, chunks // a FIN alone: nothing to write
	}
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		n, werr = sysio.Writev(int(fd), v)
		return true // never wait here: WriteTo's goroutine does
	}); err != nil || werr != nil || n <= 0 {
		return 0, chunks
	}
	written := n
	for n > 0 && len(chunks) > 0 {
		if n < len(chunks[0].b) {
			if count != nil {
				count(chunks[0].b[:n])
			}
			chunks[0].b = chunks[0].b[n:]
			break
		}
		if count != nil {
			count(chunks[0].b)
		}
		n -= len(chunks[0].b)
		bufpool.Put(chunks[0].pb)
		chunks[0] = chunk{}
		chunks = chunks[1:]
	}
	return written, chunks
}

// ReadFrom sends what r gives as DATA frames, each read going straight
// into a pooled frame buffer. When r can be polled (a TCP connection), a
// read waits for data without holding a buffer and then takes up to
// firstRead bytes, more as reads fill (up to MaxWrite); otherwise it reads
// at most smallRead bytes at a time.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	s.mu.Lock()
	count := s.countOut
	s.mu.Unlock()
	size := firstRead
	for {
		pb, n, err := readFrame(r, size)
		size = nextReadSize(size, n)
		if n > 0 {
			// Shown before it is sent: whatever watches the request (the
			// HTTP log) must see it before the server's answer can come.
			if count != nil {
				count((*pb)[8 : 8+n])
			}
			werr := s.writeData(*pb, n)
			if werr != nil {
				bufpool.Put(pb)
				return total, werr
			}
			total += int64(n)
		}
		bufpool.Put(pb)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// nextReadSize is the size of ReadFrom's next read after one of size
// bytes took n (see firstRead). Sizes stay 8 bytes short of a power of
// two, so that a frame with its header fills its pooled buffer.
func nextReadSize(size, n int) int {
	switch {
	case n >= size && size < MaxWrite:
		return min(2*(size+8)-8, MaxWrite)
	case n < size/4 && size > firstRead:
		return max((size+8)/2-8, firstRead)
	}
	return size
}

// readFrame reads at most size bytes from r into a pooled buffer, leaving
// 8 bytes in front for the frame header.
func readFrame(r io.Reader, size int) (*[]byte, int, error) {
	if sc, ok := r.(syscall.Conn); ok && sysio.Raw {
		if rc, err := sc.SyscallConn(); err == nil {
			return bufpool.ReadRaw(rc, 8, size, nil)
		}
	}
	if w, ok := r.(ReadableWaiter); ok {
		w.WaitReadable()
	}
	pb := bufpool.Get(8 + smallRead)
	n, err := r.Read((*pb)[8:])
	return pb, n, err
}

// ReadableWaiter is a local connection that can wait until a Read would
// not block, so that ReadFrom takes a buffer only once there is data.
type ReadableWaiter interface {
	WaitReadable()
}

// deliver hands the stream data read from the server: written straight to
// the local connection when it takes it at once, queued for WriteTo (or
// Read) otherwise. It waits while the queue is full.
func (s *Stream) deliver(chunks []chunk, fin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queued > queueLimit && !s.eof {
		s.c.stalled.Store(true) // the read loop waits for the local reader
		for s.queued > queueLimit && !s.eof {
			s.cond.Wait()
		}
		s.c.stalled.Store(false)
	}
	if s.eof {
		for _, c := range chunks {
			bufpool.Put(c.pb)
		}
		return // reset meanwhile: drop
	}
	// A FIN alone is not an answer: prepare (which commits a replayable
	// connection) runs only for data.
	if hasData(chunks) && len(s.chunks) == 0 && !s.writing && s.direct != nil {
		s.writing = true
		rc, prepare, count := s.direct, s.prepare, s.countIn
		s.mu.Unlock()
		if prepare != nil {
			prepare()
		}
		var n int
		n, chunks = writeNow(rc, chunks, count)
		s.mu.Lock()
		s.writing = false
		s.directN += int64(n)
	}
	wake := fin || s.eof
	for _, c := range chunks {
		if len(c.b) == 0 {
			bufpool.Put(c.pb)
			continue
		}
		s.chunks = append(s.chunks, c)
		s.queued += len(c.b)
		wake = true
	}
	if fin {
		s.eof = true
		close(s.done)
	}
	if wake {
		s.cond.Broadcast()
	}
}

func hasData(chunks []chunk) bool {
	for _, c := range chunks {
		if len(c.b) > 0 {
			return true
		}
	}
	return false
}

func (s *Stream) remoteDone(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.eof {
		s.eof, s.err = true, err
		close(s.done)
	}
	s.cond.Broadcast()
}

// flush hands on what the read loop has collected, one batch per stream
// in arrival order. It runs on the read loop, or from the Waiter just
// before the read loop waits for the network.
func (c *Conn) flush() {
	p := c.pend
	for start := 0; start < len(p); {
		s := p[start].s
		var batch [16]chunk
		chunks := batch[:0]
		fin := false
		i := start
		for ; i < len(p) && p[i].s == s && !fin; i++ {
			chunks = append(chunks, p[i].c)
			fin = p[i].fin
		}
		start = i
		s.deliver(chunks, fin)
	}
	clear(p)
	c.pend = p[:0]
	c.pendBytes = 0
}

func (c *Conn) stream(id uint32) *Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *Conn) readLoop() {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			c.flush()
			c.fail(err)
			return
		}
		c.framesRead.Add(1)
		length := int(hdr[5])<<16 | int(hdr[6])<<8 | int(hdr[7])
		flags := hdr[4]
		if length > maxFrame {
			c.fail(fmt.Errorf("spdy: frame of %d bytes", length))
			return
		}
		if hdr[0]&0x80 == 0 { // data frame
			id := binary.BigEndian.Uint32(hdr[:4]) & 0x7fffffff
			pb := bufpool.Get(length)
			if _, err := io.ReadFull(c.br, *pb); err != nil {
				bufpool.Put(pb)
				c.fail(err)
				return
			}
			s := c.stream(id)
			if s == nil {
				bufpool.Put(pb)
				continue
			}
			if !c.coalesce {
				s.deliver([]chunk{{b: *pb, pb: pb}}, flags&flagFin != 0)
				continue
			}
			c.pend = append(c.pend, pendChunk{s, chunk{b: *pb, pb: pb}, flags&flagFin != 0})
			c.pendBytes += length
			if c.pendBytes >= 1<<20 || flags&flagFin != 0 {
				c.flush()
			}
			continue
		}
		c.flush() // control frames act on streams: data first
		typ := binary.BigEndian.Uint16(hdr[2:4])
		if err := c.control(typ, flags, length); err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *Conn) control(typ uint16, flags byte, length int) error {
	switch typ {
	case typeSynReply, typeHeaders:
		var idb [4]byte
		if length < 4 {
			return fmt.Errorf("spdy: short frame type %d", typ)
		}
		if _, err := io.ReadFull(c.br, idb[:]); err != nil {
			return err
		}
		if err := c.skipHeaderBlock(int64(length - 4)); err != nil {
			return err
		}
		if flags&flagFin != 0 {
			if s := c.stream(binary.BigEndian.Uint32(idb[:]) & 0x7fffffff); s != nil {
				s.deliver(nil, true)
			}
		}
		return nil
	case typeRstStream:
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		if length >= 4 {
			id := binary.BigEndian.Uint32(b) & 0x7fffffff
			if s := c.stream(id); s != nil {
				s.remoteDone(errors.New("stream reset by the server"))
			}
		}
		return nil
	case typePing:
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		if length == 4 && binary.BigEndian.Uint32(b)%2 == 0 { // the server's ping: echo it
			go c.writeFrame(append(controlHeader(nil, typePing, 0, 4), b...))
		} else {
			// The answer to ours (once a period): heard now.
			now := time.Now()
			c.heard.Store(&now)
		}
		return nil
	case typeGoAway:
		io.CopyN(io.Discard, c.br, int64(length))
		return errors.New("spdy: the server said goodbye")
	default: // SETTINGS, WINDOW_UPDATE, SYN_STREAM from the server (not in port-forward): skip
		_, err := io.CopyN(io.Discard, c.br, int64(length))
		return err
	}
}

// skipHeaderBlock drops a header block of the server's. The replies of
// port-forward carry nothing kpf needs, and since kpf never decodes any
// of the server's header blocks it keeps no inflater (the frame length says
// where the block ends).
func (c *Conn) skipHeaderBlock(n int64) error {
	_, err := io.CopyN(io.Discard, c.br, n)
	return err
}
