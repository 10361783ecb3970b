package cluster_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/target"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// discoveryServer is an API server that knows services and pods of v1,
// serves service shop/api, and counts the connections made to it.
func discoveryServer(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var conns atomic.Int32
	mux := http.NewServeMux()
	reply := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, body)
		}
	}
	mux.HandleFunc("/api", reply(`{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}`))
	mux.HandleFunc("/apis", reply(`{"kind":"APIGroupList","apiVersion":"v1","groups":[]}`))
	mux.HandleFunc("/api/v1", reply(`{"kind":"APIResourceList","groupVersion":"v1","resources":[`+
		`{"name":"services","singularName":"service","namespaced":true,"kind":"Service","verbs":["get","list"],"shortNames":["svc"]},`+
		`{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]}]}`))
	mux.HandleFunc("/api/v1/namespaces/shop/services/api", reply(`{"kind":"Service","apiVersion":"v1","metadata":{"name":"api","namespace":"shop"},"spec":{"selector":{"app":"api"}}}`))
	s := httptest.NewUnstartedServer(mux)
	s.EnableHTTP2 = true
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s, &conns
}

// Finding targets with kubectl's resource builder goes over the
// connection's own HTTP client: opening forward after forward (and
// retrying one that waits) makes no new connection to the API server.
// The identity keeps environment variables, as every command's does, so
// its REST configuration has a proxy function, which client-go's
// transport cache cannot share: through Flags each lookup made a
// transport of its own, and left its connection open.
func TestTargetsAreFoundOverTheConnection(t *testing.T) {
	s, conns := discoveryServer(t)
	p := filepath.Join(t.TempDir(), "config")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: a, context: {cluster: c, user: u, namespace: shop}}]
current-context: a
`, s.URL)
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	id := identity.Identity{Flags: map[string][]string{"kubeconfig": {p}}, Env: []string{"HOME=" + t.TempDir()}}
	c, err := cluster.NewRegistry(cluster.Options{}).Acquire(id)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	for i := range 5 {
		obj, err := target.BuilderGetter{Flags: c.Getter()}.Get(context.Background(), "shop", "svc/api")
		if err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		if tg := target.New("shop", "svc/api", obj); tg.Ref != "service/api" {
			t.Fatalf("lookup %d found %q", i, tg.Ref)
		}
	}
	if _, err := c.Client().CoreV1().Services("shop").Get(context.Background(), "api", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections to the API server for 5 lookups and a typed request, want 1 (the connection's)", n)
	}
}
