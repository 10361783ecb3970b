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
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/ui"
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
	restarted := false
	for try := 1; ; try++ {
		started, err := o.ensureDaemon(c, home, metricsAddr)
		if err != nil {
			return err
		}
		restarted = restarted || started
		res, err = c.Apply(ctx, api.ApplyRequest{File: abs, Names: o.names, Identity: o.id, Settings: o.Settings})
		if !errors.Is(err, daemon.ErrNotRunning) || try == 3 {
			break
		}
	}
	if err != nil {
		return err
	}
	if restarted {
		// A daemon started now restores what one killed before it ran.
		if st, err := c.Status(ctx, ""); err == nil {
			writeRestored(o.g.errOut, st.Restored)
		}
	}
	if o.APIAddr != "" {
		// Like --metrics-addr, --api-addr is the daemon's: one that runs
		// already keeps its own, and says so.
		if st, err := c.Status(ctx, abs); err == nil {
			if note := apiAddrNote(o.APIAddr, st.API); note != "" {
				fmt.Fprintln(o.g.errOut, note)
			}
		}
	}
	if metricsAddr != "" {
		// The same for --metrics-addr (or the file's metrics: key).
		if st, err := c.Status(ctx, abs); err == nil {
			if note := metricsAddrNote(metricsAddr, st.Metrics); note != "" {
				fmt.Fprintln(o.g.errOut, note)
			}
		}
	}
	failed := func(n string) bool {
		return slices.ContainsFunc(res.Failed, func(f api.Failure) bool { return f.Name == n })
	}
	for _, part := range []struct {
		what  string
		names []string
	}{{"started", slices.DeleteFunc(res.Started, failed)}, {"restarted", slices.DeleteFunc(res.Restarted, failed)}, {"unchanged", res.Unchanged}, {"stopped", res.Stopped}} {
		if len(part.names) > 0 {
			fmt.Fprintf(o.g.out, "%s: %s\n", part.what, strings.Join(part.names, ", "))
		}
	}
	for _, f := range res.Failed {
		fmt.Fprintf(o.g.errOut, "failed: %s: %s\n", f.Name, f.Error)
	}
	if !o.Wait {
		refreshHostsFiles(ctx, o.g, home)
		if len(res.Failed) > 0 {
			// Known as it was applied: no success to report.
			return fmt.Errorf("%d of the file's forwards failed as they were applied; the daemon retries them (kpf status shows them, kpf down stops them)", len(res.Failed))
		}
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
func (o *UpOptions) ensureDaemon(c *daemon.Client, home daemon.Home, metricsAddr string) (bool, error) {
	var args []string
	if metricsAddr != "" {
		args = append(args, "--metrics-addr", metricsAddr)
	}
	if o.APIAddr != "" {
		args = append(args, "--api-addr", o.APIAddr)
	}
	return ensureDaemon(c, home, o.g.errOut, o.startDaemon, args...)
}

// ensureDaemon starts the daemon of home with start unless one answers,
// and waits until it does; started says it was started.
func ensureDaemon(c *daemon.Client, home daemon.Home, errOut io.Writer, start func(daemon.Home, io.Writer, ...string) error, args ...string) (started bool, err error) {
	if c.Running() {
		return false, nil
	}
	if err := start(home, errOut, args...); err != nil {
		return false, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for !c.Running() {
		if time.Now().After(deadline) {
			return true, fmt.Errorf("the kpf daemon did not answer on %s within 15s; its log is %s", home.Socket(), home.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true, nil
}

// apiAddrNote says, when kpf up -d --api-addr want found a daemon that
// serves its API elsewhere (at serving, "" for nowhere), that want was not
// applied and how to apply it; "" when the daemon serves want.
func apiAddrNote(want, serving string) string {
	ap, err := daemon.CheckAPIAddr(want)
	if err != nil {
		return ""
	}
	if got, err := netip.ParseAddrPort(serving); err == nil && got.Addr() == ap.Addr() && (ap.Port() == 0 || got.Port() == ap.Port()) {
		return ""
	}
	running := "without an API address"
	if serving != "" {
		running = "with its API on " + serving
	}
	return fmt.Sprintf("note: --api-addr %s is not applied: the kpf daemon was running already, %s; a daemon takes --api-addr when it starts (restart it: kpf down --all, then kpf up -d --api-addr %s)", want, running, want)
}

// metricsAddrNote says, when kpf up -d --metrics-addr want found a daemon
// that serves its metrics elsewhere (at the URL serving, "" for nowhere),
// that want was not applied and how to apply it; "" when the daemon
// serves want.
func metricsAddrNote(want, serving string) string {
	host, port, err := net.SplitHostPort(want)
	if err != nil {
		return ""
	}
	running := "without metrics"
	if serving != "" {
		running = "with its metrics at " + serving
		if u, err := url.Parse(serving); err == nil {
			if got, err := netip.ParseAddrPort(u.Host); err == nil && (port == "0" || port == strconv.Itoa(int(got.Port()))) {
				a, err := netip.ParseAddr(host)
				switch {
				case host == "" || err == nil && a.IsUnspecified() && got.Addr().IsUnspecified():
					return ""
				case strings.EqualFold(host, "localhost") && got.Addr().IsLoopback():
					return ""
				case err == nil && a.Unmap() == got.Addr().Unmap():
					return ""
				}
			}
		}
	}
	return fmt.Sprintf("note: --metrics-addr %s is not applied: the kpf daemon was running already, %s; a daemon takes --metrics-addr when it starts (restart it: kpf down --all, then kpf up -d --metrics-addr %s)", want, running, want)
}

const apiAddrUsage = "also serve the daemon's API on this loopback TCP address (127.0.0.1:PORT), for tools that cannot open a unix socket; requests need the bearer token the daemon writes to api-token in its home (0600)"

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
	var metricsAddr, apiAddr string
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
			if apiAddr != "" {
				if _, err := daemon.CheckAPIAddr(apiAddr); err != nil {
					return usageError{err}
				}
			}
			log := g.logger()
			// A daemon started after one was killed serves where that one
			// did (what its flags were), unless told otherwise now.
			restoredAPI, restoredMetrics := false, false
			if last, ok := home.LastFlags(); ok && !daemon.NewClient(home).Running() {
				if !cmd.Flags().Changed("api-addr") && last.APIAddr != "" {
					if _, err := daemon.CheckAPIAddr(last.APIAddr); err == nil {
						apiAddr, restoredAPI = last.APIAddr, true
					}
				}
				if !cmd.Flags().Changed("metrics-addr") && last.MetricsAddr != "" {
					metricsAddr, restoredMetrics = last.MetricsAddr, true
				}
				log.Info("the daemon before this one was killed: its flags are restored", "pid", last.PID, "apiAddr", apiAddr, "metricsAddr", metricsAddr)
			}
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
					// What a session warns of (a port bound on one of its
					// addresses only, say) goes to the daemon's log, where
					// kpf logs shows it: the daemon's own stderr is no one's.
					warn := lineWriter(func(line string) { log.Warn(strings.TrimSpace(line)) })
					return newOpener(file, id, clusters, log, warn, auditLog)
				},
				ProxyOpener: func(_ string, id identity.Identity, log *slog.Logger) manager.ProxyOpener {
					return newProxyOpener(id, clusters, log, auditLog)
				},
				DiscoverOpener: func(id identity.Identity) manager.DiscoverOpener {
					return newDiscoverOpener(id, clusters)
				},
				Describe: describeIdentity,
				Events:   g.out,
				Cleanup: func(ctx context.Context, id identity.Identity, fws []config.Forward) error {
					return cleanupRelays(ctx, clusters, id, fws, log)
				},
				Doctor:          daemonDoctor,
				APIAddr:         apiAddr,
				APIAddrRestored: restoredAPI,
			}
			if err := g.startDebug(cmd.Context()); err != nil {
				return err
			}
			at, err := serveMetrics(cmd.Context(), metricsAddr, s.Metrics, g.errOut)
			if err != nil && restoredMetrics {
				log.Warn("the metrics address of the daemon before this one (which was killed) is not served: restart the daemon with --metrics-addr to serve one", "err", err)
				s.Warnings = append(s.Warnings, fmt.Sprintf("the metrics address %s of the daemon before this one (which was killed) is not served: %v (once the address is free: kpf down --all, then kpf up -d --metrics-addr %s)", metricsAddr, err, metricsAddr))
				s.MetricsAddr = metricsAddr // recorded still: the next restore tries it again
				at, err = nil, nil
			}
			if err != nil {
				return err
			}
			if at != nil {
				s.MetricsURL = "http://" + at.String() + "/metrics"
				s.MetricsAddr = at.String()
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
	cmd.Flags().StringVar(&apiAddr, "api-addr", "", apiAddrUsage)
	cmd.Flags().StringVar(&auditPath, "audit-log", auditPath, "the daemon's audit log: a JSON line per connection and per forward start, stop and pod switch (0600, rotated at 10 MB); \"\" for none")
	cmd.AddCommand(newServiceCommands(g)...)
	return cmd
}

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON, watch bool
	var save string
	var force bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's forwards: file, user, state, health, pod, connections, bytes and rates, reconnects",
		Long: `Show the daemon's forwards: for each, its file, who it connects as, state,
health, pod, local addresses, connections (open/total, failed), bytes each
way (counted as they move) and bytes per second over the last second,
reconnects and pod switches. --watch redraws every second and at each change
(a state, health or pod change, a forward added or stopped), from the
daemon's event stream, until Ctrl-C. --save FILE writes the forwards as a
kpf.yaml that kpf up -f FILE runs (w in kpf ui); it refuses a FILE that
exists unless --force.`,
		Example: "  kpf status\n  kpf status --watch\n  kpf status --json | jq '.forwards[] | select(.state != \"ready\")'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if save != "" && !force {
				if _, err := os.Lstat(save); err == nil {
					return errSaveExists(save)
				}
			}
			home := daemon.DefaultHome()
			c := daemon.NewClient(home)
			ctx := cmd.Context()
			term := isTerminal(g.out)
			if err := restartKilledDaemon(c, home, g.errOut); err != nil {
				return err
			}
			draw := func(st *api.Status) error {
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
				} else if watch {
					b.WriteString("\n")
				}
				io.WriteString(g.out, b.String())
				return nil
			}
			st, err := c.Status(ctx, "")
			if err != nil {
				return err
			}
			if save != "" {
				b, err := ui.SetFile(save, st.Forwards)
				if err != nil {
					return err
				}
				if err := ui.WriteSet(save, b, force); err != nil {
					if errors.Is(err, ui.ErrExists) {
						return errSaveExists(save)
					}
					return err
				}
				fmt.Fprintf(g.out, "wrote %s: kpf up -f %s runs it\n", save, save)
				return nil
			}
			if err := draw(st); err != nil || !watch {
				return err
			}
			// The daemon's event stream: its counters once a second, and
			// each change as it happens.
			err = c.Events(ctx, true, func(e api.Event) error {
				if e.Status != nil {
					return draw(e.Status)
				}
				st, err := c.Status(ctx, "")
				if err != nil {
					return err
				}
				return draw(st)
			})
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return errors.New("the kpf daemon exited")
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, fmt.Sprintf("print JSON (schemaVersion %d)", api.SchemaVersion))
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "redraw every second until interrupted")
	cmd.Flags().StringVar(&save, "save", "", "write the forwards to this file as a kpf.yaml (that kpf up -f runs) instead of showing them; an existing file is refused without --force")
	cmd.Flags().BoolVar(&force, "force", false, "with --save: replace the file if it exists")
	return cmd
}

