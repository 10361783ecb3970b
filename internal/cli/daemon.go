package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kpf-dev/kpf/internal/cluster"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/spf13/cobra"
)

// upDetached is kpf up -d: hand the file to the daemon, starting it if
// needed, with this command's identity and settings. Files applied by
// other commands keep running.
func (o *UpOptions) upDetached(ctx context.Context) error {
	home := daemon.DefaultHome()
	c := daemon.NewClient(home)
	metricsAddr := o.Metrics
	if metricsAddr == "" {
		metricsAddr = o.file.Metrics
	}
	abs, err := filepath.Abs(o.file.Path)
	if err != nil {
		return err
	}
	var res *api.ApplyResult
	// A daemon that answered may be exiting (kpf down stopped its last
	// forward meanwhile): the apply then finds no daemon, and is made
	// again to the next one (applying is idempotent).
	for try := 1; ; try++ {
		if err := o.ensureDaemon(c, home, metricsAddr); err != nil {
			return err
		}
		res, err = c.Apply(ctx, api.ApplyRequest{File: abs, Names: o.names, Identity: o.id, Settings: o.Settings})
		if !errors.Is(err, daemon.ErrNotRunning) || try == 3 {
			break
		}
	}
	if err != nil {
		return err
	}
	if metricsAddr != "" {
		if st, err := c.Status(ctx, abs); err == nil && st.Metrics == "" {
			fmt.Fprintf(o.g.errOut, "note: the daemon was running already without metrics; they are served by a daemon started with kpf daemon --metrics-addr %s\n", metricsAddr)
		}
	}
	for _, part := range []struct {
		what  string
		names []string
	}{{"started", res.Started}, {"restarted", res.Restarted}, {"unchanged", res.Unchanged}, {"stopped", res.Stopped}} {
		if len(part.names) > 0 {
			fmt.Fprintf(o.g.out, "%s: %s\n", part.what, strings.Join(part.names, ", "))
		}
	}
	if !o.Wait {
		refreshHostsFiles(ctx, o.g, home)
		fmt.Fprintln(o.g.out, "kpf status shows how they are doing; kpf down stops them")
		return nil
	}
	st, err := c.Wait(ctx, abs, o.WaitTimeout)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted before every forward was ready; they go on running in the daemon (kpf status shows them, kpf down stops them): %w", ctx.Err())
	}
	refreshHostsFiles(ctx, o.g, home)
	if err != nil {
		if st2, serr := c.Status(ctx, abs); serr == nil {
			writeTable(o.g.errOut, st2.Forwards, false)
		}
		return err
	}
	writeTable(o.g.out, st.Forwards, false)
	return nil
}

// ensureDaemon starts the daemon of home unless one answers, and waits
// until it does.
func (o *UpOptions) ensureDaemon(c *daemon.Client, home daemon.Home, metricsAddr string) error {
	if c.Running() {
		return nil
	}
	var args []string
	if metricsAddr != "" {
		args = append(args, "--metrics-addr", metricsAddr)
	}
	if err := o.startDaemon(home, o.g.errOut, args...); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for !c.Running() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the kpf daemon did not answer on %s within 15s; its log is %s", home.Socket(), home.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// daemonEnv is what the daemon keeps of the environment that started it.
// Everything a forward needs from a command's environment (KUBECONFIG,
// proxies, what exec plugins read) comes with each file it applies, so
// one command's AWS_PROFILE never leaks into another's forwards.
func daemonEnv(env []string) []string {
	keep := []string{"HOME", "USER", "LOGNAME", "PATH", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL", "XDG_RUNTIME_DIR",
		"GODEBUG", "GOMAXPROCS", "GOCOVERDIR", "GORACE", "SYSTEMROOT", "LOCALAPPDATA", "APPDATA", "USERPROFILE"}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KPF_") || slices.Contains(keep, strings.ToUpper(k)) {
			out = append(out, kv)
		}
	}
	return out
}

