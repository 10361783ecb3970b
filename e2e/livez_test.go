package e2e

import (
	"bufio"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// apiFront is an authenticating proxy in front of the sandbox's API
// server, as some companies put one: kpf reaches it without credentials,
// it reaches the API server as the admin, and it counts the /livez
// requests it is sent. With livezStatus set, it answers /livez itself
// with that status, as a proxy that asks for its own login does.
type apiFront struct {
	srv         *httptest.Server
	livez       atomic.Int64
	livezStatus atomic.Int64 // 0: pass /livez on
	// firstOwn and lastOwn are when it first and last answered /livez
	// itself (unix ns).
	firstOwn, lastOwn atomic.Int64
	kubeconfig        string // kpf's: the front, no credentials
}

func newAPIFront(t *testing.T, sb *sandboxtest.Sandbox) *apiFront {
	t.Helper()
	admin, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig(cluster.UserAdmin))
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := rest.TLSConfigFor(admin)
	if err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(admin.Host)
	if err != nil {
		t.Fatal(err)
	}
	f := &apiFront{}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(api) },
		Transport:     &http.Transport{TLSClientConfig: tlsCfg},
		FlushInterval: -1, // watches stream
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/livez" {
			f.livez.Add(1)
			if st := f.livezStatus.Load(); st != 0 {
				now := time.Now().UnixNano()
				f.firstOwn.CompareAndSwap(0, now)
				f.lastOwn.Store(now)
				http.Error(w, "log in first", int(st))
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)

	kc := clientcmdapi.NewConfig()
	kc.Clusters["front"] = &clientcmdapi.Cluster{Server: f.srv.URL, CertificateAuthorityData: pemCert(f.srv)}
	kc.AuthInfos["nobody"] = &clientcmdapi.AuthInfo{}
	kc.Contexts["front"] = &clientcmdapi.Context{Cluster: "front", AuthInfo: "nobody"}
	kc.CurrentContext = "front"
	f.kubeconfig = filepath.Join(t.TempDir(), "front.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, f.kubeconfig); err != nil {
		t.Fatal(err)
	}
	return f
}

func pemCert(s *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
}

// TestOneLivenessProbePerContext: fifty forwards of one context in one
// daemon send the API server one /livez request per period (5 s), not
// fifty; and an answer that is not 2xx (the 403 of an authenticating
// proxy) keeps them alive: a connection open through a forward still
// works after three times the bound (15 s) of such answers.
func TestOneLivenessProbePerContext(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	front := newAPIFront(t, sb)
	var fws strings.Builder
	fws.WriteString("forwards:\n")
	const forwards = 50
	for i := range forwards {
		fmt.Fprintf(&fws, "- {name: f%d, namespace: %s, target: svc/web, ports: [':80']}\n", i, ns)
	}
	k := newKpfCmd(t, sb)
	k.kubeconfig = front.kubeconfig
	k.write(t, "kpf.yaml", fws.String())
	if out, code := k.run(t, "up", "-d", "--wait", "--timeout", "120s"); code != 0 {
		t.Fatalf("kpf up -d --wait: exit %d\n%s", code, out)
	}
	st := k.status(t)
	if len(st.Forwards) != forwards {
		t.Fatalf("status: %d forwards, want %d", len(st.Forwards), forwards)
	}

	// One probe per period: five requests take four periods (20 s; some
	// slack for timers), where fifty probes sent them within a second.
	const period = 5 * time.Second
	front.livez.Store(0)
	start := time.Now()
	sandboxtest.WaitFor(t, 60*time.Second, "five /livez requests", func() (bool, error) { return front.livez.Load() >= 5, nil })
	if took := time.Since(start); took < 4*period*8/10 {
		t.Fatalf("five /livez requests came in %s from %d forwards of one context: want about one per %s", took.Round(time.Millisecond), forwards, period)
	} else {
		t.Logf("five /livez requests in %s", took.Round(time.Millisecond))
	}

	// A 403 is an answer: a connection through a forward lives on.
	c, err := net.Dial("tcp", st.Forwards[0].Local[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if err := httpGet(c, br); err != nil {
		t.Fatalf("GET through forward f0: %v", err)
	}
	front.livezStatus.Store(http.StatusForbidden)
	// kpf took 403s for silence, and dropped every tunnel once it had
	// had no 2xx for the bound (15 s): 403s for longer than the bound and
	// a period.
	const bound = 15 * time.Second
	sandboxtest.WaitFor(t, 90*time.Second, "403 answers to /livez over 20 s", func() (bool, error) {
		first := front.firstOwn.Load()
		return first != 0 && time.Duration(front.lastOwn.Load()-first) >= bound+period, nil
	})
	if err := httpGet(c, br); err != nil {
		t.Fatalf("after 403 answers to /livez for %s, the open connection through f0 failed: %v", time.Duration(front.lastOwn.Load()-front.firstOwn.Load()).Round(time.Second), err)
	}
}