// restartKilledDaemon starts the daemon when none answers but one
// stopped without kpf down (it was killed, or crashed): the new one
// restores the files it ran. Otherwise it does nothing.
func restartKilledDaemon(c *daemon.Client, home daemon.Home, errOut io.Writer) error {
	if c.Running() {
		return nil
	}
	files := home.Recorded()
	if len(files) == 0 {
		return nil
	}
	fmt.Fprintf(errOut, "the kpf daemon stopped without kpf down while it ran %s: starting it again to restore them\n", strings.Join(files, ", "))
	_, err := ensureDaemon(c, home, errOut, startDaemon)
	return err
}

// writeRestored says what a daemon did, as it started, with the files a
// daemon before it ran and did not stop.
func writeRestored(w io.Writer, rs []api.Restore) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(w, "the daemon before this one (pid %d) stopped without kpf down; its files:\n", rs[0].PreviousPID)
	for _, r := range rs {
		switch {
		case !r.Restored:
			fmt.Fprintf(w, "  %s: %s\n", r.File, r.Note)
		case r.Note != "":
			fmt.Fprintf(w, "  %s: restored (%s); %s\n", r.File, strings.Join(r.Forwards, ", "), r.Note)
		default:
			fmt.Fprintf(w, "  %s: restored (%s)\n", r.File, strings.Join(r.Forwards, ", "))
		}
	}
}