// startDaemon runs kpf daemon detached, with its output in the home's log.
// It gets no connection flags: each file brings its own identity.
func startDaemon(home daemon.Home, errOut io.Writer, args ...string) error {
	if err := home.Ensure(); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(home.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, append([]string{"daemon"}, args...)...)
	cmd.Env = daemonEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = filepath.VolumeName(exe) + string(filepath.Separator)
	detach(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the kpf daemon: %w", err)
	}
	fmt.Fprintf(errOut, "started the kpf daemon (pid %d; log %s)\n", cmd.Process.Pid, home.Log())
	return cmd.Process.Release()
}

func newDaemonCommand(g *globals) *cobra.Command {
	var apply []string
	home := daemon.DefaultHome()
	auditPath := home.AuditLog()
	var metricsAddr string
	cmd := &cobra.Command{
		Use:   "daemon [--apply FILE...]",
		Short: "Run the background daemon (kpf up -d starts it; kpf daemon install starts it at login)",
		Long: `Run the per-user background daemon in the foreground. kpf up -d starts one
when none runs; kpf daemon install makes the user's service manager start
one at login. With --apply, it runs those files at start as the identity of
its own flags and environment, as kpf up -d would.`,
		Example: "  kpf daemon install -f kpf.yaml\n  kpf daemon --apply /src/shop/kpf.yaml --context staging",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := g.logger()
			if err := home.Ensure(); err != nil {
				return err
			}
			auditLog, err := openAudit(auditPath)
			if err != nil {
				return err
			}
			defer auditLog.Close()
			// Files applied as one identity share its connections.
			clusters := cluster.NewRegistry(clusterOptions(log))
			s := &daemon.Server{
				Home: home,
				Log:  log,
				Opener: func(file string, id identity.Identity, log *slog.Logger) manager.Opener {
					return newOpener(file, id, clusters, log, g.errOut, auditLog)
				},
				ProxyOpener: func(_ string, id identity.Identity, log *slog.Logger) manager.ProxyOpener {
					return newProxyOpener(id, clusters, log, auditLog)
				},
				DiscoverOpener: func(id identity.Identity) manager.DiscoverOpener {
					return newDiscoverOpener(id, clusters)
				},
				Describe: describeIdentity,
				Events:   g.out,
			}
			if err := g.startDebug(cmd.Context()); err != nil {
				return err
			}
			at, err := serveMetrics(cmd.Context(), metricsAddr, s.Metrics, g.errOut)
			if err != nil {
				return err
			}
			if at != nil {
				s.MetricsURL = "http://" + at.String() + "/metrics"
			}
			if len(apply) > 0 {
				id, err := g.identity(cmd)
				if err != nil {
					return err
				}
				for _, f := range apply {
					abs, err := filepath.Abs(f)
					if err != nil {
						return err
					}
					s.Initial = append(s.Initial, api.ApplyRequest{File: abs, Identity: id, Settings: spec.Defaults()})
				}
			}
			return s.Serve(cmd.Context())
		},
	}
	cmd.Flags().StringArrayVar(&apply, "apply", nil, "a forwards file to run at start (repeatable)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", metricsAddrUsage)
	cmd.Flags().StringVar(&auditPath, "audit-log", auditPath, "the daemon's audit log: a JSON line per connection and per forward start, stop and pod switch (0600, rotated at 10 MB); \"\" for none")
	cmd.AddCommand(newServiceCommands(g)...)
	return cmd
}

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON, watch bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's forwards: file, user, state, health, pod, connections, bytes and rates, reconnects",
		Long: `Show the daemon's forwards: for each, its file, who it connects as, state,
health, pod, local addresses, connections (open/total, failed), bytes each
way (counted as they move) and bytes per second over the last second,
reconnects and pod switches. --watch redraws every second until Ctrl-C.`,
		Example: "  kpf status\n  kpf status --watch\n  kpf status --json | jq '.forwards[] | select(.state != \"ready\")'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := daemon.NewClient(daemon.DefaultHome())
			ctx := cmd.Context()
			term := isTerminal(g.out)
			for {
				st, err := c.Status(ctx, "")
				if err != nil {
					if watch && ctx.Err() != nil {
						return nil
					}
					return err
				}
				var b strings.Builder
				if asJSON {
					if err := printJSON(&b, st); err != nil {
						return err
					}
				} else {
					writeStatus(&b, st)
				}
				if watch && term {
					io.WriteString(g.out, "\x1b[H\x1b[2J") // home, clear
				}
				io.WriteString(g.out, b.String())
				if !watch {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
				if !term {
					fmt.Fprintln(g.out)
				}
			}
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, fmt.Sprintf("print JSON (schemaVersion %d)", api.SchemaVersion))
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "redraw every second until interrupted")
	return cmd
}

