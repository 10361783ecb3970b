package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/kpf-dev/kpf/internal/cluster"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/proxy"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/cobra"
)

// ProxyOptions is kpf proxy: cluster names through SOCKS5 and HTTP.
type ProxyOptions struct {
	g             *globals
	Listen        string
	Auth          string
	ClusterDomain string
	Direct        bool
	Env           bool
	AuditLog      string
	Settings      spec.Settings

	command []string
	auth    *proxy.Auth
}

// defaultProxyListen is kpf proxy's address: loopback, the SOCKS port.
const defaultProxyListen = "127.0.0.1:1080"

// proxyAuthEnv holds --auth's value when the flag is not given, so that the
// password need not show in the process list.
const proxyAuthEnv = "KPF_PROXY_AUTH"

func newProxyCommand(g *globals) *cobra.Command {
	o := &ProxyOptions{g: g, Listen: defaultProxyListen, ClusterDomain: "cluster.local", Settings: spec.Defaults()}
	cmd := &cobra.Command{
		Use:   "proxy [--listen ADDR] [-- COMMAND [ARGS...]]",
		Short: "Reach cluster services by their names through a local SOCKS5 and HTTP proxy",
		Long: `Serve SOCKS5 (with remote name resolution), HTTP CONNECT and plain HTTP
proxying on one local port, and carry each connection to the pod its cluster
name stands for, as the cluster's DNS and the Service would route it:
SERVICE (in the current namespace), SERVICE.NAMESPACE, SERVICE.NAMESPACE.svc,
SERVICE.NAMESPACE.svc.cluster.local, POD.SERVICE.NAMESPACE.svc... for a
headless service's pods, and ClusterIPs and pod IPs. A service port reaches
its targetPort on a ready pod; new connections spread over the ready pods.
Nothing is installed in the cluster and nothing needs root.

Names outside the cluster are refused, or dialled from here with --direct.
With -- COMMAND, kpf runs COMMAND with the proxy variables set and stops when
it ends, exiting with its code. --env prints the variables for a shell.

The proxy listens on loopback. Anyone who reaches it reaches the cluster as
you: a non-loopback --listen requires --auth USER:PASSWORD (or the
` + proxyAuthEnv + ` variable, which keeps the password out of the process list).`,
		Example: `  kpf proxy
  curl --socks5-hostname 127.0.0.1:1080 http://api.shop:8080/
  curl -x http://127.0.0.1:1080 http://api.shop.svc.cluster.local:8080/

  # A command with HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY set
  kpf proxy -- python3 client.py

  # The variables, for a proxy running elsewhere (kpf up's proxies:)
  eval "$(kpf proxy --env)"`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				o.command = args[dash:]
				args = args[:dash]
			}
			if len(args) > 0 {
				return usagef("kpf proxy takes no arguments (got %q); a command to run goes after --", strings.Join(args, " "))
			}
			if err := o.Validate(); err != nil {
				return err
			}
			if o.Env {
				return o.printEnv()
			}
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			return o.Run(cmd.Context(), id)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", o.Listen, "address to serve on (SOCKS5 and HTTP on one port); a non-loopback address requires --auth")
	f.StringVar(&o.Auth, "auth", "", "require USER:PASSWORD of clients (SOCKS5 user/password, HTTP Proxy-Authorization); default from $"+proxyAuthEnv)
	f.StringVar(&o.ClusterDomain, "cluster-domain", o.ClusterDomain, "the cluster's DNS domain, for names like api.shop.svc.DOMAIN")
	f.BoolVar(&o.Direct, "direct", false, "dial names outside the cluster directly from here, instead of refusing them")
	f.BoolVar(&o.Env, "env", false, "print the shell lines that point programs at the proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) and exit")
	f.StringVar(&o.AuditLog, "audit-log", "", auditLogUsage)
	o.Settings.AddFlags(f, spec.FlagTransport, spec.FlagReconnectWait, spec.FlagDataPath, spec.FlagPingInterval)
	return cmd
}

// Validate checks the flags together.
func (o *ProxyOptions) Validate() error {
	if err := o.Settings.Validate(); err != nil {
		return usageError{err}
	}
	if o.Auth == "" {
		o.Auth = os.Getenv(proxyAuthEnv)
	}
	if o.Auth != "" {
		user, pass, ok := strings.Cut(o.Auth, ":")
		if !ok || user == "" || pass == "" {
			return usagef("--auth: want USER:PASSWORD, both not empty")
		}
		o.auth = &proxy.Auth{User: user, Password: pass}
	}
	if o.ClusterDomain == "" || strings.HasPrefix(o.ClusterDomain, ".") {
		return usagef("--cluster-domain %q: want a domain like cluster.local", o.ClusterDomain)
	}
	ap, err := parseListen(o.Listen)
	if err != nil {
		return usageError{err}
	}
	if !ap.Addr().IsLoopback() && o.auth == nil {
		return usagef("--listen %s is reachable from other machines, and anyone who reaches the proxy reaches the cluster as you: give --auth USER:PASSWORD (or set %s), or listen on 127.0.0.1", o.Listen, proxyAuthEnv)
	}
	if o.Env && len(o.command) > 0 {
		return usagef("--env prints the variables; with -- COMMAND kpf sets them itself: give one or the other")
	}
	if o.Env && ap.Port() == 0 {
		return usagef("--env needs the proxy's port: give --listen HOST:PORT as the proxy was started with")
	}
	return nil
}

