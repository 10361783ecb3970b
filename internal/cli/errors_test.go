package cli

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/kpf-dev/kpf/internal/proxydial"
	"k8s.io/client-go/rest"
)

// The errors below are the shapes Go's HTTP client (API calls) and kpf's
// tunnel dialer give for a proxy that is down or refuses.
func TestProxyFailuresNameTheProxy(t *testing.T) {
	const host = "https://api.example:6443"
	proxy, _ := url.Parse("http://alice:s3cret@proxy.example:3128")
	withProxy := &rest.Config{Host: host, Proxy: http.ProxyURL(proxy)}
	refused := &net.OpError{Op: "proxyconnect", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"API call, proxy down", &url.Error{Op: "Get", URL: host + "/api", Err: refused},
			[]string{"through the proxy http://alice:xxxxx@proxy.example:3128: the proxy refused the connection", "is the proxy running?", "proxy-url in your kubeconfig"}},
		{"API call, CONNECT refused", &url.Error{Op: "Get", URL: host + "/api", Err: errors.New("Proxy Authentication Required")},
			[]string{"the proxy refused: Proxy Authentication Required", "are the user and password in the proxy's URL right?"}},
		{"tunnel, CONNECT refused", &proxydial.ProxyError{Proxy: proxy, Err: &proxydial.RefusedError{Status: "403 Forbidden"}},
			[]string{"through the proxy http://alice:xxxxx@proxy.example:3128: the proxy refused: 403 Forbidden (check proxy-url"}},
		{"tunnel, proxy down", &proxydial.ProxyError{Proxy: proxy, Err: refused},
			[]string{"the proxy refused the connection"}},
	} {
		got := explainNetwork(tc.err, withProxy)
		if got == nil {
			t.Errorf("%s: not explained", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(got.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, got, w)
			}
		}
		if strings.Contains(got.Error(), "s3cret") {
			t.Errorf("%s: %q prints the proxy's password", tc.name, got)
		}
	}
	// Without a proxy, a refused connection is the API server's.
	direct := &rest.Config{Host: host, Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }}
	got := explainNetwork(&url.Error{Op: "Get", URL: host, Err: refused}, direct)
	if got == nil || strings.Contains(got.Error(), "proxy") || !strings.Contains(got.Error(), "cannot reach the API server at "+host+": connection refused") {
		t.Errorf("no proxy: %v", got)
	}
}