// writeStatus writes the daemon's status as kpf status shows it.
func writeStatus(w io.Writer, st *api.Status) {
	fmt.Fprintf(w, "kpf daemon pid %d, up %s, %d file(s)\n", st.PID, time.Since(st.Started).Round(time.Second), len(st.Files))
	writeRestored(w, st.Restored)
	for _, warning := range st.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
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
	// Forwards started without a file (by kpf mcp, or a program through
	// the API), by origin.
	var origins []string
	for _, r := range st.Forwards {
		if r.File == "" && r.Origin != "" && !slices.Contains(origins, r.Origin) {
			origins = append(origins, r.Origin)
		}
	}
	for _, o := range origins {
		var rows []api.Forward
		for _, r := range st.Forwards {
			if r.File == "" && r.Origin == o {
				rows = append(rows, r)
			}
		}
		fmt.Fprintf(w, "\n(%s, no file)\n", o)
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
		from := p.File
		if !filepath.IsAbs(from) {
			from = "no file" // a forward started without one (kpf mcp, the API)
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", strings.Join(p.Names, ", "), from))
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
			if errors.Is(err, daemon.ErrNotRunning) {
				return forgetRecorded(g.out, c.Home, p, err)
			}
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

// forgetRecorded is kpf down when no daemon runs: the files a killed
// daemon ran (which the next one would restore) are forgotten, all of
// them or the one of -f; notRunning is the error when there are none.
func forgetRecorded(out io.Writer, home daemon.Home, p pickFlags, notRunning error) error {
	file := ""
	if p.file != "" {
		abs, err := filepath.Abs(p.file)
		if err != nil {
			return err
		}
		file = abs
	} else if !p.all {
		return notRunning
	}
	forgot, err := home.Forget(file)
	if err != nil {
		return err
	}
	if len(forgot) == 0 {
		return notRunning
	}
	them := "it"
	if len(forgot) > 1 {
		them = "them"
	}
	fmt.Fprintf(out, "no kpf daemon is running; forgot %s, which the daemon that was killed ran (the next daemon would have restored %s)\n", strings.Join(forgot, ", "), them)
	return nil
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
			var abs, name string
			if file != "" {
				var err error
				if abs, err = filepath.Abs(file); err != nil {
					return err
				}
			}
			if len(args) == 1 {
				name = args[0]
			}
			// Through the daemon's API; a daemon that is gone leaves its
			// log, read here (why did it stop?).
			err := logsOf(cmd.Context(), g.out, daemon.NewClient(home), "/v1/logs?"+url.Values{"file": {abs}, "name": {name}}.Encode(), follow)
			if !errors.Is(err, daemon.ErrNotRunning) {
				return err
			}
			f, err := os.Open(home.Log())
			if errors.Is(err, os.ErrNotExist) {
				return daemon.ErrNotRunning
			}
			if err != nil {
				return err
			}
			defer f.Close()
			keep := func(l string) bool { return daemon.KeepLine(strings.TrimRight(l, "\n"), abs, name) }
			return copyLines(cmd.Context(), g.out, f, keep, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	cmd.Flags().StringVar(&file, "file", "", "only lines of this file's forwards")
	cmd.Flags().BoolVar(&httpLog, "http", false, "show the forward's HTTP request log (its httpLog: in kpf.yaml)")
	return cmd
}

// httpLogOf prints the HTTP request log of the named forward, through the
// daemon's API.
func httpLogOf(ctx context.Context, out io.Writer, args []string, file string, follow bool) error {
	if len(args) != 1 {
		return usagef("kpf logs --http takes the name of a forward")
	}
	q := url.Values{"lines": {"10000"}}
	if file != "" {
		abs, err := filepath.Abs(file)
		if err != nil {
			return err
		}
		q.Set("file", abs)
	}
	return logsOf(ctx, out, daemon.NewClient(daemon.DefaultHome()), "/v1/forwards/"+url.PathEscape(args[0])+"/httplog?"+q.Encode(), follow)
}

// logsOf prints a log of the daemon's API (the last lines; with follow,
// then each new one until ctx ends).
func logsOf(ctx context.Context, out io.Writer, c *daemon.Client, path string, follow bool) error {
	if !strings.Contains(path, "lines=") {
		path += "&lines=10000"
	}
	if follow {
		return c.FollowLog(ctx, path+"&follow=1", out)
	}
	var l api.LogLines
	if err := c.Get(ctx, path, &l); err != nil {
		return err
	}
	for _, line := range l.Lines {
		fmt.Fprintln(out, line)
	}
	return nil
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

// errSaveExists is kpf status --save refusing to replace a file.
func errSaveExists(path string) error {
	return fmt.Errorf("--save %s: the file exists: name a new file, or add --force to replace it", path)
}
