package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/kube"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/ui"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

func newUICommand(g *globals) *cobra.Command {
	var printOnce bool
	var width, height int
	settings := spec.Defaults()
	cmd := &cobra.Command{
		Use:   "ui [--context CONTEXT] [-n NAMESPACE]",
		Short: "A full-screen terminal UI: pick targets and ports to forward, watch and manage the daemon's forwards",
		Long: `A full-screen terminal UI over the kpf daemon (started if none runs).

The targets screen lists contexts, namespaces, and the services,
deployments, statefulsets and pods of a namespace with their ports (TCP and
UDP); / filters as you type; n opens a namespace by its name (if you may not
list namespaces, the context's own opens); Enter forwards the selected port
on localhost (a free local port is suggested, editable; tab chooses whether
the forward is kept after kpf ui exits, the default, or stopped with it); a
forwards every port of the target; A on a namespace forwards it whole, as
kpf up --all -d does.

The forwards screen is the daemon's forwards, live: state, health, pod,
local address, connections, rates with a sparkline, reconnects, last error.
s stops one, r restarts it, d runs doctor, l and h show its log and HTTP
log, w writes the set to a kpf.yaml that kpf up -f runs (asking before it
replaces a file). ? lists the keys and the command that does each from the
command line.

--print renders the first screen once to standard output and exits; it
starts no daemon (it says when none runs).
NO_COLOR turns colour off.`,
		Example: `  kpf ui
  kpf ui -n shop
  kpf ui --print --width 80 --height 24`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if width < ui.MinWidth || height < ui.MinHeight {
				return usagef("--width %d --height %d: the UI needs at least %d columns and %d lines", width, height, ui.MinWidth, ui.MinHeight)
			}
			if !printOnce && (!isTerminal(g.out) || !term.IsTerminal(int(os.Stdin.Fd()))) {
				return errNoTerminal
			}
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			home := daemon.DefaultHome()
			c := daemon.NewClient(home)
			// --print starts nothing: it shows what there is.
			if !printOnce {
				if _, err := ensureDaemon(c, home, g.errOut, startDaemon); err != nil {
					return err
				}
			}
			b := make([]byte, 16)
			rand.Read(b)
			session := "ui-" + hex.EncodeToString(b)
			ns := ""
			if f := cmd.Flag("namespace"); f != nil && f.Changed {
				ns = f.Value.String()
			}
			o := ui.Options{
				Daemon:    &startingDaemon{Client: c, home: home, errOut: g.errOut, ctx: cmd.Context(), session: session},
				Cluster:   &uiCluster{mcpCluster{id: id}, c, settings},
				Identity:  id,
				Settings:  settings,
				Context:   id.Get("context"),
				Namespace: ns,
				Session:   session,
				Socket:    home.Socket(),
				NoColor:   os.Getenv("NO_COLOR") != "",
			}
			if printOnce {
				o.Daemon, o.NoColor = printDaemon{c}, true
				fmt.Fprintln(g.out, ui.Frame(o, width, height))
				return nil
			}
			return ui.Run(cmd.Context(), o, os.Stdin, g.out)
		},
	}
	cmd.Flags().BoolVar(&printOnce, "print", false, "render the first screen once to standard output, without colour, and exit (starting no daemon)")
	cmd.Flags().IntVar(&width, "width", 80, "with --print: the screen's width")
	cmd.Flags().IntVar(&height, "height", 24, "with --print: the screen's height")
	return cmd
}

// printDaemon is the daemon as kpf ui --print sees it: when none runs
// it says so (and starts none).
type printDaemon struct{ *daemon.Client }

func (d printDaemon) Status(ctx context.Context, file string) (*api.Status, error) {
	if !d.Running() {
		return nil, errors.New("no kpf daemon runs: kpf ui (without --print) or kpf daemon starts one")
	}
	return d.Client.Status(ctx, file)
}

var errNoTerminal = errors.New("kpf ui needs a terminal (its input and output are not one): run it in one, or kpf ui --print for its first screen as text")

// uiCluster lists the cluster for kpf ui as its identity, and forwards a
// namespace whole through the daemon (kpf up --all -d).
type uiCluster struct {
	mcpCluster
	daemon   *daemon.Client
	settings spec.Settings
}

func (c *uiCluster) Contexts() ([]ui.Context, error) {
	cs, err := c.mcpCluster.Contexts()
	out := make([]ui.Context, len(cs))
	for i, x := range cs {
		out[i] = ui.Context{Name: x.Name, Cluster: x.Cluster, User: x.User, Namespace: x.Namespace, Current: x.Current}
	}
	return out, err
}

// Namespaces lists the namespaces; an identity that may not list them
// gets an error wrapping ui.ErrForbidden (the UI then opens the
// context's namespace).
func (c *uiCluster) Namespaces(ctx context.Context, kctx string) ([]string, error) {
	l, err := c.mcpCluster.Namespaces(ctx, kctx)
	if apierrors.IsForbidden(err) {
		return nil, fmt.Errorf("%w: %w", ui.ErrForbidden, err)
	}
	return l, err
}

