// Package cli holds the kpf-sandbox commands.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/node"
	"github.com/kpf-dev/kpf/sandbox/upstream"
	"github.com/kpf-dev/kpf/sandbox/workload"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// ExitCode is an error that asks for a particular exit status.
type ExitCode int

func (e ExitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type globalOptions struct {
	stateDir string
	cacheDir string
}

func (g *globalOptions) open(out io.Writer) (*cluster.Cluster, error) {
	dir := cluster.Dir(g.stateDir)
	if g.stateDir == "" {
		d, err := cluster.DefaultDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return cluster.Open(dir, self, out)
}

// binCache is where built upstream binaries are kept: $KPF_SANDBOX_CACHE, or
// kpf-sandbox-bin under the user's cache folder. It is apart from the state
// folder so that down --purge keeps the 10-minute build.
func (g *globalOptions) binCache() (string, error) {
	if g.cacheDir != "" {
		return g.cacheDir, nil
	}
	if d := os.Getenv("KPF_SANDBOX_CACHE"); d != "" {
		return d, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache folder (%w): set KPF_SANDBOX_CACHE", err)
	}
	return filepath.Join(cache, "kpf-sandbox-bin"), nil
}

func (g *globalOptions) build(ctx context.Context, out io.Writer) (upstream.Bin, error) {
	src, err := upstream.FindSource()
	if err != nil {
		return "", err
	}
	cache, err := g.binCache()
	if err != nil {
		return "", err
	}
	return upstream.Ensure(ctx, src, cache, out)
}

// NewRoot returns the kpf-sandbox command tree.
func NewRoot() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:           "kpf-sandbox",
		Short:         "A one-node Kubernetes cluster on this machine for kpf's tests, benchmarks and demo",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", "", "state folder (default $KPF_SANDBOX_DIR, or kpf-sandbox in the user cache folder)")
	root.PersistentFlags().StringVar(&g.cacheDir, "cache-dir", "", "folder of built upstream binaries (default $KPF_SANDBOX_CACHE, or kpf-sandbox-bin in the user cache folder)")
	root.AddCommand(
		newBuild(g), newUp(g), newDown(g), newStatus(g), newEnv(g), newKubectl(g),
		newFault(g, "restart", "Restart a component (apiserver, node, controller-manager, etcd) and wait until it is healthy"),
		newFault(g, "pause", "Freeze a component with SIGSTOP (apiserver, node, ...)"),
		newFault(g, "resume", "Thaw a component paused with pause (SIGCONT)"),
		newNode(g), newWorkload(), newImage(g), newContainerInit(),
	)
	return root
}

func newBuild(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "build",
		Short: "Build the upstream control plane into the cache (once per version) and print its folder",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bin, err := g.build(cmd.Context(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), bin)
			return nil
		},
	}
}

