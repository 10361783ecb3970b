package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/kpf-dev/kpf/internal/cluster"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/httplog"
	"github.com/kpf-dev/kpf/internal/metrics"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/spf13/cobra"
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
  kpf forward --address 0.0.0.0 pod/mypod 8888:5000

  # Reach a database in the cluster's network, dialled from inside the cluster
  kpf forward host/orders.abc.eu-west-1.rds.amazonaws.com 5432

  # Listen on 8080 locally, forwarding to 10.1.2.3:80 as the cluster reaches it
  kpf forward ip/10.1.2.3 8080:80`

// ForwardOptions is kpf forward: kubectl port-forward's syntax and flags.
type ForwardOptions struct {
	g *globals

	Addresses []string
	Settings  spec.Settings
	Balance   bool
	Timeout   time.Duration
	AuditLog  string
	Metrics   string
	HTTPLog   string
	Bodies    int

	// Set by Complete.
	doctor  string // the kpf doctor command for this forward
	forward config.Forward
	cluster *cluster.Conn // released by Run
	log     *slog.Logger
}

func newForwardOptions(g *globals) *ForwardOptions {
	return &ForwardOptions{g: g, Addresses: []string{"localhost"}, Settings: spec.Defaults()}
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
connection only; the forward carries on.

host/NAME and ip/ADDR reach what the cluster reaches (a managed database in
its network, a name only its DNS resolves): kpf makes a relay pod that dials
NAME or ADDR at the given ports from inside the cluster, and nothing else,
and deletes it when the forward stops (it needs create and delete on pods:
kpf rbac). Here ip means an address, in kpf forward, kpf.yaml, kpf rbac and
kpf doctor alike: the IPAddress resource (networking.k8s.io), whose short name
ip also is, cannot be port-forwarded; ipaddress/NAME and
ipaddresses.networking.k8s.io/NAME keep kubectl's meaning.`,
		Example:               forwardExample,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
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
	o.Settings.AddFlags(f)
	f.BoolVar(&o.Balance, "balance", false, "Spread new connections over every ready pod of a service or workload, as the Service would")
	f.DurationVar(&o.Timeout, "timeout", 0, "Stop after this long (exit code 5); 0: never")
	f.StringVar(&o.AuditLog, "audit-log", "", auditLogUsage)
	f.StringVar(&o.Metrics, "metrics-addr", "", metricsAddrUsage)
	f.StringVar(&o.HTTPLog, "http-log", "", "log each HTTP/1.x request as a JSON line to this file (- for stderr): method, path, status, sizes, duration, pod; never header values")
	f.IntVar(&o.Bodies, "http-log-bodies", 0, "with --http-log: also log the first N bytes of text bodies")
}

// Complete reads the arguments and the kubeconfig.
func (o *ForwardOptions) Complete(cmd *cobra.Command, args []string) error {
	if len(args) < 2 {
		return usagef("TYPE/NAME and list of ports are required for port-forward")
	}
	o.log = o.g.logger()
	ports, err := portspec.ParsePorts(args[1:])
	if err != nil {
		return usageError{err}
	}
	if d, ok, err := target.ParseDestination(args[0]); err != nil {
		return usageError{err}
	} else if ok {
		if _, err := target.DestinationPorts(d, ports); err != nil {
			return usageError{err}
		}
	}
	if _, err = portspec.ParseAddresses(o.Addresses); err != nil {
		return usageError{err}
	}
	if err := o.Settings.Validate(); err != nil {
		return usageError{err}
	}
	id, err := o.g.identity(cmd)
	if err != nil {
		return err
	}
	if o.cluster, err = connect(id, o.log); err != nil {
		return err
	}
	o.doctor = doctorCommand(cmd, args)
	o.forward = config.Forward{Namespace: o.cluster.Namespace(), Target: args[0], Ports: ports, Addresses: o.Addresses, Balance: o.Balance}
	return nil
}

// Validate checks what Complete could not.
func (o *ForwardOptions) Validate() error {
	if o.Timeout < 0 {
		return usagef("--timeout and --idle-timeout must be 0 (never) or more")
	}
	if o.Settings.NoReconnect && o.Balance {
		return usagef("--balance and --no-reconnect do not go together: balancing follows every ready pod")
	}
	return nil
}

// Run resolves the target, opens the tunnel, listens and forwards until
// interrupted, the target is lost for good, or a timeout runs out.
func (o *ForwardOptions) Run(ctx context.Context) error {
	defer o.cluster.Release()
	if err := o.g.startDebug(ctx); err != nil {
		return err
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.Timeout, errTimeout)
		defer cancel()
	}
	sp, err := spec.Session(o.forward, o.Settings)
	if err != nil {
		return usageError{err}
	}
	deps := sessionDeps(o.cluster, o.g.out, o.g.errOut, o.log)
	if o.AuditLog != "" {
		if deps.Audit, err = openAudit(o.AuditLog); err != nil {
			return err
		}
		defer deps.Audit.Close()
		deps.Who = auditWho(ctx, o.cluster)
	}
	if o.HTTPLog != "" {
		if deps.HTTPLog, err = httplog.Open(o.HTTPLog, o.forward.Target, o.Bodies); err != nil {
			return usageError{err}
		}
	} else if o.Bodies != 0 {
		return usagef("--http-log-bodies %d without --http-log: say where to log with --http-log FILE", o.Bodies)
	}
	var sess atomic.Pointer[session.Session]
	if _, err := serveMetrics(ctx, o.Metrics, func() []metrics.Forward {
		f := metrics.Forward{Name: o.forward.Target, Namespace: sp.Namespace, Target: o.forward.Target}
		if s := sess.Load(); s != nil {
			m := s.Metrics()
			f.Session, f.Ready, f.Pod, f.Target, f.Namespace = &m, true, m.Pod, s.Target.Ref, s.Target.Namespace
		}
		return []metrics.Forward{f}
	}, o.g.errOut); err != nil {
		return err
	}
	s, err := session.Open(ctx, sp, deps)
	if err == nil {
		sess.Store(s)
	}
	if err != nil {
		return withDoctor(ctx, explainOpen(ctx, err, sp.Namespace, o.cluster.Getter(), o.cluster.Config()), o.doctor)
	}
	err = s.Serve(ctx)
	if err == nil && errors.Is(context.Cause(ctx), errTimeout) {
		return fmt.Errorf("%w: stopped after %s", errTimeout, o.Timeout)
	}
	return err
}

// errTimeout: --timeout ran out.
var errTimeout = errors.New("timeout")

// userAgent names kpf and its version to the API server, and so in the
// audit log.
func userAgent() string {
	return fmt.Sprintf("kpf/%s (%s/%s)", version(), runtime.GOOS, runtime.GOARCH)
}
