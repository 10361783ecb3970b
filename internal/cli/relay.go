package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/rbac"

	"github.com/kpf-dev/kpf/internal/relaypod"
	"github.com/kpf-dev/kpf/internal/spec"
	corev1 "k8s.io/api/core/v1"

	"github.com/kpf-dev/kpf/internal/relay"
	"github.com/spf13/cobra"
)

func newRelayCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "The relay kpf runs in the cluster for UDP and host/ and ip/ targets (kpf relay serve)",
		Long: `The port-forward subresource carries streams to a pod's ports only. For UDP,
kpf runs this same binary next to the UDP server as a relay: kpf frames each
local peer's datagrams over one stream through the tunnel, and the relay
sends them from a socket of the flow's own and frames the replies back. For
host/NAME and ip/ADDR targets, the relay pod dials the destination from
inside the cluster: each TCP port is a listener on the relay pod's loopback,
piped to the destination it was made for (docs/relay-protocol.md).`,
	}
	cmd.AddCommand(newRelayServeCommand(g), newRelayImageCommand(g), newRelayGCCommand(g))
	return cmd
}

func newRelayImageCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "image",
		Short: "Print the relay image this kpf uses unless --relay-image says otherwise",
		Example: `  # mirror it into a registry your cluster can pull from
  crane copy $(kpf relay image) registry.example.com/kpf:$(kpf version -o json | jq -r .version)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(g.out, spec.DefaultRelayImage)
			return nil
		},
	}
}

func newRelayGCCommand(g *globals) *cobra.Command {
	var all, allNamespaces bool
	cmd := &cobra.Command{
		Use:   "gc [-n NAMESPACE | -A] [--all]",
		Short: "List your relay pods, and remove those whose kpf is gone or that ended",
		Long: `List the relay pods you started (of /udp ports, and of host/ and ip/
targets; label kpf.dev/user), in the current
namespace or every one (-A), and delete those whose kpf is gone: started on
this machine by a process that no longer runs, or ended (a relay exits by
itself within a minute of losing its kpf). Relay pods of kpf processes on
other machines are listed, not deleted, unless --all. The Service of a kpf
expose is owned by its relay pods: it goes with them.`,
		Example: `  kpf relay gc -A
  kpf relay gc -n dns --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			c, err := connect(id, nil)
			if err != nil {
				return err
			}
			defer c.Release()
			ns := c.Namespace()
			if allNamespaces {
				ns = ""
			}
			left, err := relaypod.Find(cmd.Context(), c.Client(), ns, relaypod.Me(), processAlive)
			if err != nil {
				return err
			}
			if len(left) == 0 {
				fmt.Fprintln(g.out, "no relay pods of yours")
				return nil
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tPOD\tPHASE\tSTARTED BY\tTARGET\tACTION")
			var failed error
			for _, l := range left {
				p := l.Pod
				ended := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
				action := "kept (its kpf may still run)"
				if l.Gone || ended || all {
					action = "deleted"
					if err := relaypod.Delete(cmd.Context(), c.Client(), &p); err != nil {
						action, failed = "not deleted: "+err.Error(), err
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Status.Phase, p.Annotations["kpf.dev/started-by"], p.Annotations["kpf.dev/target"], action)
			}
			tw.Flush()
			return failed
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "look in every namespace")
	cmd.Flags().BoolVar(&all, "all", false, "delete every relay pod of yours, also those of kpf processes that may still run elsewhere")
	return cmd
}

