package cluster_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/testnet"
	"github.com/kpf-dev/kpf/internal/tunnel"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: not-a-real-token}
contexts:
- name: a
  context: {cluster: c, user: u, namespace: shop}
- name: b
  context: {cluster: c, user: u}
current-context: a
`

func writeKubeconfig(t *testing.T) identity.Identity {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return identity.Identity{Flags: map[string][]string{"kubeconfig": {p}}}
}

// One connection per identity and context, shared while anyone holds it
// and closed with its last user; the next user gets a new one.
func TestRegistrySharesByIdentityAndClosesWithLastUser(t *testing.T) {
	id := writeKubeconfig(t)
	r := cluster.NewRegistry(cluster.Options{UserAgent: "kpf-test"})
	a1, err := r.Acquire(id.WithContext("a"))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := r.Acquire(id.WithContext("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Acquire(id.WithContext("b"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	if a1.Client() != a2.Client() || a1.Watches() != a2.Watches() || cluster.TunnelTLS(a1) != cluster.TunnelTLS(a2) {
		t.Fatal("two users of one identity and context got different connections")
	}
	if a1.Client() == b.Client() {
		t.Fatal("two contexts share a connection")
	}
	if a1.Namespace() != "shop" || b.Namespace() != "default" || a1.Config().UserAgent != "kpf-test" {
		t.Fatalf("namespaces %q and %q, user agent %q", a1.Namespace(), b.Namespace(), a1.Config().UserAgent)
	}
	if n := r.Len(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	a1.Release()
	a1.Release() // a second release of one hold does nothing
	if cluster.TunnelTLS(a2) == nil || r.Len() != 2 {
		t.Fatal("the connection closed while a user still holds it")
	}
	a2.Release()
	if cluster.TunnelTLS(a2) != nil || r.Len() != 1 {
		t.Fatalf("after its last user: TLS configuration %v, %d connections open", cluster.TunnelTLS(a2) != nil, r.Len())
	}
	if _, err := a2.Dial(context.Background(), "ns", "p", tunnel.SPDY, tunnel.OwnDataPath); !errors.Is(err, cluster.ErrClosed) {
		t.Fatalf("dial on a closed connection: %v, want %v", err, cluster.ErrClosed)
	}
	a3, err := r.Acquire(id.WithContext("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a3.Release()
	if a3.Client() == a1.Client() {
		t.Fatal("a closed connection was handed out again")
	}
}

// A kubeconfig that does not load is a ConfigError.
func TestConfigError(t *testing.T) {
	id := writeKubeconfig(t).WithContext("missing")
	_, err := cluster.Connect(id, cluster.Options{})
	var ce *cluster.ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err %v, want a ConfigError naming the context", err)
	}
}

// podGetter finds pod/NAME targets in the fake clientset.
type podGetter struct{ c kubernetes.Interface }

func (g podGetter) Get(ctx context.Context, namespace, typeName string) (kruntime.Object, error) {
	return g.c.CoreV1().Pods(namespace).Get(ctx, strings.TrimPrefix(typeName, "pod/"), metav1.GetOptions{})
}

// open opens a forward of pod p on c.
func open(t *testing.T, ctx context.Context, s *fakeapi.Server, c *cluster.Conn) *session.Session {
	t.Helper()
	addrs, err := portspec.ParseAddresses([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	sp := session.Spec{Namespace: "ns", Target: "pod/p", Ports: []portspec.Port{{Remote: "80", LocalSet: true}}, Addresses: addrs,
		Transport: tunnel.SPDY, DataPath: tunnel.OwnDataPath, PodRunningTimeout: 5 * time.Second, ReconnectWait: 5 * time.Second}
	log := slog.New(slog.DiscardHandler)
	sess, err := session.Open(ctx, sp, session.Deps{Cluster: c, Objects: podGetter{s.Client}, Out: io.Discard, ErrOut: io.Discard, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// Two forwards of one connection share its TLS session cache: the second
// one's tunnel resumes the session the first one's made; a forward on
// another connection does not. The session holds the connection while it
// runs, and once the last holder is gone the TLS configuration, with its
// sessions, is released.
func TestForwardsOfOneConnShareTLSSessionsReleasedOnClose(t *testing.T) {
	s := fakeapi.New(t)
	s.Pod(t, "ns", "p", nil, true, fakeapi.Echo(t, "p"))
	c, err := cluster.New(s.Config, s.Client, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := open(t, ctx, s, c)
	defer first.Close()
	if s.Handshakes.Load() != 1 || s.Resumed.Load() != 0 {
		t.Fatalf("first forward: %d handshakes, %d resumed; want 1 full", s.Handshakes.Load(), s.Resumed.Load())
	}
	second := open(t, ctx, s, c)
	defer second.Close()
	if s.Handshakes.Load() != 2 || s.Resumed.Load() != 1 {
		t.Fatalf("second forward of the connection: %d handshakes, %d resumed; want its tunnel to resume", s.Handshakes.Load(), s.Resumed.Load())
	}
	other, err := cluster.New(s.Config, s.Client, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	third := open(t, ctx, s, other)
	third.Close()
	other.Release()
	if s.Resumed.Load() != 1 {
		t.Fatal("a forward of another connection resumed a TLS session of this one")
	}

	tlsCfg := weak.Make(cluster.TunnelTLS(c))
	c.Release() // the sessions still hold it
	if cluster.TunnelTLS(c) == nil {
		t.Fatal("the connection closed while its forwards run")
	}
	first.Close()
	second.Close()
	testnet.Within(t, 5*time.Second, "the connection to close with its last forward", func() bool { return cluster.TunnelTLS(c) == nil })
	if _, err := c.Dial(ctx, "ns", "p", tunnel.SPDY, tunnel.OwnDataPath); !errors.Is(err, cluster.ErrClosed) {
		t.Fatalf("dial after close: %v", err)
	}
	testnet.Within(t, 5*time.Second, "the TLS configuration and its sessions to be collected", func() bool {
		runtime.GC()
		return tlsCfg.Value() == nil
	})
}

// The service watches of discover entries are the connection's: shared
// by its users, and stopped with its last release.
func TestServiceWatchesEndWithTheConnection(t *testing.T) {
	s := fakeapi.New(t)
	c, err := cluster.New(s.Config, s.Client, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other := c.Acquire()
	if other.Services() != c.Services() {
		t.Fatal("two holds of one connection have different service watches")
	}
	sub, err := c.Services().Subscribe("shop", func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	w := c.Services()
	c.Release()
	if w.Namespaces() != 1 {
		t.Fatal("the watch stopped while the connection is held")
	}
	other.Release()
	if n := w.Namespaces(); n != 0 {
		t.Fatalf("%d namespaces' services still watched after the last release", n)
	}
}
