// Package cluster is kpf's connection to one API server as one identity:
// a Conn per identity and kubeconfig context, shared by every forward and
// proxy that connects as it (kpf up, kpf run, the daemon's files, kpf
// forward, kpf proxy) and by doctor and completion.
//
// A Conn owns what those users would otherwise each make again: the REST
// configuration, the HTTP client and typed clients over it (client-go's
// model: one http.Client shared by every typed client), the pod watches
// per namespace (follow.Watches), the service watches per namespace of
// discover entries (discover.Watches), the API server's liveness probe (one per
// connection, however many forwards subscribe) and the TLS configuration
// of kpf's tunnels with its session cache. It is reference counted: each
// user acquires it and releases it, and the last release closes it (its
// watches and probe stop, its TLS configuration and sessions are
// dropped), so credentials live as long as something uses them.
//
// It must not explain errors to people (the CLI does, from the typed
// errors here), print anything, or know about forwards, files or the
// daemon; and it holds no process-wide state: a Registry is made by the
// command (or the daemon) that shares its connections.
package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/discover"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"k8s.io/apimachinery/pkg/api/meta"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The client-side rate limit of every connection, when the kubeconfig
// sets none: client-go's default (5 requests/s, bursts of 10) paces a file
// of a hundred forwards to tens of seconds at start; the API server
// protects itself with its own flow control.
const (
	clientQPS   = 100
	clientBurst = 200
)

// The liveness probe's defaults: a request every period, and silence for
// bound is death.
const (
	DefaultProbePeriod = 5 * time.Second
	DefaultProbeBound  = 15 * time.Second
)

// Options are how a registry's connections are made.
type Options struct {
	// UserAgent names kpf to the API server (and so in its audit log).
	UserAgent string
	// Timeout, if set, bounds every API request (completion's).
	Timeout time.Duration
	// ProbePeriod and ProbeBound time the liveness probe; zero takes the
	// defaults.
	ProbePeriod, ProbeBound time.Duration
	Log                     *slog.Logger
}

// ConfigError is a kubeconfig (or connection flags) that could not be
// turned into a connection.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// ErrClosed is returned by a connection's Dial after its last user
// released it.
var ErrClosed = errors.New("cluster connection closed")

// Registry shares connections by identity: everything that connects with
// an equal identity (context included) through one registry gets the same
// connection while any of them holds it.
type Registry struct {
	o Options

	mu    sync.Mutex
	conns map[string]*conn
}

// NewRegistry returns an empty registry.
func NewRegistry(o Options) *Registry {
	if o.ProbePeriod <= 0 {
		o.ProbePeriod = DefaultProbePeriod
	}
	if o.ProbeBound <= 0 {
		o.ProbeBound = DefaultProbeBound
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Registry{o: o, conns: map[string]*conn{}}
}

// Connect makes a connection of its own, shared with nothing; Release
// closes it.
func Connect(id identity.Identity, o Options) (*Conn, error) {
	return NewRegistry(o).Acquire(id)
}

// Acquire returns the connection of id (its context included), making it
// if no one holds one; the caller releases it when done.
func (r *Registry) Acquire(id identity.Identity) (*Conn, error) {
	k, err := key(id)
	if err != nil {
		return nil, err
	}
	if c := r.hold(k); c != nil {
		return c, nil
	}
	// Made outside the lock (it reads the kubeconfig files); a connection
	// starts nothing until it is used, so one that lost the race is
	// simply dropped.
	made, err := r.load(id)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.conns[k]; ok {
		c.refs++
		return &Conn{c: c}, nil
	}
	made.key, made.refs = k, 1
	r.conns[k] = made
	return &Conn{c: made}, nil
}

func (r *Registry) hold(k string) *Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.conns[k]; ok {
		c.refs++
		return &Conn{c: c}
	}
	return nil
}

