package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/spf13/cobra"
)

// The daemon as a user service: started at login by the user's service
// manager (a systemd user unit on Linux, a launchd agent on macOS), it
// applies the installed files as the identity the install command was
// given, as kpf up -d would.

// serviceName names the unit and the agent.
const (
	systemdUnit  = "kpf.service"
	launchdLabel = "dev.kpf.daemon"
)

// serviceOptions is kpf daemon install.
type serviceOptions struct {
	g       *globals
	files   []string
	print   bool
	noStart bool
}

// serviceEnv is what the service keeps of the installing command's
// environment: where the kubeconfig and the daemon's home are, and the
// PATH on which exec credential plugins are found. Nothing else (no
// secrets): set what a plugin needs in the unit (systemctl --user edit).
var serviceEnv = []string{"KUBECONFIG", "KPF_HOME", "PATH"}

// credentialFlags names the connection flags of id whose value is a
// credential, which install refuses: --token, and a --proxy-url with a
// password in it. (kpf has no --username or --password: cli-runtime no
// longer registers them.) --client-key and --client-certificate name
// files: the unit holds their paths, not their contents, and is kept.
func credentialFlags(id identity.Identity) []string {
	var out []string
	if _, ok := id.Flags["token"]; ok {
		out = append(out, "--token")
	}
	if u, err := url.Parse(id.Get("proxy-url")); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			out = append(out, "--proxy-url (its password)")
		}
	}
	return out
}

func newServiceCommands(g *globals) []*cobra.Command {
	o := &serviceOptions{g: g}
	install := &cobra.Command{
		Use:   "install [-f FILE...]",
		Short: "Start the daemon at login (systemd user unit, launchd agent), running FILEs as this command's identity",
		Long: `Write a systemd user unit (Linux) or a launchd agent (macOS) that starts the
kpf daemon at login and applies each FILE (kpf.yaml here when none is given)
with the kubectl connection flags given to this command (--kubeconfig,
--context, ...), then enable and start it. A --token is refused: a unit file
is no place for a credential; use a kubeconfig user or an exec plugin.`,
		Example: `  kpf daemon install -f ~/src/shop/kpf.yaml --context staging
  kpf daemon install --print       # show the unit, change nothing`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.install(cmd) },
	}
	install.Flags().StringArrayVarP(&o.files, "file", "f", nil, "a forwards file to run at login (repeatable; default kpf.yaml here)")
	install.Flags().BoolVar(&o.print, "print", false, "print the unit or agent and where it would go; change nothing")
	install.Flags().BoolVar(&o.noStart, "no-start", false, "write the unit or agent but do not enable or start it")
	uninstall := &cobra.Command{
		Use:     "uninstall",
		Short:   "Stop the daemon's user service and remove its unit or agent",
		Example: "  kpf daemon uninstall",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.uninstall() },
	}
	return []*cobra.Command{install, uninstall}
}

// servicePath is where the unit or agent goes on this platform.
func servicePath() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	switch runtime.GOOS {
	case "linux":
		base := os.Getenv("XDG_CONFIG_HOME")
		if base == "" {
			base = filepath.Join(home, ".config")
		}
		return filepath.Join(base, "systemd", "user", systemdUnit), nil
	case "darwin":
		return filepath.Join(home, "Library", "LaunchAgents", launchdLabel+".plist"), nil
	}
	return "", fmt.Errorf("kpf daemon install knows systemd (Linux) and launchd (macOS), not %s: start kpf up -d from your login instead", runtime.GOOS)
}

// daemonArgs is the daemon's command line: the files, and the connection
// flags this command was given.
func (o *serviceOptions) daemonArgs(cmd *cobra.Command) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return nil, err
	}
	files := o.files
	if len(files) == 0 {
		f, err := config.Find("")
		if err != nil {
			return nil, usageError{err}
		}
		files = []string{f}
	}
	args := []string{exe, "daemon"}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		if _, err := config.Load(abs); err != nil {
			return nil, err
		}
		args = append(args, "--apply", abs)
	}
	id, err := o.g.identity(cmd)
	if err != nil {
		return nil, err
	}
	if refused := credentialFlags(id); len(refused) > 0 {
		return nil, usagef("%s: a unit file (and the daemon's command line, which every user of the machine can read) is no place for a credential; put it in a kubeconfig (a user with a token file, a client certificate or an exec plugin; a cluster's proxy-url) and install with --kubeconfig, --context or --user", strings.Join(refused, ", "))
	}
	names := make([]string, 0, len(id.Flags))
	for n := range id.Flags {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for _, v := range id.Flags[n] {
			args = append(args, "--"+n+"="+v)
		}
	}
	return args, nil
}

