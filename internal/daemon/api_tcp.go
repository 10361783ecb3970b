package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// APIToken is the file holding the bearer token of the TCP listener
// (0600; a new token at each daemon start).
func (h Home) APIToken() string { return filepath.Join(string(h), "api-token") }

// ErrAPIAddr: --api-addr is not a loopback address and port.
var ErrAPIAddr = errors.New("the daemon's API listens on loopback only")

// CheckAPIAddr checks an --api-addr value: a loopback IP and a port
// (localhost is 127.0.0.1).
func CheckAPIAddr(addr string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host == "localhost" {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	ap, err := netip.ParseAddrPort(addr)
	switch {
	case err != nil:
		return ap, fmt.Errorf("--api-addr %q: want a loopback address and port, such as 127.0.0.1:7070", addr)
	case !ap.Addr().IsLoopback():
		return ap, fmt.Errorf("--api-addr %q: %w (it starts forwards as you): use 127.0.0.1:PORT or [::1]:PORT", addr, ErrAPIAddr)
	}
	return ap, nil
}

// serveTCP serves the API on s.APIAddr, if set, until the returned stop.
func (s *Server) serveTCP() (stop func(), err error) {
	if s.APIAddr == "" {
		os.Remove(s.Home.APIToken()) // a token of an earlier daemon opens nothing
		return func() {}, nil
	}
	ap, err := CheckAPIAddr(s.APIAddr)
	if err != nil {
		return nil, err
	}
	token, err := newToken(s.Home.APIToken())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("--api-addr %s: %w", s.APIAddr, err)
	}
	s.apiAt = ln.Addr()
	srv := &http.Server{Handler: tokenAuth(token, ln.Addr().(*net.TCPAddr).Port, s.mux()),
		BaseContext: func(net.Listener) context.Context { return s.ctx }, ReadHeaderTimeout: 10 * time.Second}
	s.Log.Info("daemon API on TCP", "addr", ln.Addr().String(), "token", s.Home.APIToken())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(ctx)
		cancel()
		srv.Close()
		<-done
		os.Remove(s.Home.APIToken())
	}, nil
}

// APIAt is where the TCP listener listens (nil without one); set before
// the socket answers.
func (s *Server) APIAt() net.Addr { return s.apiAt }

// newToken writes a new random token to path, readable by the user only.
func newToken(path string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	token := hex.EncodeToString(b)
	os.Remove(path) // a file of another mode is not reused
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return "", err
	}
	return token, f.Close()
}

// tokenAuth lets through requests that carry the token, from a client on
// this machine that is not a web page of another site: a request with an
// Origin other than the listener's own, or a Host that is not loopback
// (DNS rebinding), is refused before the token is looked at. No CORS
// headers are ever sent, so a browser shows other sites nothing.
func tokenAuth(token string, port int, next http.Handler) http.Handler {
	self := map[string]bool{}
	for _, h := range []string{"127.0.0.1", "localhost", "[::1]"} {
		self[fmt.Sprintf("%s:%d", h, port)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" && !self[strings.TrimPrefix(o, "http://")] {
			httpError(w, fmt.Sprintf("forbidden: requests from web pages of other sites (Origin %s) are refused", o), http.StatusForbidden)
			return
		}
		if !self[r.Host] {
			httpError(w, fmt.Sprintf("forbidden: Host %q is not this listener's loopback address", r.Host), http.StatusForbidden)
			return
		}
		got, ok := bearer(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kpf"`)
			httpError(w, "unauthorized: send the token of the daemon's api-token file as Authorization: Bearer TOKEN", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearer is the credentials of an Authorization header of the Bearer
// scheme, whose name is case-insensitive (RFC 9110 §11.1: "bearer" and
// "BEARER" are Bearer too).
func bearer(h string) (string, bool) {
	scheme, cred, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(cred, " "), true
}