// Len is how many connections are open.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// key is id's place in a registry: a hash of its canonical JSON (maps
// marshal with sorted keys), so that the registry keeps no second copy of
// a token the identity may hold.
func key(id identity.Identity) (string, error) {
	b, err := json.Marshal(id)
	if err != nil {
		return "", fmt.Errorf("identity: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// load builds a connection as kubectl's flags would: no request is sent.
func (r *Registry) load(id identity.Identity) (*conn, error) {
	flags, err := id.Getter()
	if err != nil {
		return nil, err
	}
	ns, _, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, &ConfigError{err}
	}
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, &ConfigError{err}
	}
	if r.o.UserAgent != "" {
		cfg.UserAgent = r.o.UserAgent
	}
	if r.o.Timeout > 0 {
		cfg.Timeout = r.o.Timeout
	}
	if cfg.QPS == 0 && cfg.RateLimiter == nil {
		cfg.QPS, cfg.Burst = clientQPS, clientBurst
	}
	c, err := r.build(cfg, nil)
	if err != nil {
		return nil, err
	}
	c.id, c.flags, c.namespace = id, flags, ns
	return c, nil
}

// build makes a connection's clients, probe and TLS configuration of cfg;
// client, if set, stands for the typed clients (a fake clientset).
func (r *Registry) build(cfg *rest.Config, client kube.Interface) (*conn, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, &ConfigError{err}
	}
	if client == nil {
		if client, err = kube.NewForConfigAndClient(cfg, hc); err != nil {
			return nil, &ConfigError{err}
		}
	}
	tlsCfg, err := tunnelTLS(cfg)
	if err != nil {
		return nil, &ConfigError{err}
	}
	probe, err := newProbe(cfg, hc, r.o.ProbePeriod, r.o.ProbeBound, r.o.Log)
	if err != nil {
		return nil, &ConfigError{err}
	}
	return &conn{reg: r, cfg: cfg, hc: hc, client: client, watches: follow.NewWatches(client), services: discover.NewWatches(client), probe: probe, tls: tlsCfg}, nil
}

// New makes a connection of a REST configuration and the clients to use
// with it, in a registry of its own: for unit tests, whose fake API server
// (internal/fakeapi) serves tunnels and whose fake clientset the rest.
func New(cfg *rest.Config, client kube.Interface, o Options) (*Conn, error) {
	r := NewRegistry(o)
	c, err := r.build(cfg, client)
	if err != nil {
		return nil, err
	}
	c.key, c.refs = "new", 1
	r.conns[c.key] = c
	return &Conn{c: c}, nil
}

// tunnelTLS is the TLS configuration of cfg's tunnels on kpf's data path,
// with a session cache: every tunnel after the first resumes the TLS
// session instead of a full handshake, and the kubeconfig's keys are
// parsed once, not on every dial.
func tunnelTLS(cfg *rest.Config) (*tls.Config, error) {
	c, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	if c == nil {
		c = &tls.Config{} // the system's roots
	} else {
		c = c.Clone()
	}
	if c.ClientSessionCache == nil {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	return c, nil
}

// conn is the state that a connection's users share.
type conn struct {
	reg  *Registry
	key  string
	refs int // guarded by reg.mu

	id        identity.Identity
	flags     *genericclioptions.ConfigFlags // nil for New's
	cfg       *rest.Config
	hc        *http.Client
	client    kube.Interface
	namespace string
	watches   *follow.Watches
	services  *discover.Watches
	probe     *probe

	mu     sync.Mutex
	tls    *tls.Config // nil once closed
	closed bool

	whoOnce sync.Once
	who     string

	getterOnce sync.Once
	getter     *getter
}

// Conn is one user's hold on a connection to an API server as an
// identity. Its methods are safe for concurrent use.
type Conn struct {
	c        *conn
	released atomic.Bool
}

// Acquire is another hold on the same connection, released on its own.
func (c *Conn) Acquire() *Conn {
	c.c.reg.mu.Lock()
	defer c.c.reg.mu.Unlock()
	c.c.refs++
	return &Conn{c: c.c}
}

// Release gives the hold back (once; again does nothing); the last one
// closes the connection: its watches and liveness probe stop, and its TLS
// configuration and sessions are dropped.
func (c *Conn) Release() {
	if c.released.Swap(true) {
		return
	}
	r := c.c.reg
	r.mu.Lock()
	c.c.refs--
	last := c.c.refs == 0
	if last && r.conns[c.c.key] == c.c {
		delete(r.conns, c.c.key)
	}
	r.mu.Unlock()
	if last {
		c.c.close()
	}
}

func (c *conn) close() {
	c.mu.Lock()
	c.closed, c.tls = true, nil
	c.mu.Unlock()
	c.probe.stop()
	c.watches.Stop()
	c.services.Stop()
	utilnet.CloseIdleConnectionsFor(c.hc.Transport)
}

// Getter is the connection as kubectl's RESTClientGetter, for the
// resource builder (how TYPE/NAME is found, as kubectl finds it): its REST
// clients, discovery and REST mapper go over the connection's HTTP client.
// Flags' would make a transport, and a TLS connection to the API server,
// per call whenever the identity sets a proxy function (it does, for the
// command's HTTPS_PROXY), which client-go cannot cache: every forward's
// open, and every retry of one that waits, left a connection open for
// the 90 s of its idle timeout (a daemon held 217 of them after 45
// applies of one file of five forwards).
func (c *Conn) Getter() genericclioptions.RESTClientGetter {
	c.c.getterOnce.Do(func() { c.c.getter = newGetter(c.c) })
	return c.c.getter
}

// getter is a connection's RESTClientGetter.
type getter struct {
	cfg    *rest.Config // over the connection's transport
	loader clientcmd.ClientConfig
	disc   discovery.CachedDiscoveryInterface
	mapper meta.RESTMapper
	err    error
}

func newGetter(c *conn) *getter {
	// The transport holds the TLS configuration and the credentials (a
	// rest.Config with a Transport must hold neither): what is left is
	// where to send requests and how fast.
	cfg := &rest.Config{
		Host: c.cfg.Host, APIPath: c.cfg.APIPath, ContentConfig: c.cfg.ContentConfig,
		QPS: c.cfg.QPS, Burst: c.cfg.Burst, RateLimiter: c.cfg.RateLimiter, Timeout: c.cfg.Timeout,
		WarningHandler: c.cfg.WarningHandler, Transport: c.hc.Transport,
	}
	g := &getter{cfg: cfg}
	if c.flags != nil {
		g.loader = c.flags.ToRawKubeConfigLoader()
	} else {
		g.loader = clientcmd.NewDefaultClientConfig(*clientcmdapi.NewConfig(), nil)
	}
	dc, err := discovery.NewDiscoveryClientForConfigAndClient(rest.CopyConfig(cfg), c.hc)
	if err != nil {
		g.err = &ConfigError{err}
		return g
	}
	g.disc = memory.NewMemCacheClient(dc)
	g.mapper = restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(g.disc), g.disc, nil)
	return g
}

