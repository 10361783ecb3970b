package workload

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Dial connects to addr: HOST:PORT directly, or through a proxy as
// socks5h://PROXY/HOST:PORT (SOCKS5, the proxy resolving HOST) or
// connect://PROXY/HOST:PORT (HTTP CONNECT). The clients of this package
// and the bench take such addresses, so that a proxy is measured as any
// other path.
func Dial(addr string, timeout time.Duration) (net.Conn, error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return net.DialTimeout("tcp", addr, timeout)
	}
	proxy, dest, ok := strings.Cut(rest, "/")
	if !ok {
		return nil, fmt.Errorf("%q: want %s://PROXY/HOST:PORT", addr, scheme)
	}
	c, err := net.DialTimeout("tcp", proxy, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	switch scheme {
	case "socks5h":
		err = socks5(c, dest)
	case "connect":
		c, err = connect(c, dest)
	default:
		err = fmt.Errorf("%q: unknown proxy scheme %q (socks5h, connect)", addr, scheme)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("through %s to %s: %w", proxy, dest, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// socks5 is a SOCKS5 CONNECT by name, no authentication (RFC 1928), its
// greeting and request in one write.
func socks5(c net.Conn, dest string) error {
	host, port, err := net.SplitHostPort(dest)
	if err != nil {
		return err
	}
	p, err := strconv.Atoi(port)
	if err != nil || len(host) > 255 {
		return fmt.Errorf("bad destination %q", dest)
	}
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	req = append(append(req, host...), byte(p>>8), byte(p))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var r [12]byte // method choice (2), then a reply with an IPv4 address (10)
	if _, err := io.ReadFull(c, r[:]); err != nil {
		return err
	}
	if r[1] != 0 || r[3] != 0 {
		return fmt.Errorf("socks5: method %d, reply %d", r[1], r[3])
	}
	return nil
}

// connect is an HTTP CONNECT; bytes the proxy sent after its answer are
// kept for the first reads of the connection it returns.
func connect(c net.Conn, dest string) (net.Conn, error) {
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dest, dest); err != nil {
		return c, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return c, err
	}
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("CONNECT: %s", resp.Status)
	}
	if br.Buffered() == 0 {
		return c, nil
	}
	return &readAhead{Conn: c, r: br}, nil
}

type readAhead struct {
	net.Conn
	r *bufio.Reader
}

func (c *readAhead) Read(p []byte) (int, error) { return c.r.Read(p) }
