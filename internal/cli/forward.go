package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/portspec"
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

	// Set by Complete.
	namespace string
	typeName  string
	ports     []portspec.Port
	addrs     []portspec.Address
	transport tunnel.Transport
	config    *rest.Config
	resolver  *target.Resolver
	log       *slog.Logger
}

func newForwardOptions(g *globals) *ForwardOptions {
	return &ForwardOptions{g: g, Addresses: []string{"localhost"}, PodRunningTimeout: time.Minute, Transport: string(tunnel.Auto)}
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
	if o.namespace, _, err = o.g.kube.ToRawKubeConfigLoader().Namespace(); err != nil {
		return explainConfig(err)
	}
	if o.config, err = o.g.kube.ToRESTConfig(); err != nil {
		return explainConfig(err)
	}
	// The audit log names kpf and its version.
	o.config.UserAgent = fmt.Sprintf("kpf/%s (%s/%s)", version(), runtime.GOOS, runtime.GOARCH)
	cs, err := kubernetes.NewForConfig(o.config)
	if err != nil {
		return err
	}
	o.resolver = &target.Resolver{
		Objects:           target.BuilderGetter{Flags: o.g.kube},
		Pods:              cs.CoreV1(),
		PodRunningTimeout: o.PodRunningTimeout,
	}
	return nil
}

// Validate checks what Complete could not.
func (o *ForwardOptions) Validate() error {
	if o.PodRunningTimeout <= 0 {
		return usagef("--pod-running-timeout must be higher than zero")
	}
	return nil
}

// Run resolves the target, opens the tunnel, listens and forwards until
// interrupted or the tunnel is lost.
func (o *ForwardOptions) Run(ctx context.Context) error {
	t, err := o.resolver.Resolve(ctx, o.namespace, o.typeName, o.ports)
	if err != nil {
		return explain(ctx, err, o)
	}
	o.log.Debug("target resolved", "target", t.Ref, "pod", t.Pod.Name, "namespace", t.Namespace)
	// The first tunnel settles the transport (auto may fall back to
	// SPDY); the pool dials the rest the same way.
	transport := o.transport
	dial := func(ctx context.Context) (*tunnel.Conn, error) {
		c, err := tunnel.Dial(ctx, o.config, t.Namespace, t.Pod.Name, transport)
		if err == nil && transport == tunnel.Auto {
			transport = c.Transport
			o.log.Debug("tunnel open", "pod", c.Pod, "transport", c.Transport)
		}
		return c, err
	}
	pool, err := tunnel.NewPool(ctx, dial)
	if err != nil {
		return explainDial(err, o, t)
	}
	defer pool.Close()
	listeners, err := forward.Listen(o.addrs, t.Ports, o.g.out, o.g.errOut)
	if err != nil {
		return err
	}
	err = forward.Serve(ctx, listeners, pool, o.g.out, o.log)
	if errors.Is(err, forward.ErrLostConnection) {
		return fmt.Errorf("lost connection to pod %s/%s", t.Namespace, t.Pod.Name)
	}
	return err
}