// writeStatus writes the daemon's status as kpf status shows it.
func writeStatus(w io.Writer, st *api.Status) {
	fmt.Fprintf(w, "kpf daemon pid %d, up %s, %d file(s)\n", st.PID, time.Since(st.Started).Round(time.Second), len(st.Files))
	for _, f := range st.Files {
		var rows []api.Forward
		for _, r := range st.Forwards {
			if r.File == f {
				rows = append(rows, r)
			}
		}
		fmt.Fprintf(w, "\n%s\n", f)
		writeTable(w, rows, true)
	}
}

// pickFlags are how down, restart and logs name forwards.
type pickFlags struct {
	file string
	all  bool
}

func (p *pickFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&p.file, "file", "f", "", "the forwards of this file (its path, as given to kpf up -d)")
	cmd.Flags().BoolVar(&p.all, "all", false, "every forward of every file")
}

// request turns names and flags into a daemon request. With neither
// names, -f nor --all: the forwards of kpf.yaml in this folder if the
// daemon runs it, else those of the daemon's only file.
func (p *pickFlags) request(ctx context.Context, c *daemon.Client, names []string) (api.NamesRequest, error) {
	req := api.NamesRequest{Names: names, All: p.all}
	if p.all && (len(names) > 0 || p.file != "") {
		return req, usagef("--all takes no names and no --file")
	}
	if p.file != "" {
		abs, err := filepath.Abs(p.file)
		if err != nil {
			return req, err
		}
		req.File = abs
		return req, nil
	}
	if p.all || len(names) > 0 {
		return req, nil
	}
	st, err := c.Status(ctx, "")
	if err != nil {
		return req, err
	}
	if local, err := config.Find(""); err == nil {
		if abs, err := filepath.Abs(local); err == nil && slices.Contains(st.Files, abs) {
			req.File = abs
			return req, nil
		}
	}
	switch len(st.Files) {
	case 0:
		req.All = true
	case 1:
		req.File = st.Files[0]
	default:
		return req, usagef("the daemon runs %d files (%s): name forwards, a file with -f FILE, or --all", len(st.Files), strings.Join(st.Files, ", "))
	}
	return req, nil
}

func pickedText(ps []api.Picked) string {
	if len(ps) == 0 {
		return "none (no forward was running)" // not "stopped: " and nothing
	}
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s (%s)", strings.Join(p.Names, ", "), p.File))
	}
	return strings.Join(parts, "; ")
}

func newDownCommand(g *globals) *cobra.Command {
	var p pickFlags
	cmd := &cobra.Command{
		Use:   "down [NAME...] [-f FILE | --all]",
		Short: "Stop forwards of the daemon: the named ones, a file's, or all; the daemon exits when none is left",
		Example: `  kpf down                 # the forwards of kpf.yaml in this folder (or of the daemon's only file)
  kpf down api -f shop.yaml
  kpf down --all`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := daemon.NewClient(daemon.DefaultHome())
			st, err := c.Status(cmd.Context(), "")
			if err != nil {
				return err
			}
			req, err := p.request(cmd.Context(), c, args)
			if err != nil {
				return err
			}
			stopped, exits, err := c.Down(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "stopped: %s\n", pickedText(stopped))
			if exits {
				// Wait until the daemon process is gone: nothing is left behind.
				deadline := time.Now().Add(15 * time.Second)
				for processAlive(st.PID) && time.Now().Before(deadline) {
					time.Sleep(50 * time.Millisecond)
				}
				fmt.Fprintln(g.out, "the kpf daemon exited")
			}
			refreshHostsFiles(cmd.Context(), g, c.Home)
			return nil
		},
	}
	p.add(cmd)
	return cmd
}

