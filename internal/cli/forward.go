package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const forwardExample = `  # Listen on ports 5000 and 6000 locally, forwarding to 5000 and 6000 in a pod of the deployment
  kpf forward deployment/mydeployment 5000 6000

  # Listen on port 8443 locally, forwarding to the targetPort of the service's port named "https" in a pod
  kpf forward service/myservice 8443:https

  # Listen on port 8888 locally, forwarding to 5000 in the pod
  kpf forward pod/mypod 8888:5000

  # Listen on a random port locally (printed), forwarding to 5000 in the pod
  kpf forward pod/mypod :5000

  # Listen on port 8888 on all addresses (reachable from the network: kpf warns)
  kpf forward --address 0.0.0.0 pod/mypod 8888:5000`

// ForwardOptions is kpf forward: kubectl port-forward's syntax and flags.
type ForwardOptions struct {
	g *globals

	Addresses         []string
	PodRunningTimeout time.Duration
	Transport         string
	ReconnectWait     time.Duration
	MaxRetries        int
	NoReconnect       bool
	Balance           bool
	Timeout           time.Duration
	IdleTimeout       time.Duration
	DataPath          string

	// Set by Complete.
	namespace string
	typeName  string
	ports     []portspec.Port
	addrs     []portspec.Address
	transport tunnel.Transport
	dataPath  tunnel.DataPath
	config    *rest.Config
	client    kubernetes.Interface
	log       *slog.Logger
}

func newForwardOptions(g *globals) *ForwardOptions {
	return &ForwardOptions{g: g, Addresses: []string{"localhost"}, PodRunningTimeout: time.Minute, Transport: string(tunnel.Auto), ReconnectWait: 30 * time.Second, DataPath: string(tunnel.DefaultDataPath)}
}

func newForwardCommand(g *globals) *cobra.Command {
	o := newForwardOptions(g)
	cmd := &cobra.Command{
		Use:     "forward TYPE/NAME [options] [LOCAL_PORT:]REMOTE_PORT [...[LOCAL_PORT_N:]REMOTE_PORT_N]",
		Aliases: []string{"port-forward"},
		Short:   "Forward local ports to a pod (kubectl port-forward's syntax)",
		Long: `Forward one or more local ports to a pod.

Use resource type/name such as deployment/mydeployment to select a pod. TYPE
defaults to pod if omitted. For a service or workload, kpf picks the pod that
kubectl would pick. Unlike kubectl, an error on one connection closes that
connection only; the forward carries on.`,
		Example:               forwardExample,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// AddFlags registers the command's flags.
func (o *ForwardOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&o.Addresses, "address", o.Addresses, "Addresses to listen on (comma separated). Only accepts IP addresses or localhost as a value. When localhost is supplied, kpf will try to bind on both 127.0.0.1 and ::1 and will fail if neither of these addresses are available to bind.")
	f.DurationVar(&o.PodRunningTimeout, "pod-running-timeout", o.PodRunningTimeout, "The length of time (like 5s, 2m, or 3h, higher than zero) to wait until at least one pod is running")
	f.StringVar(&o.Transport, "transport", o.Transport, "How to reach the API server: auto (WebSocket, then SPDY if the upgrade is refused), websocket or spdy")
	f.DurationVar(&o.ReconnectWait, "reconnect-wait", o.ReconnectWait, "How long a new connection waits for a ready pod while the target has none (a rollout, a restart) before it is closed")
	f.IntVar(&o.MaxRetries, "max-retries", 0, "Give up after this many failed reconnects in a row (0: never)")
	f.BoolVar(&o.NoReconnect, "no-reconnect", false, "Exit like kubectl (code 3) when the pod goes away, instead of following the target to another pod")
	f.BoolVar(&o.Balance, "balance", false, "Spread new connections over every ready pod of a service or workload, as the Service would")
	f.DurationVar(&o.Timeout, "timeout", 0, "Stop after this long (exit code 5); 0: never")
	f.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "Stop after this long with no open connection (exit code 6); 0: never")
	f.StringVar(&o.DataPath, "data-path", o.DataPath, "SPDY implementation on kpf's side: kpf (its own) or client-go (kubectl's), as an escape hatch")
}

