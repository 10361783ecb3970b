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
	"net/http"
	"sort"
	"strings"
	"sync"
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

// Conn is a client SPDY connection over an established upgrade.
type Conn struct {
	w   io.Writer
	c   io.Closer
	br  *bufio.Reader
	wmu sync.Mutex // one frame at a time

	hdrStarted bool // the zlib header of our header stream is out

	mu      sync.Mutex
	streams map[uint32]*Stream
	nextID  uint32
	done    chan struct{}
	err     error
	once    sync.Once
}

// NewConn starts a connection over rw (the upgraded connection, with br
// holding what was read past the upgrade response, if anything).
func NewConn(rw io.ReadWriteCloser, br *bufio.Reader) *Conn {
	if br == nil {
		br = bufio.NewReaderSize(rw, 16<<10)
	}
	c := &Conn{w: rw, c: rw, br: br, streams: map[uint32]*Stream{}, nextID: 1, done: make(chan struct{})}
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

// Close closes the connection and every stream.
func (c *Conn) Close() error { c.fail(ErrClosed); return nil }

func (c *Conn) fail(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		streams := c.streams
		c.streams = map[uint32]*Stream{}
		c.mu.Unlock()
		close(c.done)
		c.c.Close()
		for _, s := range streams {
			s.remoteDone(err)
		}
	})
}

// writeFrame writes one whole frame in one Write.
func (c *Conn) writeFrame(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	if _, err := c.w.Write(b); err != nil {
		c.fail(err)
		return err
	}
	return nil
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
	chunks  [][]byte
	queued  int
	eof     bool
	err     error
	reset   bool
	closedW bool
}

// queueLimit bounds what a stream holds unread before the read loop waits
// for its reader (back-pressure to the sender through TCP).
const queueLimit = 1 << 20

// OpenStream opens a stream with headers; with fin, it is half-closed
// from the start (the error stream of port-forward). It does not wait for
// the server's reply.
func (c *Conn) OpenStream(h http.Header, fin bool) (*Stream, error) {
	c.wmu.Lock()
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, ErrClosed
	}
	id := c.nextID
	c.nextID += 2
	s := &Stream{c: c, id: id, closedW: fin}
	s.cond = sync.NewCond(&s.mu)
	c.streams[id] = s
	c.mu.Unlock()
	// Header compression order must match frame order: both happen under
	// wmu.
	block := c.headerBlock(h)
	flags := byte(0)
	if fin {
		flags = flagFin
	}
	b := controlHeader(make([]byte, 0, 18+len(block)), typeSynStream, flags, 10+len(block))
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, 0) // associated stream
	b = append(b, 0, 0)                     // priority, slot
	b = append(b, block...)
	_, err := c.w.Write(b)
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
		return nil, err
	}
	return s, nil
}

// ID is the stream's id.
func (s *Stream) ID() uint32 { return s.id }

// Write sends p as one DATA frame (split at the frame limit).
func (s *Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), 256<<10)
		b := make([]byte, 8, 8+n)
		binary.BigEndian.PutUint32(b, s.id&0x7fffffff)
		b[5], b[6], b[7] = byte(n>>16), byte(n>>8), byte(n)
		b = append(b, p[:n]...)
		if err := s.c.writeFrame(b); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
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

// Reset abandons the stream both ways (RST_STREAM CANCEL).
func (s *Stream) Reset() error {
	s.remoteDone(errors.New("stream reset"))
	s.c.mu.Lock()
	delete(s.c.streams, s.id)
	s.c.mu.Unlock()
	b := controlHeader(make([]byte, 0, 16), typeRstStream, 0, 8)
	b = binary.BigEndian.AppendUint32(b, s.id)
	b = binary.BigEndian.AppendUint32(b, rstCancel)
	return s.c.writeFrame(b)
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
	n := copy(p, s.chunks[0])
	if n == len(s.chunks[0]) {
		s.chunks[0] = nil
		s.chunks = s.chunks[1:]
	} else {
		s.chunks[0] = s.chunks[0][n:]
	}
	s.queued -= n
	s.cond.Broadcast() // the read loop may be waiting for room
	return n, nil
}

// WriteTo writes what the server sends to w as it arrives, with no copy
// buffer of its own: chunks go from the read loop to w.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		s.mu.Lock()
		for len(s.chunks) == 0 && !s.eof {
			s.cond.Wait()
		}
		if len(s.chunks) == 0 {
			err := s.err
			s.mu.Unlock()
			return total, err
		}
		chunk := s.chunks[0]
		s.chunks[0] = nil
		s.chunks = s.chunks[1:]
		s.queued -= len(chunk)
		s.cond.Broadcast()
		s.mu.Unlock()
		n, err := w.Write(chunk)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// frameBuf is the size of the frames ReadFrom sends: it is also what an
// idle connection holds while it waits for its client to write.
const frameBuf = 16 << 10

// ReadFrom sends what r gives as DATA frames, each read going straight
// into a frame: one buffer per connection, no further copy.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 8+frameBuf)
	var total int64
	for {
		n, err := r.Read(buf[8:])
		if n > 0 {
			binary.BigEndian.PutUint32(buf, s.id&0x7fffffff)
			buf[4], buf[5], buf[6], buf[7] = 0, byte(n>>16), byte(n>>8), byte(n)
			if werr := s.c.writeFrame(buf[:8+n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// deliver queues data for the reader, waiting while the queue is full.
func (s *Stream) deliver(b []byte, fin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.queued > queueLimit && !s.eof {
		s.cond.Wait()
	}
	if s.eof {
		return // reset meanwhile: drop
	}
	if len(b) > 0 {
		s.chunks = append(s.chunks, b)
		s.queued += len(b)
	}
	if fin {
		s.eof = true
	}
	s.cond.Broadcast()
}

func (s *Stream) remoteDone(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.eof {
		s.eof, s.err = true, err
	}
	s.cond.Broadcast()
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
			c.fail(err)
			return
		}
		length := int(hdr[5])<<16 | int(hdr[6])<<8 | int(hdr[7])
		flags := hdr[4]
		if length > maxFrame {
			c.fail(fmt.Errorf("spdy: frame of %d bytes", length))
			return
		}
		if hdr[0]&0x80 == 0 { // data frame
			id := binary.BigEndian.Uint32(hdr[:4]) & 0x7fffffff
			b := make([]byte, length)
			if _, err := io.ReadFull(c.br, b); err != nil {
				c.fail(err)
				return
			}
			if s := c.stream(id); s != nil {
				s.deliver(b, flags&flagFin != 0)
			}
			continue
		}
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
