package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/discover"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"
)

// allFlags are kpf up --all's and kpf run --all's: every service of a
// namespace instead of a file's forwards.
type allFlags struct {
	All      bool
	Selector string
	Address  string
}

func (a *allFlags) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&a.All, "all", false, "forward every service of the namespace (-n, or the context's), kept in step with the cluster: a forward per service port, named NAME.NAMESPACE:PORT")
	fs.StringVarP(&a.Selector, "selector", "l", "", "with --all: only the services this label selector matches (like app=web)")
	fs.StringVar(&a.Address, "address", "", "with --all: where each forward listens: localhost (default), addresses, or auto (a loopback address per service, at its real port; kpf hosts names them)")
}

// file writes the kpf.yaml that --all stands for into the daemon's home
// (all/CONTEXT/NAMESPACE.yaml: the daemon keys what it runs by a file,
// and kpf down -f takes it) and returns its path; it checks the flags
// first. Without --all it returns "".
func (a *allFlags) file(cmd *cobra.Command, file string, names []string, id identity.Identity) (string, error) {
	if !a.All {
		if a.Selector != "" || a.Address != "" {
			return "", usagef("-l/--selector and --address go with --all (a file's forwards say their own addresses)")
		}
		return "", nil
	}
	switch {
	case file != "":
		return "", usagef("--all forwards a namespace's services: give it without -f %s (or put discover: {namespace: NS} in the file)", file)
	case len(names) > 0:
		return "", usagef("--all forwards every service of the namespace: give no names (%s), or a selector with -l", strings.Join(names, " "))
	}
	if _, err := labels.Parse(a.Selector); err != nil {
		return "", usagef("-l %q: not a label selector (like app=web or tier in (api,db)): %v", a.Selector, err)
	}
	kube, err := id.Getter()
	if err != nil {
		return "", explainConfig(err)
	}
	ns, _, err := kube.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", explainConfig(err)
	}
	ctxName := ""
	if f := cmd.Flag("context"); f != nil {
		ctxName = f.Value.String()
	}
	if ctxName == "" {
		if raw, err := kube.ToRawKubeConfigLoader().RawConfig(); err == nil {
			ctxName = raw.CurrentContext
		}
	}
	return writeAllFile(ctxName, ns, a.Selector, a.Address)
}

// writeAllFile writes the kpf.yaml of every service of ns in context
// ctxName (matching selector; at address) into the daemon's home, and
// returns its path (kpf up --all, and A in kpf ui).
func writeAllFile(ctxName, ns, selector, address string) (string, error) {
	a := allFlags{All: true, Selector: selector, Address: address}
	var b strings.Builder
	q := func(s string) string { j, _ := json.Marshal(s); return string(j) }
	fmt.Fprintf(&b, "# kpf up --all: every service of %s", ns)
	if a.Selector != "" {
		fmt.Fprintf(&b, " matching %s", a.Selector)
	}
	b.WriteString(", kept in step with the cluster. Written by kpf; kpf down -f THIS_FILE stops it.\n")
	fmt.Fprintf(&b, "discover:\n  namespace: %s\n", q(ns))
	if a.Selector != "" {
		fmt.Fprintf(&b, "  selector: %s\n", q(a.Selector))
	}
	if a.Address != "" {
		fmt.Fprintf(&b, "  address: %s\n", q(a.Address))
	}
	home := daemon.DefaultHome()
	if err := home.Ensure(); err != nil {
		return "", err
	}
	dir := filepath.Join(string(home), "all", safeName(ctxName))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, safeName(ns)+".yaml")
	// Checked before it is written: a bad --address is a usage error.
	if _, err := config.Parse(path, []byte(b.String())); err != nil {
		if ce := (*config.Error)(nil); errors.As(err, &ce) && len(ce.Problems) > 0 && strings.HasPrefix(ce.Problems[0].Field, "discover.address") {
			return "", usagef("--address %q: %s", a.Address, ce.Problems[0].Msg)
		}
		return "", err
	}
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// safeName is s as one file name ("default" for none).
func safeName(s string) string {
	if s == "" {
		return "default"
	}
	return unsafeName.ReplaceAllString(s, "_")
}

// newDiscoverOpener runs the discover entries of a file as id, on the
// connections of clusters (whose service watches they share).
func newDiscoverOpener(id identity.Identity, clusters *cluster.Registry) manager.DiscoverOpener {
	return func(ctx context.Context, fw config.Forward, apply func([]config.Forward, string)) error {
		c, err := clusters.Acquire(id.WithContext(fw.Context))
		if err != nil {
			return explainConnect(err)
		}
		defer c.Release()
		if fw.Namespace == "" {
			fw.Namespace = c.Namespace()
		}
		return discover.Run(ctx, c.Services(), c.Watches(), fw, apply)
	}
}