// Complete reads the arguments and the kubeconfig.
func (o *ForwardOptions) Complete(args []string) error {
	if len(args) < 2 {
		return usagef("TYPE/NAME and list of ports are required for port-forward")
	}
	o.log = o.g.logger()
	o.typeName = args[0]
	var err error
	if o.ports, err = portspec.ParsePorts(args[1:]); err != nil {
		return usageError{err}
	}
	if o.addrs, err = portspec.ParseAddresses(o.Addresses); err != nil {
		return usageError{err}
	}
	if o.transport, err = tunnel.ParseTransport(o.Transport); err != nil {
		return usageError{err}
	}
	if o.dataPath, err = tunnel.ParseDataPath(o.DataPath); err != nil {
		return usageError{err}
	}
	if o.namespace, _, err = o.g.kube.ToRawKubeConfigLoader().Namespace(); err != nil {
		return explainConfig(err)
	}
	if o.config, err = o.g.kube.ToRESTConfig(); err != nil {
		return explainConfig(err)
	}
	o.config.UserAgent = userAgent()
	cs, err := kubernetes.NewForConfig(o.config)
	if err != nil {
		return err
	}
	o.client = cs
	return nil
}

// Validate checks what Complete could not.
func (o *ForwardOptions) Validate() error {
	if o.PodRunningTimeout <= 0 {
		return usagef("--pod-running-timeout must be higher than zero")
	}
	if o.ReconnectWait <= 0 {
		return usagef("--reconnect-wait %s: must be higher than zero", o.ReconnectWait)
	}
	if o.MaxRetries < 0 {
		return usagef("--max-retries %d: must be 0 (no limit) or more", o.MaxRetries)
	}
	if o.Timeout < 0 || o.IdleTimeout < 0 {
		return usagef("--timeout and --idle-timeout must be 0 (never) or more")
	}
	if o.NoReconnect && o.Balance {
		return usagef("--balance and --no-reconnect do not go together: balancing follows every ready pod")
	}
	return nil
}

// Run resolves the target, opens the tunnel, listens and forwards until
// interrupted, the target is lost for good, or a timeout runs out.
func (o *ForwardOptions) Run(ctx context.Context) error {
	if err := o.g.startDebug(ctx); err != nil {
		return err
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.Timeout, errTimeout)
		defer cancel()
	}
	s, err := session.Open(ctx, session.Spec{
		Namespace:         o.namespace,
		Target:            o.typeName,
		Ports:             o.ports,
		Addresses:         o.addrs,
		Transport:         o.transport,
		PodRunningTimeout: o.PodRunningTimeout,
		ReconnectWait:     o.ReconnectWait,
		MaxRetries:        o.MaxRetries,
		NoReconnect:       o.NoReconnect,
		Balance:           o.Balance,
		IdleTimeout:       o.IdleTimeout,
		DataPath:          o.dataPath,
	}, o.deps())
	if err != nil {
		return explainOpen(ctx, err, o.namespace, o.g.kube, o.config)
	}
	err = s.Serve(ctx)
	if err == nil && errors.Is(context.Cause(ctx), errTimeout) {
		return fmt.Errorf("%w: stopped after %s", errTimeout, o.Timeout)
	}
	return err
}

func (o *ForwardOptions) deps() session.Deps {
	return session.Deps{
		Config:  o.config,
		Client:  o.client,
		Objects: target.BuilderGetter{Flags: o.g.kube},
		Out:     o.g.out,
		ErrOut:  o.g.errOut,
		Log:     o.log,
	}
}

// errTimeout: --timeout ran out.
var errTimeout = errors.New("timeout")

// userAgent names kpf and its version to the API server, and so in the
// audit log.
func userAgent() string {
	return fmt.Sprintf("kpf/%s (%s/%s)", version(), runtime.GOOS, runtime.GOARCH)
}
