package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// SOCKS5 (RFC 1928) with user/password authentication (RFC 1929): the
// CONNECT command only.
const (
	socksVersion  = 5
	authVersion   = 1
	methodNone    = 0x00
	methodPass    = 0x02
	methodNoneFit = 0xff

	cmdConnect = 1

	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4

	repOK          = 0x00
	repFailure     = 0x01
	repNotAllowed  = 0x02
	repHostUnreach = 0x04
	repCmdNotSupp  = 0x07
	repAtypNotSupp = 0x08
)

// socksError is a malformed or unsupported request, with the reply code to
// send (0: send none, the greeting itself was bad).
type socksError struct {
	rep byte
	msg string
}

func (e *socksError) Error() string { return "socks5: " + e.msg }

// readGreeting reads the client's methods.
func readGreeting(r io.Reader) (methods []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	if h[0] != socksVersion {
		return nil, &socksError{msg: fmt.Sprintf("version %d, want 5", h[0])}
	}
	if h[1] == 0 {
		return nil, &socksError{msg: "no authentication methods offered"}
	}
	methods = make([]byte, h[1])
	_, err = io.ReadFull(r, methods)
	return methods, err
}

// readUserPass reads an RFC 1929 request.
func readUserPass(r io.Reader) (user, password string, err error) {
	var v [2]byte
	if _, err := io.ReadFull(r, v[:]); err != nil {
		return "", "", err
	}
	if v[0] != authVersion {
		return "", "", &socksError{msg: fmt.Sprintf("user/password version %d, want 1", v[0])}
	}
	u := make([]byte, v[1])
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", err
	}
	var pl [1]byte
	if _, err := io.ReadFull(r, pl[:]); err != nil {
		return "", "", err
	}
	pw := make([]byte, pl[0])
	if _, err := io.ReadFull(r, pw); err != nil {
		return "", "", err
	}
	return string(u), string(pw), nil
}

// readRequest reads a request: the host (a name or an address) and port.
func readRequest(r io.Reader) (host string, port uint16, err error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", 0, err
	}
	if h[0] != socksVersion {
		return "", 0, &socksError{rep: repFailure, msg: fmt.Sprintf("request version %d, want 5", h[0])}
	}
	switch h[3] {
	case atypIPv4, atypIPv6:
		b := make([]byte, 4)
		if h[3] == atypIPv6 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return "", 0, err
		}
		a, _ := netip.AddrFromSlice(b)
		host = a.String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return "", 0, err
		}
		if n[0] == 0 {
			return "", 0, &socksError{rep: repHostUnreach, msg: "empty host name"}
		}
		b := make([]byte, n[0])
		if _, err := io.ReadFull(r, b); err != nil {
			return "", 0, err
		}
		host = string(b)
	default:
		return "", 0, &socksError{rep: repAtypNotSupp, msg: fmt.Sprintf("address type %d", h[3])}
	}
	var pb [2]byte
	if _, err := io.ReadFull(r, pb[:]); err != nil {
		return "", 0, err
	}
	port = uint16(pb[0])<<8 | uint16(pb[1])
	if h[1] != cmdConnect {
		return host, port, &socksError{rep: repCmdNotSupp, msg: fmt.Sprintf("command %d: only CONNECT (1) is supported", h[1])}
	}
	if port == 0 {
		return host, port, &socksError{rep: repHostUnreach, msg: "port 0"}
	}
	return host, port, nil
}

func reply(w io.Writer, rep byte) error {
	_, err := w.Write([]byte{socksVersion, rep, 0, atypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

// replyFor is the SOCKS reply code that tells a client best why its
// destination was refused.
func replyFor(err error) byte {
	var nf *NotFoundError
	switch {
	case errors.Is(err, ErrOutside):
		return repNotAllowed
	case errors.As(err, &nf):
		return repHostUnreach
	}
	return repFailure
}

// socks serves one SOCKS5 client.
func (p *Proxy) socks(ctx context.Context, c *bufConn) {
	defer c.Close()
	methods, err := readGreeting(c)
	if err != nil {
		p.o.Log.Debug("socks5 greeting", "client", c.RemoteAddr().String(), "err", err)
		return
	}
	want := byte(methodNone)
	if p.o.Auth != nil {
		want = methodPass
	}
	offered := false
	for _, m := range methods {
		offered = offered || m == want
	}
	if !offered {
		c.Write([]byte{socksVersion, methodNoneFit})
		p.refused.Add(1)
		p.o.Log.Warn("refused a SOCKS5 client", "client", c.RemoteAddr().String(), "err", "it offered no acceptable authentication (this proxy wants "+map[bool]string{true: "user/password", false: "none"}[p.o.Auth != nil]+")")
		return
	}
	if _, err := c.Write([]byte{socksVersion, want}); err != nil {
		return
	}
	if p.o.Auth != nil {
		user, pass, err := readUserPass(c)
		if err != nil {
			return
		}
		if !p.o.Auth.ok(user, pass) {
			c.Write([]byte{authVersion, 1})
			p.refused.Add(1)
			p.o.Log.Warn("refused a SOCKS5 client: wrong user or password", "client", c.RemoteAddr().String())
			return
		}
		if _, err := c.Write([]byte{authVersion, 0}); err != nil {
			return
		}
	}
	host, port, err := readRequest(c)
	var se *socksError
	if errors.As(err, &se) {
		reply(c, se.rep)
		p.refused.Add(1)
		p.o.Log.Warn("refused a SOCKS5 request", "client", c.RemoteAddr().String(), "err", err)
		return
	}
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	d, err := p.route(ctx, host, port)
	if err != nil {
		reply(c, replyFor(err))
		return
	}
	if err := reply(c, repOK); err != nil {
		return
	}
	p.carry(ctx, raw(c), d)
}