func (g *getter) ToRESTConfig() (*rest.Config, error) { return rest.CopyConfig(g.cfg), g.err }
func (g *getter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return g.disc, g.err
}
func (g *getter) ToRESTMapper() (meta.RESTMapper, error)        { return g.mapper, g.err }
func (g *getter) ToRawKubeConfigLoader() clientcmd.ClientConfig { return g.loader }

// Identity is who the connection connects as.
func (c *Conn) Identity() identity.Identity { return c.c.id }

// Flags are the identity as kubectl's flags (for the resource builder);
// nil for a connection made with New.
func (c *Conn) Flags() *genericclioptions.ConfigFlags { return c.c.flags }

// Config is the REST configuration; not to be changed.
func (c *Conn) Config() *rest.Config { return c.c.cfg }

// Client is the typed clients.
func (c *Conn) Client() kube.Interface { return c.c.client }

// Namespace is the namespace of the context (or of -n), "default" if it
// names none; "" for a connection made with New.
func (c *Conn) Namespace() string { return c.c.namespace }

// Watches are the shared pod watches, one per namespace.
func (c *Conn) Watches() *follow.Watches { return c.c.watches }

// Services are the connection's shared service watches, per namespace
// (discover entries').
func (c *Conn) Services() *discover.Watches { return c.c.services }

// Liveness is the API server's liveness probe, which followers subscribe
// to.
func (c *Conn) Liveness() follow.Liveness { return c.c.probe }

// Dial opens a tunnel to a pod, with the connection's TLS sessions.
func (c *Conn) Dial(ctx context.Context, namespace, pod string, t tunnel.Transport, path tunnel.DataPath, opts ...tunnel.DialOption) (*tunnel.Conn, error) {
	c.c.mu.Lock()
	tlsCfg, closed := c.c.tls, c.c.closed
	c.c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return tunnel.Dial(ctx, tunnel.APIServer{Config: c.c.cfg, TLS: tlsCfg}, namespace, pod, t, path, opts...)
}

// WhoAmI is the user name the API server takes the connection's
// credentials for, asked once (SelfSubjectReview, within 5 s); "" when it
// could not say.
func (c *Conn) WhoAmI(ctx context.Context) string {
	c.c.whoOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if u, err := kube.WhoAmI(ctx, c.c.client); err == nil {
			c.c.who = u.Username
		}
	})
	return c.c.who
}
