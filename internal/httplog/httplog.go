package httplog

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Log is where a forward's requests are written, a JSON line each. Safe
// for concurrent use; a nil *Log logs nothing.
type Log struct {
	forward string
	bodies  int // log the first bodies bytes of text bodies; 0 none

	mu sync.Mutex
	w  io.Writer
	c  io.Closer // nil for stderr
}

// Open opens the log at path (created 0600, appended to), or standard
// error for "-". forward names the forward in each line; bodies is
// --http-log-bodies.
func Open(path, forward string, bodies int) (*Log, error) {
	if bodies < 0 {
		return nil, fmt.Errorf("--http-log-bodies %d: want 0 (no bodies) or a number of bytes", bodies)
	}
	l := &Log{forward: forward, bodies: bodies}
	if path == "-" {
		l.w = os.Stderr
		return l, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--http-log: %w", err)
	}
	l.w, l.c = f, f
	return l, nil
}

// NewLog writes to w (for tests and callers with their own writer).
func NewLog(w io.Writer, forward string, bodies int) *Log {
	return &Log{w: w, forward: forward, bodies: bodies}
}

// Close closes the file.
func (l *Log) Close() error {
	if l == nil || l.c == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Close()
}

// Record is one line of the log.
type Record struct {
	Time         string  `json:"time"`
	Kind         string  `json:"kind"` // request, or "not HTTP"
	Forward      string  `json:"forward,omitempty"`
	Conn         string  `json:"conn"` // the client's address
	Pod          string  `json:"pod,omitempty"`
	Method       string  `json:"method,omitempty"`
	Path         string  `json:"path,omitempty"`
	Status       int     `json:"status,omitempty"`
	RequestSize  int64   `json:"requestBytes,omitempty"`
	ResponseSize int64   `json:"responseBytes,omitempty"`
	Seconds      float64 `json:"durationSeconds,omitempty"`
	RequestBody  string  `json:"requestBody,omitempty"`
	ResponseBody string  `json:"responseBody,omitempty"`
	Reason       string  `json:"reason,omitempty"` // not HTTP: what it looked like
	Incomplete   bool    `json:"incomplete,omitempty"`
}

func (l *Log) write(r Record) {
	r.Time = time.Now().UTC().Format(time.RFC3339Nano)
	r.Forward = l.forward
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	l.w.Write(b)
	l.mu.Unlock()
}

// request is one waiting for its response.
type request struct {
	method, path string
	start        time.Time
	size         int64
	body         []byte
	headDone     bool // the head was read; size grows with the body
	bodyDone     bool
}

// Conn watches one connection: Out gets what the client sends, In what
// the pod answers. Out and In may be called from different goroutines,
// never each concurrently with itself.
type Conn struct {
	log  *Log
	id   string
	pod  func() string
	mu   sync.Mutex
	req  side
	resp side

	pending   []*request // in order, not yet answered
	current   *request   // being read from the client
	nextStart time.Time  // when the next request's first byte came
	respReq   *request   // the request the response being read answers
	status    int
	stopped   bool
}

// Conn starts watching a connection from client id; pod says which pod
// serves it when a line is written.
func (l *Log) Conn(id string, pod func() string) *Conn {
	if l == nil {
		return nil
	}
	c := &Conn{log: l, id: id, pod: pod}
	c.req.done = c.requestDone
	c.resp.done = c.responseDone
	return c
}

// Out reads bytes the client sent.
func (c *Conn) Out(p []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	if !c.req.inBody && len(c.req.buf) == 0 {
		// A new request: the first bytes say whether this is HTTP/1.x.
		if why := notRequest(p); why != "" {
			c.stop(why)
			return
		}
		c.nextStart = time.Now()
	}
	c.after(c.req.feed(p, c.log.bodies, c.requestHead))
}

// In reads bytes the pod sent.
func (c *Conn) In(p []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	if !c.resp.inBody && len(c.resp.buf) == 0 {
		if len(c.pending) == 0 {
			c.stop("the server spoke first")
			return
		}
		if !strings.HasPrefix("HTTP/", string(p[:min(len(p), 5)])) {
			c.stop("not an HTTP response")
			return
		}
	}
	c.after(c.resp.feed(p, c.log.bodies, c.responseHead))
}

// upgraded: the connection switched to another protocol (101, CONNECT);
// its last request is logged and the rest passes unwatched.
const upgraded = "upgraded"

// after acts on why a side stopped.
func (c *Conn) after(why string) {
	switch why {
	case "":
	case upgraded:
		c.stopped, c.pending = true, nil
	default:
		c.stop(why)
	}
}

