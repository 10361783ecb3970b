package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/tunnel"
	"github.com/spf13/cobra"
)

// upDetached is kpf up -d: hand the file to the daemon, starting it if
// needed. A second up -d updates the running daemon.
func (o *UpOptions) upDetached(ctx context.Context) error {
	home := daemon.DefaultHome()
	c := daemon.NewClient(home)
	if !c.Running() {
		if err := o.startDaemon(home); err != nil {
			return err
		}
		deadline := time.Now().Add(15 * time.Second)
		for !c.Running() {
			if time.Now().After(deadline) {
				return fmt.Errorf("the kpf daemon did not answer on %s within 15s; its log is %s", home.Socket(), home.Log())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	abs, err := filepath.Abs(o.file.Path)
	if err != nil {
		return err
	}
	res, err := c.Apply(ctx, daemon.ApplyRequest{File: abs, Names: o.names})
	if err != nil {
		return err
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
		fmt.Fprintln(o.g.out, "kpf status shows how they are doing; kpf down stops them")
		return nil
	}
	st, err := c.Wait(ctx, o.WaitTimeout)
	if err != nil {
		if st2, serr := c.Status(ctx); serr == nil {
			writeTable(o.g.errOut, st2.Forwards)
		}
		return err
	}
	writeTable(o.g.out, st.Forwards)
	return nil
}

// startDaemon runs kpf daemon detached, with its output in the home's log.
func (o *UpOptions) startDaemon(home daemon.Home) error {
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
	args := []string{"daemon"}
	k := o.g.kube
	for flag, v := range map[string]*string{"kubeconfig": k.KubeConfig, "context": k.Context, "cluster": k.ClusterName, "user": k.AuthInfoName,
		"namespace": k.Namespace, "server": k.APIServer, "certificate-authority": k.CAFile} {
		if v != nil && *v != "" {
			args = append(args, "--"+flag, *v)
		}
	}
	if k.Insecure != nil && *k.Insecure {
		args = append(args, "--insecure-skip-tls-verify")
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = os.Environ()
	if k.BearerToken != nil && *k.BearerToken != "" {
		// Not on the command line, where ps would show it.
		cmd.Env = append(cmd.Env, "KPF_DAEMON_TOKEN="+*k.BearerToken)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the kpf daemon: %w", err)
	}
	fmt.Fprintf(o.g.errOut, "started the kpf daemon (pid %d; log %s)\n", cmd.Process.Pid, home.Log())
	return cmd.Process.Release()
}

func newDaemonCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "daemon",
		Short:  "Run the background daemon (kpf up -d starts it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t := os.Getenv("KPF_DAEMON_TOKEN"); t != "" {
				g.kube.BearerToken = &t
				os.Unsetenv("KPF_DAEMON_TOKEN")
			}
			log := g.logger()
			m := manager.New(manager.Options{
				Open:          newOpener(g, log, g.errOut),
				Transport:     tunnel.Auto,
				ReconnectWait: 30 * time.Second,
				Log:           log,
				Events: func(e manager.Event) {
					fmt.Fprintf(g.out, "%s %s: %s\n", e.Time.Format(time.RFC3339), e.Forward, e.Message)
				},
			})
			s := &daemon.Server{Manager: m, Home: daemon.DefaultHome(), Log: log}
			return s.Serve(cmd.Context())
		},
	}
}

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's forwards: state, health, pod, connections, bytes, reconnects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := daemon.NewClient(daemon.DefaultHome()).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(g.out)
				e.SetIndent("", "  ")
				return e.Encode(st)
			}
			fmt.Fprintf(g.out, "kpf daemon pid %d, up %s, file %s\n\n", st.PID, time.Since(st.Started).Round(time.Second), st.File)
			writeTable(g.out, st.Forwards)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, fmt.Sprintf("print JSON (schemaVersion %d)", daemon.SchemaVersion))
	return cmd
}

func newDownCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "down [NAME...]",
		Short: "Stop the named forwards of the daemon, or all; the daemon exits when none is left",
		RunE: func(cmd *cobra.Command, args []string) error {
			c := daemon.NewClient(daemon.DefaultHome())
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			stopped, exits, err := c.Down(cmd.Context(), args)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "stopped: %s\n", strings.Join(stopped, ", "))
			if exits {
				// Wait until the daemon process is gone: nothing is left behind.
				deadline := time.Now().Add(15 * time.Second)
				for syscall.Kill(st.PID, 0) == nil && time.Now().Before(deadline) && !isZombie(st.PID) {
					time.Sleep(50 * time.Millisecond)
				}
				fmt.Fprintln(g.out, "the kpf daemon exited")
			}
			return nil
		},
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func newRestartCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restart [NAME...]",
		Short: "Restart the named forwards of the daemon, or all",
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := daemon.NewClient(daemon.DefaultHome()).Restart(cmd.Context(), args)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "restarted: %s\n", strings.Join(names, ", "))
			return nil
		},
	}
}

func newLogsCommand(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-f] [NAME]",
		Short: "Show the daemon's log, or the lines of one forward",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			home := daemon.DefaultHome()
			f, err := os.Open(home.Log())
			if errors.Is(err, os.ErrNotExist) {
				return daemon.ErrNotRunning
			}
			if err != nil {
				return err
			}
			defer f.Close()
			keep := func(string) bool { return true }
			if len(args) == 1 {
				name := args[0]
				keep = func(l string) bool {
					return strings.Contains(l, " "+name+": ") || strings.Contains(l, "forward="+name+" ")
				}
			}
			return copyLines(cmd.Context(), g.out, f, keep, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	return cmd
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
