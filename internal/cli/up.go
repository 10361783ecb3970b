package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"log/slog"

	"github.com/kpf-dev/kpf/internal/audit"
	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/httplog"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/metrics"
	"github.com/kpf-dev/kpf/internal/proxy"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// UpOptions is kpf up: every forward of a file, in the foreground.
type UpOptions struct {
	g           *globals
	File        string
	Settings    spec.Settings
	Table       string // auto, always, never
	Detach      bool
	Wait        bool
	WaitTimeout time.Duration
	AuditLog    string
	Metrics     string
	// APIAddr is the TCP address of the API of a daemon -d starts.
	APIAddr string
	All     allFlags

	names []string
	file  *config.File
	id    identity.Identity
	// startDaemon starts the daemon of home (startDaemon; a test's own).
	startDaemon func(home daemon.Home, errOut io.Writer, args ...string) error
}

// fileSettings are the settings kpf up and kpf run take: how every forward
// of the file runs.
var fileSettings = []string{spec.FlagTransport, spec.FlagReconnectWait, spec.FlagPodRunningTimeout, spec.FlagDataPath, spec.FlagPingInterval, spec.FlagUDPRelay, spec.FlagRelayImage, spec.FlagUDPIdleTimeout}

func newUpCommand(g *globals) *cobra.Command {
	o := &UpOptions{g: g, Settings: spec.Defaults(), Table: "auto", startDaemon: startDaemon}
	cmd := &cobra.Command{
		Use:   "up [NAME...] [-f FILE]",
		Short: "Run the forwards of kpf.yaml (or -f FILE), all or the named ones, with a live status table",
		Long: `Run the forwards of a file in the foreground: kpf.yaml in this folder, or -f FILE
(kpf.yaml format, or SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT lines).

On a terminal a live table shows each forward's state, health, pod, connections
and bytes; otherwise each change is a log line. A forward that fails (a busy
port, a missing target) does not stop the others. Ctrl-C stops everything.

With --all, every service of the namespace (-n, or the context's; -l to
pick by label) instead of a file: a forward per service port, named
NAME.NAMESPACE:PORT (a headless service's pods one by one,
POD.SERVICE.NAMESPACE:PORT), added, changed and stopped as the cluster's
services are; --address auto gives each service an address of its own at
its real port, which kpf hosts names. The same as discover: in kpf.yaml.`,
		Example: `  kpf up                              # kpf.yaml here, with a live table
  kpf up api db -f shop.yaml          # two forwards of another file
  kpf up -d --wait --context staging  # in the daemon, as the staging context
  kpf up --all -n shop --address auto -d  # every service of shop, as the cluster has them`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&o.File, "file", "f", "", "forwards file (default kpf.yaml in this folder)")
	o.Settings.AddFlags(cmd.Flags(), fileSettings...)
	cmd.Flags().StringVar(&o.Table, "table", o.Table, "live table: auto (when stdout is a terminal), always or never")
	cmd.Flags().BoolVarP(&o.Detach, "detach", "d", false, "run the forwards in the per-user background daemon (started if needed; a running one is updated: only changed forwards restart)")
	cmd.Flags().BoolVar(&o.Wait, "wait", false, "run in the daemon (implies -d) and return once every forward is ready and healthy (exit 0), or fail with a summary after --timeout")
	cmd.Flags().DurationVar(&o.WaitTimeout, "timeout", 2*time.Minute, "with --wait: how long to wait")
	cmd.Flags().StringVar(&o.AuditLog, "audit-log", "", auditLogUsage)
	cmd.Flags().StringVar(&o.Metrics, "metrics-addr", "", metricsAddrUsage+"; default: the file's metrics: key")
	cmd.Flags().StringVar(&o.APIAddr, "api-addr", "", "with -d: "+apiAddrUsage+" (given to the daemon -d starts; a running daemon keeps its own, and this says so)")
	o.All.AddFlags(cmd.Flags())
	return cmd
}