func serviceEnvironment() []string {
	var out []string
	for _, k := range serviceEnv {
		if v := os.Getenv(k); v != "" {
			if k == "KUBECONFIG" {
				var abs []string
				for _, p := range filepath.SplitList(v) {
					if a, err := filepath.Abs(p); err == nil && p != "" {
						abs = append(abs, a)
					}
				}
				v = strings.Join(abs, string(filepath.ListSeparator))
			}
			out = append(out, k+"="+v)
		}
	}
	return out
}

// systemdUnitText is the user unit.
func systemdUnitText(args, env []string) string {
	var b strings.Builder
	b.WriteString("# Written by kpf daemon install; kpf daemon uninstall removes it.\n")
	b.WriteString("[Unit]\nDescription=kpf daemon: the Kubernetes port forwards of kpf up -d\n")
	b.WriteString("Documentation=https://github.com/kpf-dev/kpf\n\n")
	b.WriteString("[Service]\nType=simple\n")
	for _, e := range env {
		fmt.Fprintf(&b, "Environment=%s\n", systemdQuote(e))
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = systemdQuote(a)
	}
	fmt.Fprintf(&b, "ExecStart=%s\n", strings.Join(quoted, " "))
	b.WriteString("Restart=on-failure\nRestartSec=5s\n\n[Install]\nWantedBy=default.target\n")
	return b.String()
}

// systemdQuote quotes a word for a unit file's command line.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$%;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", "$$", "%", "%%")
	return `"` + r.Replace(s) + `"`
}

// launchdPlist is the launch agent.
func launchdPlist(args, env []string, log string) string {
	esc := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by kpf daemon install; kpf daemon uninstall removes it. -->
<plist version="1.0">
<dict>
  <key>Label</key><string>` + launchdLabel + `</string>
  <key>ProgramArguments</key>
  <array>
`)
	for _, a := range args {
		fmt.Fprintf(&b, "    <string>%s</string>\n", esc.Replace(a))
	}
	b.WriteString("  </array>\n  <key>EnvironmentVariables</key>\n  <dict>\n")
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&b, "    <key>%s</key><string>%s</string>\n", esc.Replace(k), esc.Replace(v))
	}
	fmt.Fprintf(&b, `  </dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>%s</string>
  <key>StandardErrorPath</key><string>%s</string>
</dict>
</plist>
`, esc.Replace(log), esc.Replace(log))
	return b.String()
}

func (o *serviceOptions) install(cmd *cobra.Command) error {
	path, err := servicePath()
	if err != nil {
		return err
	}
	args, err := o.daemonArgs(cmd)
	if err != nil {
		return err
	}
	env := serviceEnvironment()
	var text string
	if runtime.GOOS == "darwin" {
		text = launchdPlist(args, env, daemon.DefaultHome().Log())
	} else {
		text = systemdUnitText(args, env)
	}
	if o.print {
		fmt.Fprintf(o.g.out, "# %s\n%s", path, text)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(o.g.out, "wrote %s\n", path)
	start := serviceCommands(path, "start")
	if o.noStart {
		fmt.Fprintf(o.g.out, "start it with: %s\n", strings.Join(start, "; "))
		return nil
	}
	return o.runAll(start)
}

func (o *serviceOptions) uninstall() error {
	path, err := servicePath()
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no kpf user service is installed (%s does not exist)", path)
	}
	o.runAll(serviceCommands(path, "stop")) // a unit that never started is fine
	if err := os.Remove(path); err != nil {
		return err
	}
	fmt.Fprintf(o.g.out, "removed %s\n", path)
	return nil
}

// serviceCommands are the service manager's commands to start or stop it.
func serviceCommands(path, what string) []string {
	if runtime.GOOS == "darwin" {
		domain := fmt.Sprintf("gui/%d", os.Getuid())
		if what == "start" {
			return []string{"launchctl bootstrap " + domain + " " + path}
		}
		return []string{"launchctl bootout " + domain + "/" + launchdLabel}
	}
	if what == "start" {
		return []string{"systemctl --user daemon-reload", "systemctl --user enable --now " + systemdUnit}
	}
	return []string{"systemctl --user disable --now " + systemdUnit, "systemctl --user daemon-reload"}
}

// runAll runs the commands, saying what failed and what to run by hand.
func (o *serviceOptions) runAll(cmds []string) error {
	for _, c := range cmds {
		f := strings.Fields(c)
		if out, err := exec.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s (is there a user session? run it yourself once there is)", c, err, strings.TrimSpace(string(out)))
		}
		fmt.Fprintf(o.g.out, "ran: %s\n", c)
	}
	return nil
}
