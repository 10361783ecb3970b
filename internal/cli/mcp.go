package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/mcp"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func newMCPCommand(g *globals) *cobra.Command {
	var readOnly bool
	settings := spec.Defaults()
	cmd := &cobra.Command{
		Use:   "mcp [--read-only]",
		Short: "Serve the Model Context Protocol on stdio: AI agents list targets and forward to them through the daemon",
		Long: `Serve the Model Context Protocol (MCP) on standard input and output, for AI
coding agents (Claude Code, Cursor, VS Code...). Its tools list contexts,
namespaces and forwardable targets, start a forward (it returns the local
address), stop it, show status, run doctor, print the Role a forward needs,
and show a forward's HTTP log. Forwards start in the kpf daemon (started if
none runs), as this command's kubeconfig identity, on loopback only, labelled
"started by mcp" in kpf status; they stop when the session ends unless the
agent asked to keep them. --read-only offers only the tools that change
nothing. The README says how to add it to an MCP client.`,
		Example: `  kpf mcp
  kpf mcp --read-only --context staging`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := settings.Validate(); err != nil {
				return usageError{err}
			}
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			home := daemon.DefaultHome()
			c := daemon.NewClient(home)
			b := make([]byte, 16)
			rand.Read(b)
			session := "mcp-" + hex.EncodeToString(b)
			s := mcp.New(mcp.Options{
				Daemon:   &startingDaemon{Client: c, home: home, errOut: g.errOut, ctx: cmd.Context(), session: session},
				Session:  session,
				Cluster:  &mcpCluster{id: id},
				Identity: id,
				Settings: settings,
				ReadOnly: readOnly,
				Context:  id.Get("context"),
				Version:  currentVersion().Version,
			})
			// A stray line is answered with a JSON-RPC error, not the end of
			// the session (and of the agent's forwards).
			return s.Run(cmd.Context(), &mcp.Stdio{In: os.Stdin, Out: os.Stdout})
		},
	}
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "offer only the tools that change nothing (no start_forward, no stop_forward)")
	return cmd
}

// startingDaemon starts the daemon the first time a forward is started
// and none answers.
// It holds the session's event stream from then on, so that the daemon
// stops the session's forwards when kpf mcp ends, however it ends.
type startingDaemon struct {
	*daemon.Client
	home    daemon.Home
	errOut  io.Writer
	ctx     context.Context // the command's
	session string
	holding bool // a stream is open or opening; under mu
	mu      sync.Mutex
}

func (d *startingDaemon) Start(ctx context.Context, req api.StartRequest) (*api.Forward, error) {
	if _, err := ensureDaemon(d.Client, d.home, d.errOut, startDaemon); err != nil {
		return nil, err
	}
	d.hold(ctx)
	return d.Client.Start(ctx, req)
}

// hold opens the session's stream once (again after the daemon it held
// went away), and waits until the daemon holds it.
func (d *startingDaemon) hold(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.holding {
		return
	}
	d.holding = true
	ready := make(chan struct{})
	go func() {
		d.HoldSession(d.ctx, d.session, ready)
		d.mu.Lock()
		d.holding = false
		d.mu.Unlock()
	}()
	select {
	case <-ready:
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
}

// Status is the daemon's, or no forwards when none runs (a status tool
// answers what runs: nothing).
func (d *startingDaemon) Status(ctx context.Context, file string) (*api.Status, error) {
	st, err := d.Client.Status(ctx, file)
	if errors.Is(err, daemon.ErrNotRunning) {
		return &api.Status{SchemaVersion: api.SchemaVersion, Files: []string{}, Forwards: []api.Forward{}}, nil
	}
	return st, err
}

// mcpCluster lists contexts, namespaces and targets as kpf mcp's identity.
type mcpCluster struct {
	id identity.Identity
}

func (c *mcpCluster) Contexts() ([]mcp.Context, error) {
	flags, err := c.id.Getter()
	if err != nil {
		return nil, explainConfig(err)
	}
	raw, err := flags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return nil, explainConfig(err)
	}
	current := raw.CurrentContext
	if v := c.id.Get("context"); v != "" {
		current = v
	}
	var out []mcp.Context
	for name, kc := range raw.Contexts {
		out = append(out, mcp.Context{Name: name, Cluster: kc.Cluster, User: kc.AuthInfo, Namespace: kc.Namespace, Current: name == current})
	}
	slices.SortFunc(out, func(a, b mcp.Context) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// connect connects as the identity, with context if given.
func (c *mcpCluster) connect(context string) (*cluster.Conn, error) {
	id := c.id
	if context != "" {
		id = id.WithContext(context)
	}
	conn, err := cluster.Connect(id, clusterOptions(nil))
	if err != nil {
		return nil, explainConfig(err)
	}
	return conn, nil
}

func (c *mcpCluster) Namespaces(ctx context.Context, kctx string) ([]string, error) {
	conn, err := c.connect(kctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	l, err := conn.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, explain(ctx, err, "", conn.Flags(), conn.Config())
	}
	var out []string
	for _, n := range l.Items {
		out = append(out, n.Name)
	}
	return out, nil
}

func (c *mcpCluster) Targets(ctx context.Context, kctx, namespace string) ([]mcp.Target, error) {
	conn, err := c.connect(kctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if namespace == "" {
		if namespace, _, err = conn.Flags().ToRawKubeConfigLoader().Namespace(); err != nil || namespace == "" {
			namespace = "default"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cl := conn.Client()
	var out []mcp.Target
	svcs, err := cl.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, explain(ctx, err, namespace, conn.Flags(), conn.Config())
	}
	for _, s := range svcs.Items {
		if s.Spec.Selector == nil {
			continue // no pods to forward to
		}
		var ports []string
		for _, p := range s.Spec.Ports {
			if p.Protocol == corev1.ProtocolUDP {
				continue
			}
			ports = append(ports, portText(p.Port, p.Name, p.TargetPort.String()))
		}
		out = append(out, mcp.Target{Target: "svc/" + s.Name, Ports: ports})
	}
	if ds, err := cl.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{}); err == nil {
		for _, d := range ds.Items {
			out = append(out, mcp.Target{Target: "deployment/" + d.Name, Ports: containerPorts(d.Spec.Template.Spec),
				Ready: fmt.Sprintf("%d/%d", d.Status.ReadyReplicas, d.Status.Replicas)})
		}
	}
	if ss, err := cl.AppsV1().StatefulSets(namespace).List(ctx, metav1.ListOptions{}); err == nil {
		for _, s := range ss.Items {
			out = append(out, mcp.Target{Target: "statefulset/" + s.Name, Ports: containerPorts(s.Spec.Template.Spec),
				Ready: fmt.Sprintf("%d/%d", s.Status.ReadyReplicas, s.Status.Replicas)})
		}
	}
	if ps, err := cl.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{}); err == nil {
		for _, p := range ps.Items {
			out = append(out, mcp.Target{Target: "pod/" + p.Name, Ports: containerPorts(p.Spec), Ready: string(p.Status.Phase)})
		}
	}
	return out, nil
}

func portText(port int32, name, to string) string {
	s := strconv.Itoa(int(port))
	if name != "" {
		s += " (" + name + ")"
	}
	if to != "" && to != "0" && to != strconv.Itoa(int(port)) {
		s += " -> " + to
	}
	return s
}

func containerPorts(spec corev1.PodSpec) []string {
	var out []string
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol == corev1.ProtocolUDP {
				continue
			}
			out = append(out, portText(p.ContainerPort, p.Name, ""))
		}
	}
	return out
}