// Complete loads the file, picks the named forwards and captures who they
// connect as.
func (o *UpOptions) Complete(cmd *cobra.Command, args []string) error {
	var err error
	if o.id, err = o.g.identity(cmd); err != nil {
		return err
	}
	if all, err := o.All.file(cmd, o.File, args, o.id); err != nil {
		return err
	} else if all != "" {
		o.File = all
	}
	if o.file, _, err = loadForwards(o.File, args); err != nil {
		return err
	}
	o.names = args
	if err := o.Settings.Validate(); err != nil {
		return usageError{err}
	}
	switch o.Table {
	case "auto", "always", "never":
	default:
		return usagef("--table %q: want auto, always or never", o.Table)
	}
	if o.Wait {
		// Returning once healthy only makes sense if the forwards go on
		// running: in the daemon.
		o.Detach = true
	}
	if o.APIAddr != "" {
		if !o.Detach {
			return usagef("--api-addr is the daemon's: add -d")
		}
		if _, err := daemon.CheckAPIAddr(o.APIAddr); err != nil {
			return usageError{err}
		}
	}
	if o.Detach && o.AuditLog != "" {
		return usagef("--audit-log with -d: the daemon keeps the audit log of its forwards itself (%s)", daemon.DefaultHome().AuditLog())
	}
	return nil
}

// Run runs the forwards until interrupted, or hands them to the daemon.
func (o *UpOptions) Run(ctx context.Context) error {
	if o.Detach {
		return o.upDetached(ctx)
	}
	if err := o.g.startDebug(ctx); err != nil {
		return err
	}
	log := o.g.logger()
	fws, _ := o.file.Select(o.names)
	auditLog, err := openAudit(o.AuditLog)
	if err != nil {
		return err
	}
	defer auditLog.Close()
	table := o.Table == "always" || (o.Table == "auto" && isTerminal(o.g.out))
	events := &eventLog{}
	clusters := cluster.NewRegistry(clusterOptions(log))
	var warnTo io.Writer = o.g.errOut
	if table {
		warnTo = lineWriter(events.add)
	}
	mo := manager.Options{
		Open:         newOpener(o.file.Path, o.id, clusters, log, warnTo, auditLog),
		OpenProxy:    newProxyOpener(o.id, clusters, log, auditLog),
		OpenDiscover: newDiscoverOpener(o.id, clusters),
		Settings:     o.Settings,
		Log:          log,
		Events: func(e manager.Event) {
			line := fmt.Sprintf("%s %s: %s", e.Time.Format("15:04:05"), e.Forward, e.Message)
			if table {
				events.add(line)
			} else {
				fmt.Fprintln(o.g.out, line)
			}
		},
	}
	m := manager.New(mo)
	addr := o.Metrics
	if addr == "" {
		addr = o.file.Metrics
	}
	if _, err := serveMetrics(ctx, addr, func() []metrics.Forward { return m.Metrics(o.file.Path) }, o.g.errOut); err != nil {
		return err
	}
	m.Start(ctx, fws)
	if table {
		drawLoop(ctx, o.g.out, m, events, o.file.Path)
	} else {
		<-ctx.Done()
	}
	m.Stop()
	if table {
		fmt.Fprint(o.g.out, "\x1b[?25h") // cursor back
	}
	fmt.Fprintln(o.g.out, "stopped")
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// eventLog keeps the last few events for the table.
type eventLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > 8 {
		l.lines = l.lines[len(l.lines)-8:]
	}
}

func (l *eventLog) last() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// drawLoop redraws the status table every half second until ctx ends.
func drawLoop(ctx context.Context, out io.Writer, m *manager.Manager, events *eventLog, path string) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		var b strings.Builder
		b.WriteString("\x1b[?25l\x1b[H\x1b[2J") // hide cursor, home, clear
		fmt.Fprintf(&b, "kpf up: %s (Ctrl-C stops)\n\n", path)
		writeTable(&b, daemon.ForwardsOf(m.Snapshot()), false)
		b.WriteString("\nRecent events:\n")
		for _, l := range events.last() {
			b.WriteString("  " + l + "\n")
		}
		io.WriteString(out, strings.ReplaceAll(b.String(), "\n", "\r\n"))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// writeTable prints rows as the status table (kpf up, kpf status); with
