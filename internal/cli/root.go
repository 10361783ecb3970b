// Package cli holds kpf's commands: each is an options struct with
// AddFlags, Complete, Validate and Run over the packages that do the work.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"github.com/kpf-dev/kpf/internal/follow"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
)

// Exit codes, documented in the README.
const (
	ExitOK         = 0 // stopped by a signal
	ExitError      = 1 // any failure not listed below
	ExitUsage      = 2 // bad arguments or flags
	ExitTargetGone = 3 // the pod went away and --no-reconnect was given
	ExitRetries    = 4 // --max-retries reconnects failed in a row
	ExitTimeout    = 5 // --timeout ran out
	ExitIdle       = 6 // --idle-timeout ran out
)

// usageError marks mistakes in how kpf was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// globals are the flags every command shares.
type globals struct {
	kube      *identity.Flags
	verbosity int
	debugAddr string
	out       io.Writer
	errOut    io.Writer

	logOnce sync.Once
	log     *slog.Logger
}

// logger returns kpf's logger, made once (it sets client-go's global
// logger, which a second call would set again under running watches: a
// data race). client-go's own logging (klog) is routed to it at -v 2 and
// above, and silenced below: kpf says what failed itself.
func (g *globals) logger() *slog.Logger {
	g.logOnce.Do(func() { g.log = g.newLogger() })
	return g.log
}

func (g *globals) newLogger() *slog.Logger {
	level := slog.LevelInfo
	if g.verbosity > 0 {
		level = slog.LevelDebug
	}
	l := slog.New(g.handler(level))
	if g.verbosity >= 2 {
		// client-go's request tracing starts at klog -v 6; it masks
		// Authorization headers itself.
		fs := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
		fs.Set("v", strconv.Itoa(g.verbosity))
		klog.SetSlogLogger(l)
	} else {
		klog.SetLogger(logr.Discard())
	}
	return l
}

func (g *globals) handler(level slog.Level) slog.Handler {
	return (slog.NewTextHandler(g.errOut, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 && g.verbosity == 0 {
				return slog.Attr{} // timestamps only when asked for detail
			}
			return a
		},
	}))
}

// NewRoot builds the command tree.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	// An image tag holds letters, digits, '_', '.' and '-' (a pseudo-version's
	// '+dirty' does not).
	spec.DefaultRelayImage = "ghcr.io/kpf-dev/kpf:" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, version())
	g := &globals{kube: identity.NewFlags(), out: out, errOut: errOut}
	root := &cobra.Command{
		Use:   "kpf",
		Short: "Kubernetes port forwarding that does not fall over",
		Long: `Kubernetes port forwarding that does not fall over: kubectl port-forward's
syntax and flags (kpf TYPE/NAME [LOCAL_PORT:]REMOTE_PORT... is kpf forward),
forwards that follow their pods, and many forwards from one file.`,
		Example: `  kpf svc/api 8080:80                 # as kubectl port-forward svc/api 8080:80
  kpf up -d --wait                    # every forward of kpf.yaml, in the background
  kpf status`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.SetOut(out)
	root.SetErr(errOut)
	g.kube.AddFlags(root.PersistentFlags())
	root.PersistentFlags().IntVarP(&g.verbosity, "v", "v", 0, "log detail: 0 errors and state changes, 1 and up every connection (never prints tokens, keys or passwords)")
	root.PersistentFlags().StringVar(&g.debugAddr, "debug-addr", "", "serve Go's /debug/pprof on this loopback address (for profiles and leak checks)")
	root.PersistentFlags().MarkHidden("debug-addr")
	root.AddCommand(newForwardCommand(g), newUpCommand(g), newRunCommand(g), newConfigCommand(g),
		newStatusCommand(g), newDownCommand(g), newRestartCommand(g), newLogsCommand(g), newDaemonCommand(g),
		newDoctorCommand(g), newRBACCommand(g), newProxyCommand(g), newHostsCommand(g), newRelayCommand(g), newExposeCommand(g), newVersionCommand(g), newOptionsCommand(g), newMCPCommand(g), newUICommand(g))
	root.SetVersionTemplate("kpf {{.Version}}\n")
	g.registerCompletions(root)
	g.setHelp(root)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	return root
}

// identity is who cmd connects as: its connection flags, with this
// process's environment and folder.
func (g *globals) identity(cmd *cobra.Command) (identity.Identity, error) {
	dir, err := os.Getwd()
	if err != nil {
		return identity.Identity{}, err
	}
	return g.kube.Capture(cmd.Flags(), os.Environ(), dir), nil
}

// Run executes kpf with args and returns the exit code.
func Run(ctx context.Context, args []string, out, errOut io.Writer) int {
	return RunAs(ctx, "kpf", args, out, errOut)
}

// PluginName is kpf's name as a kubectl plugin: the same binary, named
// kubectl-pf on the PATH, answers kubectl pf.
const PluginName = "kubectl-pf"

// RunAs is Run for a binary of the given name: as kubectl-pf, help and
// errors name "kubectl pf".
func RunAs(ctx context.Context, name string, args []string, out, errOut io.Writer) int {
	root := NewRoot(out, errOut)
	if strings.TrimSuffix(name, ".exe") == PluginName {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl pf"}
	}
	args = dropIn(root, args)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if !errors.As(err, new(exitError)) {
		fmt.Fprintf(errOut, "error: %v\n", err)
	}
	var ue usageError
	var ee exitError
	switch {
	case errors.As(err, &ee):
		return ee.code // the command of kpf run said what it had to
	case errors.As(err, &ue):
		fmt.Fprintf(errOut, "See '%s -h' for help and examples.\n", commandPath(root, args))
		return ExitUsage
	case errors.Is(err, follow.ErrTargetGone):
		return ExitTargetGone
	case errors.Is(err, follow.ErrRetriesExhausted):
		return ExitRetries
	case errors.Is(err, errTimeout):
		return ExitTimeout
	case errors.Is(err, forward.ErrIdle):
		return ExitIdle
	}
	return ExitError
}

func commandPath(root *cobra.Command, args []string) string {
	if c, _, err := root.Find(args); err == nil {
		return c.CommandPath()
	}
	return root.Name()
}

// startDebug serves net/http/pprof on a loopback address, if asked to.
func (g *globals) startDebug(ctx context.Context) error {
	if g.debugAddr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(g.debugAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return usagef("--debug-addr %q: want a loopback address and port, like 127.0.0.1:6060", g.debugAddr)
	}
	ln, err := net.Listen("tcp", g.debugAddr)
	if err != nil {
		return fmt.Errorf("--debug-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace) // scheduling: go tool trace
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	go func() { <-ctx.Done(); srv.Close() }()
	fmt.Fprintf(g.errOut, "Debug server on http://%s/debug/pprof/\n", ln.Addr())
	return nil
}