func newRestartCommand(g *globals) *cobra.Command {
	var p pickFlags
	cmd := &cobra.Command{
		Use:     "restart [NAME...] [-f FILE | --all]",
		Short:   "Restart forwards of the daemon: the named ones, a file's, or all",
		Example: "  kpf restart api\n  kpf restart -f shop.yaml\n  kpf restart --all",
		RunE: func(cmd *cobra.Command, args []string) error {
			c := daemon.NewClient(daemon.DefaultHome())
			req, err := p.request(cmd.Context(), c, args)
			if err != nil {
				return err
			}
			restarted, err := c.Restart(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "restarted: %s\n", pickedText(restarted))
			return nil
		},
	}
	p.add(cmd)
	return cmd
}

func newLogsCommand(g *globals) *cobra.Command {
	var follow, httpLog bool
	var file string
	cmd := &cobra.Command{
		Use:     "logs [-f] [NAME] [--file FILE] [--http]",
		Short:   "Show the daemon's log, or the lines of one forward (of one file with --file); --http: its HTTP request log",
		Example: "  kpf logs\n  kpf logs -f api --file shop.yaml\n  kpf logs --http -f api",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if httpLog {
				return httpLogOf(cmd.Context(), g.out, args, file, follow)
			}
			home := daemon.DefaultHome()
			f, err := os.Open(home.Log())
			if errors.Is(err, os.ErrNotExist) {
				return daemon.ErrNotRunning
			}
			if err != nil {
				return err
			}
			defer f.Close()
			var abs string
			if file != "" {
				if abs, err = filepath.Abs(file); err != nil {
					return err
				}
			}
			keep := func(l string) bool {
				if abs != "" && !strings.Contains(l, "(file "+abs+")") && !strings.Contains(l, "file="+abs) {
					return false
				}
				if len(args) == 1 {
					name := args[0]
					return strings.Contains(l, " "+name+": ") || strings.Contains(l, "forward="+name+" ")
				}
				return true
			}
			return copyLines(cmd.Context(), g.out, f, keep, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	cmd.Flags().StringVar(&file, "file", "", "only lines of this file's forwards")
	cmd.Flags().BoolVar(&httpLog, "http", false, "show the forward's HTTP request log (its httpLog: in kpf.yaml)")
	return cmd
}

// httpLogOf prints the HTTP request log of the named forward.
func httpLogOf(ctx context.Context, out io.Writer, args []string, file string, follow bool) error {
	if len(args) != 1 {
		return usagef("kpf logs --http takes the name of a forward")
	}
	abs := ""
	if file != "" {
		var err error
		if abs, err = filepath.Abs(file); err != nil {
			return err
		}
	}
	st, err := daemon.NewClient(daemon.DefaultHome()).Status(ctx, abs)
	if err != nil {
		return err
	}
	var found []api.Forward
	for _, r := range st.Forwards {
		if r.Name == args[0] {
			found = append(found, r)
		}
	}
	switch {
	case len(found) == 0:
		return fmt.Errorf("the daemon runs no forward %q (kpf status lists them)", args[0])
	case len(found) > 1:
		return usagef("forward %q is in %d files: say which with --file", args[0], len(found))
	case found[0].HTTPLog == "" || found[0].HTTPLog == "-":
		return fmt.Errorf("forward %q logs no HTTP requests to a file: add httpLog: FILE to it in %s", args[0], found[0].File)
	}
	f, err := os.Open(found[0].HTTPLog)
	if errors.Is(err, os.ErrNotExist) && follow {
		return fmt.Errorf("%s does not exist yet: no request has been logged", found[0].HTTPLog)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return copyLines(ctx, out, f, func(string) bool { return true }, follow)
}

// printJSON prints v as indented JSON, for scripts.
func printJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func copyLines(ctx context.Context, w io.Writer, f *os.File, keep func(string) bool, follow bool) error {
	r := bufio.NewReader(f)
	var partial string
	for {
		line, err := r.ReadString('\n')
		if err == nil {
			line = partial + line
			partial = ""
			if keep(line) {
				io.WriteString(w, line)
			}
			continue
		}
		partial += line
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