func newRelayServeCommand(g *globals) *cobra.Command {
	s := &relay.Server{}
	listen := "127.0.0.1:4090"
	var allow, tcp []string
	var reverse []uint
	cmd := &cobra.Command{
		Use:   "serve --allow HOST:PORT... --tcp PORT=HOST:PORT... --reverse PORT... [--listen 127.0.0.1:PORT]",
		Short: "Serve relay streams (what runs in the relay pod or ephemeral container)",
		Long: `Serve relay streams on --listen, a loopback address (port-forward reaches
the pod's loopback; nothing else on the pod's network can reach the relay).
The relay sends datagrams only to the --allow destinations, fixed when kpf
makes it: a stream that names another is refused. Each --tcp PORT=HOST:PORT
listens on PORT of the same loopback address and pipes each connection to
HOST:PORT, and nowhere else. Each --reverse PORT (kpf expose) listens on
PORT of every address of the pod (a Service sends its traffic there) and
hands each connection to the kpf holding the exposure, over a stream kpf
opens through port-forward. The relay exits by itself once no
kpf has talked to it for --client-timeout and no stream was open for
--idle-exit, so that a relay whose kpf was killed does not stay.`,
		Example: `  # as a relay pod's command (kpf makes that pod itself)
  kpf relay serve --listen 127.0.0.1:4090 --allow 10.0.3.7:53
  kpf relay serve --listen 127.0.0.1:4090 --tcp 4091=orders.example:5432`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if s.ClientTimeout <= 0 || s.IdleExit == 0 || s.FlowIdle <= 0 {
				return usagef("--client-timeout and --flow-idle must be above 0, --idle-exit above 0 (or below 0: never)")
			}
			if len(allow) == 0 && len(tcp) == 0 && len(reverse) == 0 {
				return usagef("--allow, --tcp or --reverse: give the destinations the relay may send to (--allow HOST:PORT for datagrams, --tcp PORT=HOST:PORT for connections, repeatable); it sends nowhere else")
			}
			for _, a := range allow {
				d, err := relay.ParseAllow(a)
				if err != nil {
					return usagef("%v", err)
				}
				s.Allow = append(s.Allow, d)
			}
			var routes []relay.RouteSpec
			for _, a := range tcp {
				r, err := relay.ParseRoute(a)
				if err != nil {
					return usagef("%v", err)
				}
				routes = append(routes, r)
			}
			ln, err := relay.Listen(listen)
			if err != nil {
				return err
			}
			host, _, _ := net.SplitHostPort(listen)
			for _, r := range routes {
				rl, err := relay.Listen(net.JoinHostPort(host, strconv.Itoa(int(r.Port))))
				if err != nil {
					ln.Close()
					for _, r := range s.Routes {
						r.Listener.Close()
					}
					return fmt.Errorf("--tcp %s: %w", r, err)
				}
				s.Routes = append(s.Routes, relay.Route{Listener: rl, Dest: r.Dest})
			}
			for _, p := range reverse {
				if p == 0 || p > 65535 {
					ln.Close()
					return usagef("--reverse %d: give the port (1 to 65535) the relay listens on for kpf expose", p)
				}
				rl, err := net.Listen("tcp", ":"+strconv.Itoa(int(p)))
				if err != nil {
					ln.Close()
					return fmt.Errorf("--reverse %d: %w", p, err)
				}
				s.Reverses = append(s.Reverses, relay.Reverse{Port: uint16(p), Listener: rl})
			}
			s.Log = g.logger()
			s.Log.Info("relay listening", "addr", ln.Addr().String(), "allow", allow, "tcp", tcp, "reverse", reverse, "version", relay.Version)
			err = s.Serve(cmd.Context(), ln)
			if errors.Is(err, relay.ErrIdleExit) {
				s.Log.Info("no client: exiting", "after", s.IdleExit)
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", listen, "loopback TCP address for kpf's streams")
	f.StringSliceVar(&allow, "allow", nil, "a destination HOST:PORT the relay may send datagrams to (repeatable, or comma-separated); every other is refused")
	f.StringSliceVar(&tcp, "tcp", nil, "PORT=HOST:PORT: listen on PORT of --listen's address and pipe each connection to HOST:PORT (repeatable)")
	f.UintSliceVar(&reverse, "reverse", nil, "PORT: listen on PORT of every address of the pod and hand each connection to kpf expose (repeatable)")
	f.DurationVar(&s.ClientTimeout, "client-timeout", 30*time.Second, "drop a stream that sent nothing (not even a keep-alive) for this long")
	f.DurationVar(&s.IdleExit, "idle-exit", 30*time.Second, "exit once no stream was open for this long (negative: never)")
	f.DurationVar(&s.FlowIdle, "flow-idle", 5*time.Minute, "close a flow with no datagram either way for this long")
	return cmd
}

// cleanupRelays removes the relay pods (of /udp ports, and of host/ and
// ip/ targets) that a daemon which did not stop left for fws, connecting
// as id: in each namespace those forwards use, the relay pods of this user on this host whose kpf
// process is gone (kpf relay gc's rule), so relays of kpf processes that
// run (this daemon's new ones, a kpf forward's) stay.
func cleanupRelays(ctx context.Context, clusters *cluster.Registry, id identity.Identity, fws []config.Forward, log *slog.Logger) error {
	type where struct{ context, namespace string }
	done := map[where]bool{}
	var errs []error
	for _, fw := range fws {
		if !slices.ContainsFunc(fw.Ports, func(p portspec.Port) bool { return p.UDP }) && !rbac.IsDestination(fw.Target) {
			continue // no relay
		}
		c, err := clusters.Acquire(id.WithContext(fw.Context))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := where{fw.Context, fw.Namespace}
		if w.namespace == "" {
			w.namespace = c.Namespace()
		}
		if !done[w] {
			done[w] = true
			errs = append(errs, removeGoneRelays(ctx, c, w.namespace, log))
		}
		c.Release()
	}
	return errors.Join(errs...)
}

func removeGoneRelays(ctx context.Context, c *cluster.Conn, namespace string, log *slog.Logger) error {
	left, err := relaypod.Find(ctx, c.Client(), namespace, relaypod.Me(), processAlive)
	if err != nil {
		return fmt.Errorf("list relay pods in %s: %w", namespace, err)
	}
	var errs []error
	for _, l := range left {
		if !l.Gone {
			continue
		}
		if err := relaypod.Delete(ctx, c.Client(), &l.Pod); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed a relay pod whose kpf is gone", "namespace", namespace, "pod", l.Pod.Name, "startedBy", l.Pod.Annotations["kpf.dev/started-by"])
	}
	return errors.Join(errs...)
}
