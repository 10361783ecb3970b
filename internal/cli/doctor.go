package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/doctor"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
)

const doctorExample = `  # Check everything between you and port 8080 of the service's pod
  kpf doctor svc/api 8080

  # Every port the pod declares
  kpf doctor pod/web-0

  # The forwards of kpf.yaml (or some of them), as JSON for a script
  kpf doctor -f kpf.yaml db --json`

// DoctorOptions is kpf doctor.
type DoctorOptions struct {
	g *globals

	File        string
	Addresses   []string
	Settings    spec.Settings
	JSON        bool
	StepTimeout time.Duration

	forwards []config.Forward
	id       identity.Identity
}

func newDoctorCommand(g *globals) *cobra.Command {
	o := &DoctorOptions{g: g, Addresses: []string{"localhost"}, Settings: spec.Defaults(), StepTimeout: 5 * time.Second}
	cmd := &cobra.Command{
		Use:   "doctor (TYPE/NAME [PORT...] | -f FILE [NAME...])",
		Short: "Diagnose a forward: kubeconfig, API server, RBAC, pod, ports, local side, transports",
		Long: `Check, in order, everything a forward needs, and say for each failure how
to fix it:

  1. the kubeconfig: file, context, cluster, user, namespace, exec plugin
  2. the API server answers (through your proxy, if any), and its version
  3. who the API server says you are
  4. RBAC: what kpf needs in the namespace (kpf rbac prints it as a Role)
  5. the target and the pod kpf would pick: its state, restarts and events
  6. each port: the service's mapping, a container declaring it, and a
     test connection through a real tunnel
  7. the local ports are free (or who holds them), the address is loopback
  8. WebSocket and SPDY each open a tunnel; which one auto uses

Without PORTs, every port the target declares is checked. kpf doctor
changes nothing in the cluster. It exits 0 when no check fails, 1
otherwise; warnings (!) do not fail.`,
		Example:               doctorExample,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.File, "file", "f", "", "check the forwards of this kpf.yaml (all, or the NAMEs given)")
	f.StringSliceVar(&o.Addresses, "address", o.Addresses, "local addresses the forward would listen on (as kpf forward's --address)")
	o.Settings.AddFlags(f, spec.FlagTransport, spec.FlagDataPath)
	f.BoolVar(&o.JSON, "json", false, "print the checks as JSON")
	f.DurationVar(&o.StepTimeout, "step-timeout", o.StepTimeout, "how long each step may wait for the cluster")
	return cmd
}

// Complete reads the target and ports, or the file.
func (o *DoctorOptions) Complete(cmd *cobra.Command, args []string) error {
	var err error
	if o.id, err = o.g.identity(cmd); err != nil {
		return err
	}
	if err := o.Settings.Validate(); err != nil {
		return usageError{err}
	}
	if o.StepTimeout <= 0 {
		return usagef("--step-timeout %s: want a duration above 0, such as 5s", o.StepTimeout)
	}
	if o.File != "" {
		_, o.forwards, err = loadForwards(o.File, args)
		// A proxy has no target of its own to check, nor has a discover
		// entry: its forwards are checked by target (kpf doctor -n NS
		// svc/NAME PORT, as their errors say).
		o.forwards = slices.DeleteFunc(o.forwards, func(fw config.Forward) bool { return fw.Proxy != nil || fw.Discover != nil })
		if err == nil && len(o.forwards) == 0 {
			return usagef("%s has no forwards to check (kpf doctor checks forwards, not proxies or discover: entries; check a discovered one with kpf doctor -n NAMESPACE svc/NAME PORT)", o.File)
		}
		return err
	}
	if len(args) < 1 {
		return usagef("kpf doctor needs TYPE/NAME (and optional ports), or -f FILE")
	}
	var ports []portspec.Port
	if len(args) > 1 {
		if ports, err = portspec.ParsePorts(args[1:]); err != nil {
			return usageError{err}
		}
	}
	if _, err := portspec.ParseAddresses(o.Addresses); err != nil {
		return usageError{err}
	}
	o.forwards = []config.Forward{{Target: args[0], Ports: ports, Addresses: o.Addresses}}
	return nil
}

// Run runs the checks of each forward, the cluster's once per context.
func (o *DoctorOptions) Run(ctx context.Context) error {
	var checks []doctor.Check
	report := func(c doctor.Check) {
		checks = append(checks, c)
		if !o.JSON {
			printCheck(o.g.out, c, len(o.forwards) > 1 || o.File != "")
		}
	}
	failed := false
	byContext := map[string][]config.Forward{}
	var contexts []string
	for _, fw := range o.forwards {
		if _, ok := byContext[fw.Context]; !ok {
			contexts = append(contexts, fw.Context)
		}
		byContext[fw.Context] = append(byContext[fw.Context], fw)
	}
	for _, name := range contexts {
		d, done := o.doctor(o.id.WithContext(name), report)
		d.CheckCluster(ctx)
		for _, fw := range byContext[name] {
			if fw.Namespace == "" {
				fw.Namespace = o.namespace(d)
			}
			if len(fw.Ports) == 0 && d.Reachable() {
				fw.Ports = declaredPorts(ctx, d, fw)
			}
			d.CheckForward(ctx, fw, o.Settings)
		}
		done()
		failed = failed || d.Failed()
	}
	if o.JSON {
		enc := json.NewEncoder(o.g.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"ok": !failed, "checks": checks}); err != nil {
			return err
		}
	}
	if failed {
		return exitError{ExitError}
	}
	return nil
}