func newUp(g *globalOptions) *cobra.Command {
	var nf nodeFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the sandbox (idempotent) and print where its kubeconfigs are",
		Long: `Start the sandbox (idempotent) and print where its kubeconfigs are.

The node flags are kept in the state folder: a later up or restart keeps
them. Given to a running sandbox, they restart the node agent if they
change its settings (its pods restart with it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := nf.settings(cmd)
			if err != nil {
				return err
			}
			bin, err := g.build(cmd.Context(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := c.Up(cmd.Context(), bin, set); err != nil {
				return fmt.Errorf("%w\n(logs are in %s; kpf-sandbox down stops what was started)", err, filepath.Dir(c.Dir().LogFile("x")))
			}
			printInfo(cmd.OutOrStdout(), c)
			return nil
		},
	}
	nf.add(cmd)
	return cmd
}

// nodeFlags are the node agent's settings on up and restart node.
type nodeFlags struct{ topology, idle string }

func (f *nodeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.topology, "node-topology", "", `how the node serves port-forwards: "cri" (the default), a node of Kubernetes 1.36+: it declares ExtendWebSocketsToKubelet, so the API server proxies WebSocket port-forwards to it unchanged, and it proxies the streams to a CRI streaming server, as kubelet -> containerd; or "legacy", an older node: no declared feature, the API server translates WebSockets, the kubelet handler serves the streams`)
	cmd.Flags().StringVar(&f.idle, "streaming-connection-idle-timeout", "", "close a port-forward connection idle this long (no frame either way), as the kubelet's flag of that name; on a cri node the CRI streaming server applies it, as containerd's stream_idle_timeout (default 4h)")
}

// settings checks the flags given and returns what changes the recorded
// node settings; nil if no node flag was given.
func (f *nodeFlags) settings(cmd *cobra.Command) (func(*cluster.NodeSettings), error) {
	topo, idle := cmd.Flags().Changed("node-topology"), cmd.Flags().Changed("streaming-connection-idle-timeout")
	if !topo && !idle {
		return nil, nil
	}
	if _, err := node.ParseTopology(f.topology); err != nil {
		return nil, err
	}
	if _, err := node.ParseStreamIdleTimeout(f.idle); err != nil {
		return nil, err
	}
	return func(s *cluster.NodeSettings) {
		if topo {
			s.Topology = f.topology
		}
		if idle {
			s.StreamingConnectionIdleTimeout = f.idle
		}
	}, nil
}

func printInfo(w io.Writer, c *cluster.Cluster) {
	d := c.Dir()
	fmt.Fprintf(w, "API server:  %s\n", c.APIServerURL())
	fmt.Fprintf(w, "kubectl:     %s\n", c.Bin("kubectl"))
	fmt.Fprintf(w, "kubeconfigs:\n")
	for _, u := range []struct{ name, what string }{
		{cluster.UserAdmin, "cluster admin"},
		{cluster.UserDev, "port-forward and read in namespace " + cluster.DevNamespace},
		{cluster.UserViewer, "read-only in namespace " + cluster.DevNamespace + ", no port-forward"},
		{cluster.UserNobody, "no rights at all"},
	} {
		fmt.Fprintf(w, "  %-7s %s  (%s)\n", u.name, d.Kubeconfig(u.name), u.what)
	}
	fmt.Fprintf(w, "audit log:   %s\n", d.AuditLog())
	fmt.Fprintf(w, "logs:        %s\n", filepath.Dir(d.LogFile("x")))
	fmt.Fprintf(w, "try:         export KUBECONFIG=%s; kubectl get nodes\n", d.Kubeconfig(cluster.UserAdmin))
}

func newDown(g *globalOptions) *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop every process the sandbox started (by PID); --purge also deletes its state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := c.Down(); err != nil {
				return err
			}
			if purge {
				return os.RemoveAll(string(c.Dir()))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "delete the state folder too (PKI, etcd data, logs); the built binaries are kept")
	return cmd
}

func newStatus(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which sandbox processes run; exit 3 if any does not",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			st := c.State()
			type row struct {
				Component string `json:"component"`
				PID       int    `json:"pid,omitempty"`
				Running   bool   `json:"running"`
			}
			out := struct {
				SchemaVersion int    `json:"schemaVersion"`
				StateDir      string `json:"stateDir"`
				APIServer     string `json:"apiServer,omitempty"`
				Kubeconfig    string `json:"kubeconfig"`
				Components    []row  `json:"components"`
			}{SchemaVersion: 1, StateDir: string(c.Dir()), Kubeconfig: c.Dir().Kubeconfig(cluster.UserAdmin)}
			if st.Ports.APIServer != 0 {
				out.APIServer = c.APIServerURL()
			}
			for _, name := range cluster.Order {
				p := st.Procs[name]
				out.Components = append(out.Components, row{name, p.PID, p.Alive()})
			}
			w := cmd.OutOrStdout()
			if asJSON {
				e := json.NewEncoder(w)
				e.SetIndent("", "  ")
				e.Encode(out)
			} else {
				fmt.Fprintf(w, "state: %s\n", out.StateDir)
				for _, r := range out.Components {
					state := "stopped"
					if r.Running {
						state = fmt.Sprintf("running (pid %d)", r.PID)
					}
					fmt.Fprintf(w, "  %-24s %s\n", r.Component, state)
				}
				if c.Running() {
					printInfo(w, c)
				}
			}
			if !c.Running() {
				if !asJSON {
					fmt.Fprintln(w, "the sandbox is not (fully) running: start it with kpf-sandbox up")
				}
				return ExitCode(3)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newEnv(g *globalOptions) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Print shell exports for using the sandbox: eval \"$(kpf-sandbox env)\"",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if !slices.Contains([]string{cluster.UserAdmin, cluster.UserDev, cluster.UserViewer, cluster.UserNobody}, user) {
				return fmt.Errorf("--user %q: want admin, dev, viewer or nobody", user)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "export KUBECONFIG=%s\nexport KPF_SANDBOX_KUBECTL=%s\n", c.Dir().Kubeconfig(user), c.Bin("kubectl"))
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", cluster.UserAdmin, "whose kubeconfig: admin, dev, viewer or nobody")
	return cmd
}

func newKubectl(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl [ARGS...]",
		Short:              "Run the sandbox's kubectl as admin (kpf-sandbox kubectl get pods -A)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			k := exec.CommandContext(cmd.Context(), c.Bin("kubectl"), append([]string{"--kubeconfig", c.Dir().Kubeconfig(cluster.UserAdmin)}, args...)...)
			k.Stdin, k.Stdout, k.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := k.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					return ExitCode(ee.ExitCode())
				}
				return err
			}
			return nil
		},
	}
}

var componentNames = map[string]string{
	"apiserver": cluster.APIServer, "kube-apiserver": cluster.APIServer,
	"node": cluster.Node, "kubelet": cluster.Node,
	"controller-manager": cluster.ControllerManager, "kube-controller-manager": cluster.ControllerManager,
	"etcd": cluster.Etcd,
}

func newFault(g *globalOptions, verb, short string) *cobra.Command {
	var nf nodeFlags
	cmd := &cobra.Command{
		Use:       verb + " COMPONENT",
		Short:     short,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"apiserver", "node", "controller-manager", "etcd"},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ok := componentNames[args[0]]
			if !ok {
				return fmt.Errorf("unknown component %q: want apiserver, node, controller-manager or etcd", args[0])
			}
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			switch verb {
			case "restart":
				set, err := nf.settings(cmd)
				if err != nil {
					return err
				}
				if set != nil && name != cluster.Node {
					return fmt.Errorf("--node-topology and --streaming-connection-idle-timeout are for restart node, not %s", args[0])
				}
				return c.Restart(cmd.Context(), name, set)
			case "pause":
				return c.Pause(name)
			default:
				return c.Resume(name)
			}
		},
	}
	if verb == "restart" {
		nf.add(cmd)
	}
	return cmd
}

// newImage loads images into the node's registry.
func newImage(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "The sandbox's images beyond the built-in kpf.test/* ones"}
	cmd.AddCommand(&cobra.Command{
		Use:   "add REF PROGRAM",
		Short: "Load an image: containers of REF run PROGRAM as its entrypoint (with their args)",
		Example: `  # kpf's relay image, as a release would publish it
  kpf-sandbox image add ghcr.io/kpf-dev/kpf:dev bin/kpf`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := node.AddImage(c.Dir().NodeDir(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "image %s: %s\n", args[0], args[1])
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "load REF LAYOUT",
		Short: "Load an image from an OCI image layout (one layer, an entrypoint file): containers of REF run its entrypoint",
		Example: `  # the relay image make release-snapshot builds
  kpf-sandbox image load ghcr.io/kpf-dev/kpf:1.2.3 dist/relay-image`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			prog, err := node.LoadImage(c.Dir().NodeDir(), args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "image %s: %s (from %s)\n", args[0], prog, args[1])
			return nil
		},
	})
	return cmd
}

// newNode runs the node agent; kpf-sandbox up starts it.
func newNode(g *globalOptions) *cobra.Command {
	var nf nodeFlags
	cmd := &cobra.Command{
		Use:    "node",
		Short:  "Run the node agent (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			d, st := c.Dir(), c.State()
			clientFor := func(user string) (kubernetes.Interface, error) {
				cfg, err := clientcmd.BuildConfigFromFlags("", d.Kubeconfig(user))
				if err != nil {
					return nil, err
				}
				cfg.QPS, cfg.Burst = 500, 1000
				cfg.UserAgent = "kpf-sandbox-node/" + node.KubeletVersion
				return kubernetes.NewForConfig(cfg)
			}
			nodeClient, err := clientFor("node")
			if err != nil {
				return err
			}
			schedClient, err := clientFor("scheduler")
			if err != nil {
				return err
			}
			// The service proxy and cluster DNS, add-ons with their own
			// identities on a real cluster, use the admin's here.
			svcClient, err := clientFor(cluster.UserAdmin)
			if err != nil {
				return err
			}
			topo, err := node.ParseTopology(nf.topology)
			if err != nil {
				return err
			}
			idle, err := node.ParseStreamIdleTimeout(nf.idle)
			if err != nil {
				return err
			}
			self, _ := os.Executable()
			pki := filepath.Join(string(d), "pki")
			a, err := node.New(node.Config{
				NodeName:   cluster.NodeName,
				Node:       nodeClient,
				Scheduler:  schedClient,
				Services:   svcClient,
				Port:       st.Ports.Kubelet,
				CertFile:   filepath.Join(pki, "kubelet.crt"),
				KeyFile:    filepath.Join(pki, "kubelet.key"),
				ClientCA:   filepath.Join(pki, "ca.crt"),
				StateDir:   d.NodeDir(),
				AddrPrefix: st.AddrPrefix,
				Self:       self,
				Log:        slog.New(slog.NewTextHandler(os.Stderr, nil)),

				Topology:          topo,
				StreamIdleTimeout: idle,
			})
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	nf.add(cmd)
	return cmd
}

// newContainerInit is a container's first step, run by the node agent.
func newContainerInit() *cobra.Command {
	return &cobra.Command{
		Use:                "container-init RESOLV PROGRAM ARGV...",
		Short:              "Put RESOLV over /etc/resolv.conf and execute PROGRAM (the node agent starts containers so)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return node.ContainerInit(args)
		},
	}
}

func newWorkload() *cobra.Command {
	var names []string
	for n := range workload.Names {
		names = append(names, n)
	}
	slices.Sort(names)
	return &cobra.Command{
		Use:                "workload NAME [ARGS...]",
		Short:              "Run a built-in image (" + strings.Join(names, ", ") + "); the node agent runs these for kpf.test/NAME",
		Hidden:             true,
		DisableFlagParsing: true,
		Args:               cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return workload.Run(args[0], args[1:])
		},
	}
}