func (c *uiCluster) Targets(ctx context.Context, kctx, namespace string) ([]ui.Target, error) {
	conn, err := c.connect(kctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if namespace == "" {
		namespace = conn.Namespace()
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := listTargets(ctx, conn.Client(), namespace)
	if err != nil && !errors.Is(err, errPartial) {
		return nil, explain(ctx, err, namespace, conn.Flags(), conn.Config())
	}
	return out, err
}

// errPartial: some kinds of target could not be listed (the error says
// which); the others are listed.
var errPartial = errors.New("listed only what you may list")

// listTargets lists the services, deployments, statefulsets and pods of
// namespace with their ports (a namespace that is not a valid name is an
// error saying so). What the identity may not list is left out
// (the error, wrapping errPartial, names it); when nothing is listed,
// a namespace that does not exist is an error saying so.
func listTargets(ctx context.Context, cl kube.Interface, namespace string) ([]ui.Target, error) {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return nil, fmt.Errorf("namespace %q is not a valid name (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit): choose one with -n NAMESPACE or n in the UI", namespace)
	}
	var out []ui.Target
	var forbidden []string
	var firstErr error
	note := func(kind string, err error) {
		if apierrors.IsForbidden(err) {
			forbidden = append(forbidden, kind)
		} else if firstErr == nil {
			firstErr = err
		}
	}
	if svcs, err := cl.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		note("services", err)
	} else {
		for _, s := range svcs.Items {
			if s.Spec.Selector == nil {
				continue // no pods to forward to
			}
			t := ui.Target{Kind: "svc", Name: s.Name}
			for _, p := range s.Spec.Ports {
				if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP {
					continue
				}
				to := p.TargetPort.String()
				if to == "0" || to == strconv.Itoa(int(p.Port)) {
					to = ""
				}
				t.Ports = append(t.Ports, ui.Port{Port: p.Port, Name: p.Name, Protocol: string(p.Protocol), To: to})
			}
			out = append(out, t)
		}
	}
	if ds, err := cl.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		note("deployments", err)
	} else {
		for _, d := range ds.Items {
			out = append(out, ui.Target{Kind: "deployment", Name: d.Name, Ports: uiPorts(d.Spec.Template.Spec),
				Ready: fmt.Sprintf("%d/%d ready", d.Status.ReadyReplicas, d.Status.Replicas)})
		}
	}
	if ss, err := cl.AppsV1().StatefulSets(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		note("statefulsets", err)
	} else {
		for _, s := range ss.Items {
			out = append(out, ui.Target{Kind: "statefulset", Name: s.Name, Ports: uiPorts(s.Spec.Template.Spec),
				Ready: fmt.Sprintf("%d/%d ready", s.Status.ReadyReplicas, s.Status.Replicas)})
		}
	}
	if ps, err := cl.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		note("pods", err)
	} else {
		for _, p := range ps.Items {
			out = append(out, ui.Target{Kind: "pod", Name: p.Name, Ports: uiPorts(p.Spec), Ready: string(p.Status.Phase)})
		}
	}
	if firstErr != nil && len(out) == 0 {
		return nil, firstErr
	}
	if len(out) == 0 {
		// An empty list is also what a namespace that does not exist
		// gives: ask (a Forbidden answer leaves it unknown).
		if _, err := cl.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("namespace %q does not exist (kubectl get namespaces lists them; choose one with -n NAMESPACE or n in the UI)", namespace)
		}
	}
	if len(forbidden) == 4 {
		return nil, fmt.Errorf("you may not list services, deployments, statefulsets or pods in namespace %q (ask your cluster admin for a Role that allows list there, choose another namespace with -n NAMESPACE, or use another --context)", namespace)
	}
	if len(forbidden) > 0 {
		return out, fmt.Errorf("you may not list %s in namespace %q: %w", strings.Join(forbidden, ", "), namespace, errPartial)
	}
	return out, nil
}

func uiPorts(spec corev1.PodSpec) []ui.Port {
	var out []ui.Port
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
			if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP {
				continue
			}
			out = append(out, ui.Port{Port: p.ContainerPort, Name: p.Name, Protocol: string(p.Protocol)})
		}
	}
	return out
}

// ForwardNamespace is kpf up --all -n NS -d in context kctx: the file it
// stands for, applied in the daemon as this identity.
func (c *uiCluster) ForwardNamespace(ctx context.Context, kctx, ns string) (string, error) {
	id := c.id
	if kctx != "" {
		id = id.WithContext(kctx)
	} else if raw, err := c.id.Getter(); err == nil {
		if cfg, err := raw.ToRawKubeConfigLoader().RawConfig(); err == nil {
			kctx = cfg.CurrentContext
		}
	}
	file, err := writeAllFile(kctx, ns, "", "")
	if err != nil {
		return "", err
	}
	_, err = c.daemon.Apply(ctx, api.ApplyRequest{File: file, Identity: id, Settings: c.settings})
	return file, err
}
