package cli

import (
	"context"
	"fmt"
	"github.com/kpf-dev/kpf/internal/cluster"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/spf13/cobra"
)

// RunOptions is kpf run: forwards around one command.
type RunOptions struct {
	g        *globals
	File     string
	Timeout  time.Duration
	Settings spec.Settings
	All      allFlags

	names   []string
	command []string
	file    *config.File
}

// exitError carries a command's exit code through kpf's exit.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("the command exited with code %d", e.code) }

func newRunCommand(g *globals) *cobra.Command {
	o := &RunOptions{g: g, Timeout: 2 * time.Minute, Settings: spec.Defaults()}
	cmd := &cobra.Command{
		Use:   "run [NAME...] [-f FILE] -- COMMAND [ARGS...]",
		Short: "Start the forwards, wait until they are healthy, run COMMAND with their addresses, then stop them",
		Long: `Start the forwards of kpf.yaml (or -f FILE; all, or the named ones), wait until
every one is ready and healthy, then run COMMAND with each forward's local
address in its environment: KPF_<NAME>_ADDR (host:port), KPF_<NAME>_HOST,
KPF_<NAME>_PORT (a number) and KPF_<NAME>_PROTO (tcp, or udp for a /udp port),
NAME upper-cased with '_' for other characters. When COMMAND ends the
forwards stop, and kpf exits with COMMAND's exit code.`,
		Example: `  kpf run -- sh -c 'curl -fsS http://$KPF_API_ADDR/healthz'
  kpf run api db -f ci.yaml -- go test ./integration/...`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash < 0 || dash == len(args) {
				return usagef("give the command after --, like: kpf run -- make integration-test")
			}
			o.names, o.command = args[:dash], args[dash:]
			if err := o.Settings.Validate(); err != nil {
				return usageError{err}
			}
			id, err := g.identity(cmd)
			if err != nil {
				return err
			}
			if all, err := o.All.file(cmd, o.File, o.names, id); err != nil {
				return err
			} else if all != "" {
				o.File = all
			}
			return o.Run(cmd.Context(), id)
		},
	}
	cmd.Flags().StringVarP(&o.File, "file", "f", "", "forwards file (default kpf.yaml in this folder)")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for every forward to be healthy before giving up")
	o.Settings.AddFlags(cmd.Flags(), fileSettings...)
	o.All.AddFlags(cmd.Flags())
	return cmd
}

// Run starts the forwards, runs the command and stops the forwards.
func (o *RunOptions) Run(ctx context.Context, id identity.Identity) error {
	if err := o.g.startDebug(ctx); err != nil {
		return err
	}
	var fws []config.Forward
	var err error
	if o.file, fws, err = loadForwards(o.File, o.names); err != nil {
		return err
	}
	log := o.g.logger()
	clusters := cluster.NewRegistry(clusterOptions(log))
	m := manager.New(manager.Options{
		Open:         newOpener(o.file.Path, id, clusters, log, o.g.errOut, nil),
		OpenProxy:    newProxyOpener(id, clusters, log, nil),
		OpenDiscover: newDiscoverOpener(id, clusters),
		Settings:     o.Settings,
		Log:          log,
		Events: func(e manager.Event) {
			fmt.Fprintf(o.g.errOut, "kpf: %s: %s\n", e.Forward, e.Message)
		},
	})
	fctx, stop := context.WithCancel(ctx)
	defer func() { stop(); m.Stop() }()
	m.Start(fctx, fws)
	if err := m.WaitGood(ctx, o.Timeout); err != nil {
		return err
	}
	var env []string
	for _, r := range m.Snapshot() {
		if len(r.Local) == 0 {
			continue
		}
		env = append(env, forwardEnv(r.Name, r.Local[0])...)
	}
	return runWithEnv(ctx, o.command, env, o.g.out, o.g.errOut)
}

// forwardEnv is the variables of a forward named name listening at local
// (host:port, "/udp" after it for a /udp port): _ADDR a dialable
// host:port, _HOST, _PORT a number, and _PROTO tcp or udp.
func forwardEnv(name, local string) []string {
	key := envKey(name)
	addr, proto := local, "tcp"
	if a, ok := strings.CutSuffix(local, "/udp"); ok {
		addr, proto = a, "udp"
	}
	host, port := splitHostPort(addr)
	return []string{key + "_ADDR=" + addr, key + "_HOST=" + host, key + "_PORT=" + port, key + "_PROTO=" + proto}
}

func splitHostPort(addr string) (string, string) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return addr, ""
	}
	return strings.Trim(addr[:i], "[]"), addr[i+1:]
}

// envKey is the prefix of a forward's variables: KPF_ and its name
// upper-cased, with '_' for anything but letters and digits (a
// discovered forward's name, api.shop:8080, is KPF_API_SHOP_8080).
func envKey(name string) string {
	return "KPF_" + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, name)
}