// parseListen reads --listen: IP:PORT (localhost:PORT is 127.0.0.1).
func parseListen(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--listen %q: want IP:PORT, like 127.0.0.1:1080", s)
	}
	if host == "localhost" || host == "" {
		if host == "" {
			return netip.AddrPort{}, fmt.Errorf("--listen %q: give the address too (127.0.0.1%s, or 0.0.0.0%[2]s with --auth)", s, ":"+port)
		}
		host = "127.0.0.1"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--listen %q: want IP:PORT, like 127.0.0.1:1080", s)
	}
	return ap, nil
}

// proxyEnv is the environment that points programs at a proxy on addr:
// both spellings, since curl reads only http_proxy and others only the
// upper case.
func proxyEnv(addr string, auth *proxy.Auth) []string {
	cred := ""
	if auth != nil {
		cred = url.UserPassword(auth.User, auth.Password).String() + "@"
	}
	httpURL := "http://" + cred + addr
	socksURL := "socks5h://" + cred + addr
	noProxy := "localhost,127.0.0.1,::1"
	var out []string
	for _, kv := range [][2]string{{"HTTP_PROXY", httpURL}, {"HTTPS_PROXY", httpURL}, {"ALL_PROXY", socksURL}, {"NO_PROXY", noProxy}} {
		out = append(out, kv[0]+"="+kv[1], strings.ToLower(kv[0])+"="+kv[1])
	}
	return out
}

func (o *ProxyOptions) printEnv() error {
	ap, _ := parseListen(o.Listen)
	for _, kv := range proxyEnv(ap.String(), o.auth) {
		k, v, _ := strings.Cut(kv, "=")
		if runtime.GOOS == "windows" {
			fmt.Fprintf(o.g.out, "$env:%s = %s\n", k, shellQuote(v))
		} else {
			fmt.Fprintf(o.g.out, "export %s=%s\n", k, shellQuote(v))
		}
	}
	return nil
}

// Run serves until interrupted, or runs the command and stops with it.
func (o *ProxyOptions) Run(ctx context.Context, id identity.Identity) error {
	if err := o.g.startDebug(ctx); err != nil {
		return err
	}
	log := o.g.logger()
	conn, err := connect(id, log)
	if err != nil {
		return err
	}
	defer conn.Release()
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.Listen, err)
	}
	addr := ln.Addr().String()
	if ap, _ := parseListen(o.Listen); !ap.Addr().IsLoopback() {
		fmt.Fprintf(o.g.errOut, "kpf: warning: the proxy on %s is reachable from other machines; only clients with the password get in\n", addr)
	}
	auditLog, err := openAudit(o.AuditLog)
	if err != nil {
		return err
	}
	defer auditLog.Close()
	var ended func(proxy.Ended)
	if auditLog != nil {
		ended = proxyAudit(auditLog, auditWho(ctx, conn), "proxy")
	}
	p := newProxy(conn, o.Settings, proxy.Options{
		Ended:         ended,
		ClusterDomain: o.ClusterDomain,
		Direct:        o.Direct,
		Auth:          o.auth,
		Log:           log,
		Routed: func(dest string, r proxy.Route) {
			fmt.Fprintf(o.g.out, "Routing %s -> %s port %d in namespace %s\n", dest, r.Ref, r.Port, r.Namespace)
		},
	})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	ctxName, _, _ := describeIdentity(id, "")
	fmt.Fprintf(o.g.out, "Proxying from %s (SOCKS5, HTTP CONNECT, HTTP) to context %s, namespace %s\n", addr, ctxName, conn.Namespace())
	if len(o.command) == 0 {
		<-ctx.Done()
		cancel()
		return <-done
	}
	err = runWithEnv(ctx, o.command, proxyEnv(addr, o.auth), o.g.out, o.g.errOut)
	cancel()
	<-done
	return err
}

// newProxy is a proxy on a cluster connection, dialling as its settings say.
func newProxy(c *cluster.Conn, s spec.Settings, o proxy.Options) *proxy.Proxy {
	o.Client = c.Client()
	if o.Namespace == "" {
		o.Namespace = c.Namespace()
	}
	o.Watches = c.Watches()
	o.Liveness = c.Liveness()
	o.ReconnectWait = s.ReconnectWait
	o.Transport = s.Transport
	o.Dial = func(ctx context.Context, namespace, pod string, tr tunnel.Transport) (*tunnel.Conn, error) {
		return c.Dial(ctx, namespace, pod, tr, s.DataPath, tunnel.PingEvery(s.PingInterval), tunnel.WithLog(o.Log))
	}
	return proxy.New(o)
}

// runWithEnv runs command with env added to kpf's environment, and returns
// its exit code as an exitError.
func runWithEnv(ctx context.Context, command, env []string, out, errOut io.Writer) error {
	c := exec.CommandContext(ctx, command[0], command[1:]...)
	c.Env = append(os.Environ(), env...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, out, errOut
	err := c.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return exitError{ee.ExitCode()}
	}
	return fmt.Errorf("run %s: %w", command[0], err)
}