// Close ends the connection: a response read until close is complete.
func (c *Conn) Close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	if c.resp.inBody && c.resp.kind == bodyClose {
		c.resp.finish()
	}
	for _, r := range c.pending {
		if r.headDone {
			c.log.write(Record{Kind: "request", Conn: c.id, Pod: c.pod(), Method: r.method, Path: r.path, RequestSize: r.size,
				Seconds: time.Since(r.start).Seconds(), Incomplete: true})
		}
	}
	c.pending = nil
	c.stopped = true
}

// stop gives up on the connection, saying why once.
func (c *Conn) stop(why string) {
	c.stopped = true
	c.pending = nil
	c.log.write(Record{Kind: "not HTTP", Conn: c.id, Pod: c.pod(), Reason: why})
}

// notRequest says why p cannot start an HTTP/1.x request; "" if it can.
func notRequest(p []byte) string {
	switch {
	case len(p) == 0:
		return ""
	case p[0] == 0x16:
		return "TLS"
	case strings.HasPrefix("PRI * HTTP/2", string(p[:min(len(p), 12)])) && len(p) >= 3:
		return "HTTP/2 (h2c), passed through"
	}
	for i, b := range p {
		if b == ' ' && i > 0 {
			return ""
		}
		if b < 'A' || b > 'Z' || i >= 20 {
			return "not HTTP/1.x"
		}
	}
	return ""
}

// requestHead parses a request's head.
func (c *Conn) requestHead(b []byte) (bodyKind, int64, string) {
	h, ok := parseHead(b)
	if !ok || !isToken(h.first[0]) || !strings.HasPrefix(h.first[2], "HTTP/1.") {
		if strings.HasPrefix(h.first[2], "HTTP/2") {
			return 0, 0, "HTTP/2 (h2c), passed through"
		}
		return 0, 0, "not HTTP/1.x"
	}
	if len(c.pending) >= maxPending {
		return 0, 0, "over 1024 requests waiting for responses"
	}
	start := c.nextStart
	if start.IsZero() {
		start = time.Now() // pipelined behind another in the same read
	}
	c.nextStart = time.Time{}
	r := &request{method: h.first[0], path: h.first[1], start: start, headDone: true}
	c.current = r
	c.pending = append(c.pending, r)
	switch {
	case h.chunked:
		return bodyChunked, 0, ""
	case h.length > 0:
		return bodyLength, h.length, ""
	}
	return bodyNone, 0, ""
}

func (c *Conn) requestDone(size int64, body []byte) {
	if r := c.current; r != nil {
		r.size, r.bodyDone = size, true
		r.body = append([]byte(nil), body...)
	}
}

// responseHead parses a response's head and pairs it with the oldest
// request waiting.
func (c *Conn) responseHead(b []byte) (bodyKind, int64, string) {
	h, ok := parseHead(b)
	if !ok || !strings.HasPrefix(h.first[0], "HTTP/1.") {
		return 0, 0, "not an HTTP/1.x response"
	}
	status, err := strconv.Atoi(h.first[1])
	if err != nil || status < 100 || status > 999 {
		return 0, 0, "not an HTTP/1.x response"
	}
	if len(c.pending) == 0 {
		return 0, 0, "a response to no request"
	}
	c.status = status
	c.respReq = c.pending[0]
	switch {
	case status == 101 || (c.respReq.method == "CONNECT" && status/100 == 2):
		// Another protocol from here on: log this one, then pass through.
		c.responseDone(c.resp.size, nil)
		return 0, 0, upgraded
	case status/100 == 1:
		c.respReq = nil // interim (100 Continue): the real answer follows
		c.resp.size = 0
		return bodyNone, 0, ""
	case c.respReq.method == "HEAD" || status == 204 || status == 304:
		return bodyNone, 0, ""
	case h.chunked:
		return bodyChunked, 0, ""
	case h.length >= 0:
		return bodyLength, h.length, ""
	}
	return bodyClose, 0, ""
}

func (c *Conn) responseDone(size int64, body []byte) {
	r := c.respReq
	if r == nil {
		return // an interim response
	}
	c.respReq = nil
	if len(c.pending) > 0 && c.pending[0] == r {
		c.pending = c.pending[1:]
	}
	rec := Record{Kind: "request", Conn: c.id, Pod: c.pod(), Method: r.method, Path: r.path, Status: c.status,
		RequestSize: r.size, ResponseSize: size, Seconds: time.Since(r.start).Seconds()}
	if !r.bodyDone {
		rec.Incomplete = true // answered before the client finished sending
	}
	rec.RequestBody, rec.ResponseBody = text(r.body), text(body)
	c.log.write(rec)
}

// text is b when it reads as text, else "".
func text(b []byte) string {
	if len(b) == 0 || !utf8.Valid(b) {
		return ""
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\n' && r != '\r' && r != '\t' {
			return ""
		}
	}
	return string(b)
}
