// Package httplog logs the HTTP/1.x requests that pass through a forward:
// one JSON line per request with its method, path and query, status,
// sizes, duration and pod. It watches copies of the bytes as the data
// path moves them and never changes or holds them: headers are read into
// a bounded buffer, bodies are framed (Content-Length, chunked, until
// close) by counting, not stored. Keep-alive and pipelined requests pair
// with their responses in order. A connection that is not HTTP/1.x (TLS,
// a database protocol, HTTP/2) is logged once as such and then ignored.
// Header values are never written: Authorization, Cookie and Set-Cookie
// never reach the log.
package httplog

import (
	"bytes"
	"strconv"
	"strings"
)

// maxHeader bounds the bytes of one message's head kept while it is read.
const maxHeader = 64 << 10

// maxPending bounds the requests waiting for their responses.
const maxPending = 1024

// bodyKind is how a message's body is framed.
type bodyKind int

const (
	bodyNone    bodyKind = iota
	bodyLength           // Content-Length bytes
	bodyChunked          // chunked transfer coding
	bodyClose            // until the connection closes (responses only)
)

// side reads one direction's messages: heads into buf, bodies by
// counting.
type side struct {
	buf     []byte // the head being read
	inBody  bool
	kind    bodyKind
	left    int64  // bodyLength: bytes left; bodyChunked: of this chunk
	chunk   int    // bodyChunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers
	line    []byte // bodyChunked: the size or trailer line being read
	size    int64  // bytes of this message so far, head included
	capture []byte // the start of the body, when bodies are logged
	done    func(size int64, body []byte)
}

// feed reads p; onHead is called with each complete head and returns how
// the body that follows is framed; done is called at the end of each
// message. It returns a reason to stop watching ("" to go on).
func (s *side) feed(p []byte, bodies int, onHead func(head []byte) (bodyKind, int64, string)) string {
	for len(p) > 0 {
		if !s.inBody {
			i := len(s.buf)
			s.buf = append(s.buf, p...)
			end := bytes.Index(s.buf[max(0, i-3):], []byte("\r\n\r\n"))
			if end < 0 {
				if len(s.buf) > maxHeader {
					return "a message head over 64 KiB"
				}
				s.size += int64(len(p))
				return ""
			}
			end += max(0, i-3) + 4
			used := end - i // bytes of p that belong to the head
			s.size += int64(used)
			p = p[used:]
			kind, n, stop := onHead(s.buf[:end])
			s.buf = s.buf[:0]
			if stop != "" {
				return stop
			}
			s.kind, s.left, s.chunk = kind, n, 0
			s.capture = s.capture[:0]
			if kind == bodyNone || (kind == bodyLength && n == 0) {
				s.finish()
				continue
			}
			s.inBody = true
			continue
		}
		switch s.kind {
		case bodyLength:
			n := min(int64(len(p)), s.left)
			s.take(p[:n], bodies)
			p = p[n:]
			s.left -= n
			if s.left == 0 {
				s.finish()
			}
		case bodyClose:
			s.take(p, bodies)
			p = nil
		case bodyChunked:
			var stop string
			p, stop = s.chunked(p, bodies)
			if stop != "" {
				return stop
			}
		}
	}
	return ""
}

// take counts body bytes, keeping the first ones when bodies are logged.
func (s *side) take(p []byte, bodies int) {
	s.size += int64(len(p))
	if room := bodies - len(s.capture); room > 0 {
		s.capture = append(s.capture, p[:min(room, len(p))]...)
	}
}

func (s *side) finish() {
	s.inBody = false
	s.done(s.size, s.capture)
	s.size = 0
}

// chunked reads the chunked coding: size lines, data, CRLF, and the
// trailers after the last chunk.
func (s *side) chunked(p []byte, bodies int) ([]byte, string) {
	for len(p) > 0 {
		switch s.chunk {
		case 1: // data
			n := min(int64(len(p)), s.left)
			s.take(p[:n], bodies)
			p = p[n:]
			s.left -= n
			if s.left == 0 {
				s.chunk, s.line = 2, s.line[:0]
			}
			continue
		}
		// A line: the size, the CRLF after data, or a trailer.
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.line = append(s.line, p...)
			s.size += int64(len(p))
			if len(s.line) > 4096 {
				return nil, "a chunk line over 4 KiB"
			}
			return nil, ""
		}
		s.line = append(s.line, p[:i+1]...)
		s.size += int64(i + 1)
		p = p[i+1:]
		line := strings.TrimRight(string(s.line), "\r\n")
		s.line = s.line[:0]
		switch s.chunk {
		case 0:
			hex, _, _ := strings.Cut(line, ";")
			n, err := strconv.ParseInt(strings.TrimSpace(hex), 16, 64)
			if err != nil || n < 0 {
				return nil, "a bad chunk size"
			}
			if n == 0 {
				s.chunk = 3
			} else {
				s.chunk, s.left = 1, n
			}
		case 2:
			if line != "" {
				return nil, "no CRLF after a chunk"
			}
			s.chunk = 0
		case 3:
			if line == "" { // the end of the trailers, and of the message
				s.finish()
				return p, ""
			}
		}
	}
	return p, ""
}

// head is a parsed message head.
type head struct {
	first   [3]string // method, target, version; or version, status, reason
	length  int64     // Content-Length, -1 if absent
	chunked bool
	upgrade bool // Connection: upgrade
	close   bool // Connection: close
}

// parseHead splits a head into its first line's three parts and the
// framing headers. It reports false for what is not an HTTP/1.x head.
func parseHead(b []byte) (head, bool) {
	h := head{length: -1}
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\r\n")
	parts := strings.SplitN(lines[0], " ", 3)
	if len(parts) < 2 {
		return h, false
	}
	copy(h.first[:], parts)
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return h, false
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "content-length":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return h, false
			}
			h.length = n
		case "transfer-encoding":
			h.chunked = strings.Contains(strings.ToLower(v), "chunked")
		case "connection":
			lv := strings.ToLower(v)
			h.upgrade = h.upgrade || strings.Contains(lv, "upgrade")
			h.close = h.close || strings.Contains(lv, "close")
		}
	}
	return h, true
}

// isToken reports whether s is an HTTP method (a token).
func isToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, r) {
			return false
		}
	}
	return true
}