// who, the context and user each forward connects as.
func writeTable(w io.Writer, rows []api.Forward, who bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if who {
		fmt.Fprint(tw, "CONTEXT\tUSER\t")
	}
	// /udp ports add a column, only when a forward has them: peers with a
	// flow now, and datagrams to the peers and to the pod.
	udp := slices.ContainsFunc(rows, func(r api.Forward) bool { return r.Relay != "" })
	udpHead := ""
	if udp {
		udpHead = "UDP PEERS DGRAMS IN/OUT\t"
	}
	fmt.Fprintln(tw, "NAME\tTARGET\tPOD\tLOCAL\tSTATE\tHEALTH\tCONNS\tFAILED\tIN\tOUT\tIN/S\tOUT/S\tRECONNECTS\tSWITCHES\t"+udpHead+"LAST ERROR")
	for _, r := range rows {
		if who {
			fmt.Fprintf(tw, "%s\t%s\t", dash(r.Context), dash(r.User))
		}
		local := "-"
		if len(r.Local) > 0 {
			local = r.Local[0]
			if len(r.Local) > 1 {
				local += fmt.Sprintf(" +%d", len(r.Local)-1)
			}
		}
		target := r.Target
		if r.Namespace != "" {
			target = r.Namespace + "/" + target
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t", r.Name, target, dash(r.Pod), local, r.State, r.Health,
			r.Open, r.Total, r.Failed, bytesText(r.BytesIn), bytesText(r.BytesOut), bytesText(r.RateIn), bytesText(r.RateOut),
			r.Reconnects, r.Switches)
		if udp && r.Relay != "" {
			fmt.Fprintf(tw, "%d %d/%d\t", r.UDPPeers, r.DatagramsIn, r.DatagramsOut)
		} else if udp {
			fmt.Fprint(tw, "-\t")
		}
		fmt.Fprintf(tw, "%s\n", dash(shorten(lastError(r), 60)))
	}
	tw.Flush()
}