// doctor connects as id; a kubeconfig that does not load is the first
// step's finding, not an error. done releases the connection.
func (o *DoctorOptions) doctor(id identity.Identity, report func(doctor.Check)) (d *doctor.Doctor, done func()) {
	d = &doctor.Doctor{StepTimeout: o.StepTimeout, ConnectWait: time.Second, Report: report}
	d.PATH = id.Getenv("PATH") // where its exec plugins are looked for
	flags, err := id.Getter()
	if err != nil {
		d.ConfigErr = err
		return d, func() {}
	}
	d.Flags = flags // for the kubeconfig step, even if it does not load
	c, err := cluster.Connect(id, clusterOptions(nil))
	if err != nil {
		d.ConfigErr = err
		return d, func() {}
	}
	flags, cfg := c.Flags(), c.Config()
	d.Flags, d.Config, d.Client = flags, cfg, c.Client()
	d.Objects = target.BuilderGetter{Flags: flags}
	d.Explain = func(err error) string {
		if e := explainNetwork(err, cfg); e != nil {
			return e.Error()
		}
		return err.Error()
	}
	d.ExplainTarget = func(err error, namespace string) string {
		return explain(context.Background(), err, namespace, flags, cfg).Error()
	}
	return d, c.Release
}

func (o *DoctorOptions) namespace(d *doctor.Doctor) string {
	if d.Flags == nil {
		return "default"
	}
	ns, _, err := d.Flags.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}

// declaredPorts are the ports a target declares, when none were given: a
// service's ports, or the TCP container ports of its pod.
func declaredPorts(ctx context.Context, d *doctor.Doctor, fw config.Forward) []portspec.Port {
	if rbac.IsDestination(fw.Target) {
		return nil // a host has no declared ports
	}
	ctx, cancel := context.WithTimeout(ctx, d.StepTimeout)
	defer cancel()
	obj, err := d.Objects.Get(ctx, fw.Namespace, fw.Target)
	if err != nil {
		return nil
	}
	var out []portspec.Port
	add := func(n int32) {
		out = append(out, portspec.Port{Local: uint16(n), Remote: strconv.Itoa(int(n))})
	}
	if svc, ok := obj.(*corev1.Service); ok {
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol == "" || sp.Protocol == corev1.ProtocolTCP {
				add(sp.Port)
			}
		}
		return out
	}
	if ps := target.PodSpec(obj); ps != nil {
		for _, c := range ps.Containers {
			for _, cp := range c.Ports {
				if cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP {
					add(cp.ContainerPort)
				}
			}
		}
	}
	return out
}

// printCheck writes a check as one line, with its details and fix below.
func printCheck(w io.Writer, c doctor.Check, named bool) {
	mark := map[doctor.Status]string{doctor.OK: "✓", doctor.Fail: "✗", doctor.Warn: "!", doctor.Skip: "-"}[c.Status]
	who := ""
	if named && c.Forward != "" {
		who = c.Forward + ": "
	}
	fmt.Fprintf(w, "%s %-11s %s%s\n", mark, c.Step, who, c.Summary)
	for _, d := range c.Details {
		fmt.Fprintf(w, "  %-11s %s\n", "", d)
	}
	if c.Fix != "" {
		fmt.Fprintf(w, "  %-11s fix: %s\n", "", strings.TrimSpace(c.Fix))
	}
}

// withDoctor ends err with the kpf doctor command that diagnoses it, on
// the same line (kpf up's table and the daemon's status show one line).
func withDoctor(ctx context.Context, err error, cmd string) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	return doctorHint{err, cmd}
}

type doctorHint struct {
	err error
	cmd string
}

func (e doctorHint) Error() string { return e.err.Error() + " (diagnose: " + e.cmd + ")" }
func (e doctorHint) Unwrap() error { return e.err }

// doctorCommand is kpf doctor for what cmd was given: its arguments and
// the flags that choose the cluster, namespace, transport and addresses
// (never a credential).
func doctorCommand(cmd *cobra.Command, args []string) string {
	words := []string{"kpf", "doctor"}
	for _, a := range args {
		words = append(words, shellQuote(a))
	}
	for _, name := range []string{"namespace", "context", "kubeconfig", "cluster", "user", "server", "transport", "address", "data-path"} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			v := f.Value.String()
			if sv, ok := f.Value.(interface{ GetSlice() []string }); ok {
				v = strings.Join(sv.GetSlice(), ",")
			}
			if name == "namespace" {
				words = append(words, "-n", shellQuote(v))
				continue
			}
			words = append(words, "--"+name+"="+shellQuote(v))
		}
	}
	return strings.Join(words, " ")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// daemonDoctor runs kpf doctor's checks of one of the daemon's forwards,
// as its identity (GET /v1/forwards/{name}/doctor): the same checks and
// advice as kpf doctor -f FILE NAME.
func daemonDoctor(ctx context.Context, id identity.Identity, fw config.Forward, s spec.Settings) api.DoctorResult {
	o := &DoctorOptions{StepTimeout: 5 * time.Second}
	var checks []doctor.Check
	d, done := o.doctor(id.WithContext(fw.Context), func(c doctor.Check) { checks = append(checks, c) })
	defer done()
	d.CheckCluster(ctx)
	if fw.Namespace == "" {
		fw.Namespace = o.namespace(d)
	}
	d.CheckForward(ctx, fw, s)
	res := api.DoctorResult{Forward: fw.Name, OK: !d.Failed(), Checks: []api.Check{}}
	for _, c := range checks {
		res.Checks = append(res.Checks, api.Check{Step: c.Step, Status: string(c.Status), Summary: c.Summary, Details: c.Details, Fix: c.Fix})
	}
	return res
}
