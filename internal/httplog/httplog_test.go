package httplog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// run feeds a conversation to a Conn, each side in pieces of n bytes
// (all at once for n 0), and returns the records.
func run(t *testing.T, reqs, resps string, n, bodies int) []Record {
	t.Helper()
	var out bytes.Buffer
	c := NewLog(&out, "api", bodies).Conn("127.0.0.1:5000", func() string { return "api-0" })
	feed := func(f func([]byte), s string) {
		b := []byte(s)
		if n == 0 {
			f(b)
			return
		}
		for len(b) > 0 {
			k := min(n, len(b))
			f(b[:k])
			b = b[k:]
		}
	}
	feed(c.Out, reqs)
	feed(c.In, resps)
	c.Close()
	var recs []Record
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

type want struct {
	method, path string
	status       int
	req, resp    int64
}

func check(t *testing.T, name string, got []Record, wants ...want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%s: %d records, want %d: %+v", name, len(got), len(wants), got)
	}
	for i, w := range wants {
		g := got[i]
		if g.Kind != "request" || g.Method != w.method || g.Path != w.path || g.Status != w.status || g.RequestSize != w.req || g.ResponseSize != w.resp || g.Pod != "api-0" || g.Conn != "127.0.0.1:5000" || g.Forward != "api" {
			t.Errorf("%s: record %d = %+v, want %+v", name, i, g, w)
		}
	}
}

const (
	get    = "GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret-token\r\nCookie: session=s3cret-cookie\r\n\r\n"
	post   = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
	put    = "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
	ok200  = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: s3cret-set\r\n\r\nok"
	chunk  = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nmade\r\n0\r\n\r\n"
	nobody = "HTTP/1.1 204 No Content\r\n\r\n"
)

func TestKeepAliveAndPipelining(t *testing.T) {
	reqs, resps := get+post+put, ok200+chunk+nobody
	wants := []want{
		{"GET", "/a?x=1", 200, int64(len(get)), int64(len(ok200))},
		{"POST", "/b", 201, int64(len(post)), int64(len(chunk))},
		{"PUT", "/c", 204, int64(len(put)), int64(len(nobody))},
	}
	for _, n := range []int{0, 1, 2, 3, 7, 64} {
		check(t, "pipelined", run(t, reqs, resps, n, 0), wants...)
	}
	// Request, response, request, response on one connection.
	var out bytes.Buffer
	c := NewLog(&out, "api", 0).Conn("127.0.0.1:5000", func() string { return "api-0" })
	for i, r := range []string{get, post, put} {
		c.Out([]byte(r))
		c.In([]byte([]string{ok200, chunk, nobody}[i]))
	}
	c.Close()
	if n := strings.Count(out.String(), `"kind":"request"`); n != 3 {
		t.Errorf("keep-alive: %d records:\n%s", n, out.String())
	}
	for _, secret := range []string{"s3cret", "Bearer", "session="} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
}

func TestFraming(t *testing.T) {
	head := "HEAD /h HTTP/1.1\r\n\r\n"
	headResp := "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
	check(t, "HEAD", run(t, head+get, headResp+ok200, 0, 0),
		want{"HEAD", "/h", 200, int64(len(head)), int64(len(headResp))},
		want{"GET", "/a?x=1", 200, int64(len(get)), int64(len(ok200))})
	expect := "POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
	interim := "HTTP/1.1 100 Continue\r\n\r\n"
	check(t, "100-continue", run(t, expect, interim+ok200, 0, 0), want{"POST", "/e", 200, int64(len(expect)), int64(len(ok200))})
	closeResp := "HTTP/1.0 200 OK\r\n\r\nuntil the connection closes"
	check(t, "until close", run(t, "GET / HTTP/1.0\r\n\r\n", closeResp, 5, 0), want{"GET", "/", 200, 18, int64(len(closeResp))})
	notMod := "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
	check(t, "304", run(t, get+get, notMod+ok200, 0, 0),
		want{"GET", "/a?x=1", 304, int64(len(get)), int64(len(notMod))},
		want{"GET", "/a?x=1", 200, int64(len(get)), int64(len(ok200))})
	up := "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
	switched := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
	got := run(t, up, switched, 0, 0)
	if len(got) != 1 || got[0].Status != 101 || got[0].Path != "/ws" {
		t.Errorf("upgrade: %+v", got)
	}
}

func TestNotHTTPIsLoggedOnce(t *testing.T) {
	for name, tc := range map[string]struct{ out, in, reason string }{
		"TLS":   {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "\x16\x03\x03", "TLS"},
		"redis": {"*1\r\n$4\r\nPING\r\n", "+PONG\r\n", "not HTTP/1.x"},
		"h2c":   {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "", "HTTP/2 (h2c), passed through"},
		"mysql": {"", "J\x00\x00\x00\x0a8.0.36", "the server spoke first"},
	} {
		got := run(t, tc.out, tc.in, 3, 0)
		if len(got) != 1 || got[0].Kind != "not HTTP" || got[0].Reason != tc.reason {
			t.Errorf("%s: %+v, want one not HTTP line (%s)", name, got, tc.reason)
		}
	}
}

func TestBodiesOnlyAsText(t *testing.T) {
	got := run(t, post, ok200, 0, 4)
	if len(got) != 1 || got[0].RequestBody != "hell" || got[0].ResponseBody != "ok" {
		t.Errorf("%+v", got)
	}
	bin := "POST /bin HTTP/1.1\r\nContent-Length: 3\r\n\r\n\x00\x01\x02"
	if got := run(t, bin, ok200, 0, 10); len(got) != 1 || got[0].RequestBody != "" {
		t.Errorf("binary body logged: %+v", got)
	}
	if got := run(t, post, ok200, 0, 0); got[0].RequestBody != "" {
		t.Errorf("bodies logged without asking: %+v", got)
	}
}

// FuzzConn: whatever the two sides send, the parser neither panics nor
// holds more than a bounded head.
func FuzzConn(f *testing.F) {
	f.Add([]byte(get+post+put), []byte(ok200+chunk+nobody), uint8(3))
	f.Add([]byte("\x16\x03\x01"), []byte("HTTP/1.1 200 OK\r\n\r\n"), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), []byte("HTTP/1.1 100 x\r\n\r\nHTTP/1.1 200 x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, out, in []byte, n uint8) {
		step := int(n%16) + 1
		c := NewLog(&bytes.Buffer{}, "f", 8).Conn("c", func() string { return "p" })
		for len(out) > 0 || len(in) > 0 {
			k := min(step, len(out))
			c.Out(out[:k])
			out = out[k:]
			k = min(step, len(in))
			c.In(in[:k])
			in = in[k:]
			if len(c.req.buf) > maxHeader+step || len(c.resp.buf) > maxHeader+step || len(c.pending) > maxPending || len(c.req.line) > 4096+step {
				t.Fatalf("unbounded: head %d/%d, pending %d", len(c.req.buf), len(c.resp.buf), len(c.pending))
			}
		}
		c.Close()
	})
}