// lastError is what the LAST ERROR column says of r: why it is down, or
// else why it is unhealthy (a ready forward whose check fails has no
// error of its own, and the table said "unhealthy" and nothing more), or
// else which address of localhost it listens without.
func lastError(r api.Forward) string {
	if r.LastError == "" && r.Health == manager.HealthUnhealthy {
		return r.HealthNote
	}
	if r.LastError == "" && len(r.NotListening) > 0 {
		// Up, but without an address of localhost: which, and why.
		return strings.Join(r.NotListening, "; ")
	}
	return r.LastError
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shorten cuts s to n runes, the last one an ellipsis (never inside a
// rune: an error may quote anything).
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return strconv.FormatInt(n, 10)
}

// newOpener opens sessions for forwards of a file as id, on the
// connections of clusters (one per context of id, shared by every forward
// and proxy that holds it), and explains errors as kpf forward does.
//
// An error ends with the kpf doctor command for the forward of file.
func newOpener(file string, id identity.Identity, clusters *cluster.Registry, log *slog.Logger, warn io.Writer, auditLog *audit.Log) manager.Opener {
	return func(ctx context.Context, fw config.Forward, spec session.Spec) (*session.Session, error) {
		c, err := clusters.Acquire(id.WithContext(fw.Context))
		if err != nil {
			return nil, explainConnect(err)
		}
		defer c.Release() // the session holds its own
		if spec.Namespace == "" {
			spec.Namespace = c.Namespace()
		}
		deps := sessionDeps(c, io.Discard, warn, log.With("forward", fw.Name))
		if auditLog != nil {
			deps.Audit, deps.Who = auditLog, auditWho(ctx, c)
		}
		if fw.HTTPLog != "" {
			if deps.HTTPLog, err = httplog.Open(fw.HTTPLog, fw.Name, 0); err != nil {
				return nil, err
			}
		}
		s, err := session.Open(ctx, spec, deps)
		if err != nil {
			deps.HTTPLog.Close()
			return nil, withDoctor(ctx, withListenReasons(explainOpen(ctx, err, spec.Namespace, c.Getter(), c.Config())), doctorForFile(file, fw))
		}
		return s, nil
	}
}

// withListenReasons adds to "unable to listen on any of the requested
// ports" why each port could not be bound. kpf forward prints each reason
// as it happens, as kubectl does; a forward of kpf up or the daemon has
// only its status, and --wait's summary said no more than that it could
// not listen (not that another process holds the port, nor the fix).
func withListenReasons(err error) error {
	var le *forward.ListenError
	if !errors.As(err, &le) || len(le.Reasons()) == 0 {
		return err
	}
	why := make([]string, len(le.Reasons()))
	for i, r := range le.Reasons() {
		why[i] = strings.ReplaceAll(r.Error(), "\n", "; ")
	}
	return fmt.Errorf("%w: %s", err, strings.Join(why, "; "))
}

// newProxyOpener opens the proxies of a file, connecting as id on the
// connections of clusters; a proxy holds its connection until ctx ends.
func newProxyOpener(id identity.Identity, clusters *cluster.Registry, log *slog.Logger, auditLog *audit.Log) manager.ProxyOpener {
	return func(ctx context.Context, fw config.Forward, s spec.Settings) (*proxy.Proxy, net.Listener, error) {
		c, err := clusters.Acquire(id.WithContext(fw.Context))
		if err != nil {
			return nil, nil, explainConnect(err)
		}
		ln, err := net.Listen("tcp", fw.Proxy.Listen)
		if err != nil {
			c.Release()
			return nil, nil, fmt.Errorf("listen: %w", err)
		}
		context.AfterFunc(ctx, c.Release)
		o := proxy.Options{Namespace: fw.Namespace, ClusterDomain: fw.Proxy.ClusterDomain, Direct: fw.Proxy.Direct, Log: log.With("proxy", fw.Name)}
		if auditLog != nil {
			o.Ended = proxyAudit(auditLog, auditWho(ctx, c), fw.Name)
		}
		return newProxy(c, s, o), ln, nil
	}
}

// clusterOptions are how kpf's commands connect to clusters.
func clusterOptions(log *slog.Logger) cluster.Options {
	return cluster.Options{UserAgent: userAgent(), Log: log}
}

// connect makes a connection of its own for a command, as kubectl's flags
// would; the caller releases it. log hears the connection's news (the
// API server gone silent and back), nil for none.
func connect(id identity.Identity, log *slog.Logger) (*cluster.Conn, error) {
	c, err := cluster.Connect(id, clusterOptions(log))
	if err != nil {
		return nil, explainConnect(err)
	}
	return c, nil
}

// explainConnect says what to check when a connection could not be made.
func explainConnect(err error) error {
	if ce := (*cluster.ConfigError)(nil); errors.As(err, &ce) {
		return explainConfig(err)
	}
	return err
}

// sessionDeps are what a session on c needs.
func sessionDeps(c *cluster.Conn, out, errOut io.Writer, log *slog.Logger) session.Deps {
	return session.Deps{
		Cluster: c,
		Objects: target.BuilderGetter{Flags: c.Getter()},
		Out:     out,
		ErrOut:  errOut,
		Log:     log,
	}
}

// describeIdentity names the context, cluster and user of id with a
// forward's context, for the daemon's status.
func describeIdentity(id identity.Identity, context string) (string, string, string) {
	kube, err := id.WithContext(context).Getter()
	if err != nil {
		return context, "", ""
	}
	return identity.Describe(kube)
}

// lineWriter hands each written line to a function.
type lineWriter func(string)

func (w lineWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w(l)
	}
	return len(p), nil
}

// doctorForFile is kpf doctor for a forward of a file, as the user would
// type it in the file's folder or anywhere else.
//
// A forward of a discover entry is not in the file by name, and one
// started without a file (by kpf mcp, through the API) has no file, whose
// "file" is only the daemon's key of it: the doctor of either is that of
// its target.
func doctorForFile(file string, fw config.Forward) string {
	if fw.Owner != "" || !filepath.IsAbs(file) {
		cmd := "kpf doctor"
		if fw.Context != "" {
			cmd += " --context " + shellQuote(fw.Context)
		}
		cmd += " -n " + shellQuote(fw.Namespace) + " " + shellQuote(fw.Target)
		for _, p := range fw.Ports {
			cmd += " " + shellQuote(p.String())
		}
		return cmd
	}
	return "kpf doctor -f " + shellQuote(file) + " " + shellQuote(fw.Name)
}
