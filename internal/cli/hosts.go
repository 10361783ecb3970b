package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/hosts"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"
)

func newHostsCommand(g *globals) *cobra.Command {
	var write, domain string
	cmd := &cobra.Command{
		Use:   "hosts [--write FILE]",
		Short: "Print hosts-file lines that give forwarded services their cluster names (for address: auto)",
		Long: `Print hosts-file lines for the daemon's running forwards of services that
have a loopback address of their own (address: auto in kpf.yaml): each
service's cluster names (NAME.NAMESPACE, NAME.NAMESPACE.svc,
NAME.NAMESPACE.svc.cluster.local, and NAME where no other forwarded service
has it) lead to its address, and clients reach it at its real port.

--write FILE keeps those lines in a marked block of FILE: the block is
replaced whole (a new file renamed over the old), the rest of the file is
left as it was, kpf up -d brings the block up to date and kpf down removes
it once nothing is forwarded. Run it on /etc/hosts with sudo if you choose
to (kpf itself never needs root): under sudo it reads the status of the
daemon of the user who ran sudo. kpf up -d and kpf down, run as that user,
cannot write /etc/hosts: they say so, and running sudo kpf hosts --write
/etc/hosts again brings the block up to date, or removes it once no daemon
runs. Or give the file to a container or a tool that reads one.`,
		Example: `  kpf up -d --wait && kpf hosts
  sudo kpf hosts --write /etc/hosts
  kpf hosts --write ./hosts && docker run --add-host ... -v ./hosts:/etc/hosts ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			home, err := hostsHome()
			if err != nil {
				return err
			}
			c := daemon.NewClient(home)
			st, err := c.Status(cmd.Context(), "")
			if write != "" && errors.Is(err, daemon.ErrNotRunning) {
				// Nothing is forwarded: the block goes (how the block of a
				// file the user could not write is removed after kpf down).
				st, err = &api.Status{}, nil
			}
			if err != nil {
				return err
			}
			entries := hostEntries(st.Forwards, domain)
			if write == "" {
				if len(entries) == 0 {
					fmt.Fprintln(g.errOut, "kpf: no running forward of a service has an address of its own: give forwards address: auto in kpf.yaml, or run kpf up --all --address auto")
				}
				fmt.Fprint(g.out, hosts.Block(entries))
				return nil
			}
			abs, err := filepath.Abs(write)
			if err != nil {
				return err
			}
			if err := hosts.Update(abs, entries); err != nil {
				return fmt.Errorf("--write %s: %w", write, err)
			}
			files := readHostsFiles(home)
			if len(entries) == 0 {
				delete(files, abs)
			} else {
				files[abs] = domain
			}
			if err := writeHostsFiles(home, files); err != nil {
				return err
			}
			_, sudo := daemon.SudoUser()
			switch {
			case len(entries) == 0:
				fmt.Fprintf(g.out, "%s: no service is forwarded; removed the kpf block\n", write)
			case sudo:
				fmt.Fprintf(g.out, "%s: %d services; run sudo kpf hosts --write %s again after kpf up -d or kpf down (they run as you, and cannot write it)\n", write, len(entries), abs)
			default:
				fmt.Fprintf(g.out, "%s: %d services; kpf down removes them\n", write, len(entries))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&write, "write", "", "keep the lines in a marked block of this file (created if missing)")
	cmd.Flags().StringVar(&domain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	return cmd
}

// hostsHome is the daemon home kpf hosts reads: the user's own, or, under
// sudo, that of the user who ran sudo (their daemon lets root read its
// status, and only that).
func hostsHome() (daemon.Home, error) {
	if uid, ok := daemon.SudoUser(); ok && os.Getenv("KPF_HOME") == "" {
		return daemon.HomeOf(uid)
	}
	return daemon.DefaultHome(), nil
}

// hostEntries are the hosts lines of the forwards of services given an
// address of their own (not localhost, 127.0.0.1, ::1 or every address),
// whether they listen at the moment or wait for a pod.
//
// A headless service's pods forwarded by a discover entry (kpf up --all)
// get the names the cluster's DNS gives them: POD.SERVICE.NAMESPACE (and
// .svc, .svc.DOMAIN), as the forward's name says (discover.PodName).
func hostEntries(rows []api.Forward, domain string) []hosts.Entry {
	var out, pods []hosts.Entry
	seen := map[netip.Addr]bool{}
	for _, r := range rows {
		kind, err := rbac.KindOf(r.Target)
		if err != nil || r.Namespace == "" {
			continue
		}
		_, name, _ := strings.Cut(r.Target, "/")
		if len(validation.IsDNS1123Label(r.Namespace)) > 0 || len(validation.IsDNS1123Label(name)) > 0 {
			// Not names the cluster could have: nothing the daemon says
			// becomes a line of a file root writes (sudo kpf hosts).
			continue
		}
		dst := &out
		switch kind.Resource {
		case "services":
		case "pods":
			svc, ok := headlessService(r.Name, name, r.Namespace)
			if !ok {
				continue
			}
			name, dst = name+"."+svc, &pods
		default:
			continue
		}
		for _, l := range r.Addresses {
			a, err := netip.ParseAddr(l)
			if err != nil {
				continue // localhost
			}
			if a == netip.MustParseAddr("127.0.0.1") || a == netip.IPv6Loopback() || a.IsUnspecified() || seen[a] {
				continue
			}
			seen[a] = true
			*dst = append(*dst, hosts.Service(a, r.Namespace, name, domain))
		}
	}
	// A pod's bare name is not a name in the cluster: no short ones.
	return append(hosts.Shorten(out), pods...)
}

// headlessService is the service of the forward of a headless service's
// pod, from its name POD.SERVICE.NAMESPACE:PORT[/udp].
func headlessService(forward, pod, namespace string) (string, bool) {
	host, _, ok := strings.Cut(forward, ":")
	if !ok {
		return "", false
	}
	svc, ok := strings.CutPrefix(host, pod+".")
	if !ok {
		return "", false
	}
	svc, ok = strings.CutSuffix(svc, "."+namespace)
	if !ok || len(validation.IsDNS1123Label(svc)) > 0 {
		return "", false
	}
	return svc, true
}

// hostsFiles is the list of files kpf hosts --write keeps, in the daemon's
// home: one "DOMAIN PATH" a line.
func hostsFiles(home daemon.Home) string { return filepath.Join(string(home), "hosts-files") }

func readHostsFiles(home daemon.Home) map[string]string {
	out := map[string]string{}
	f, err := os.Open(hostsFiles(home))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if domain, path, ok := strings.Cut(sc.Text(), " "); ok {
			out[path] = domain
		}
	}
	return out
}

func writeHostsFiles(home daemon.Home, files map[string]string) error {
	if len(files) == 0 {
		err := os.Remove(hostsFiles(home))
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	var b strings.Builder
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		fmt.Fprintf(&b, "%s %s\n", files[p], p)
	}
	if _, sudo := daemon.SudoUser(); !sudo {
		if err := home.Ensure(); err != nil {
			return err
		}
	}
	if err := os.WriteFile(hostsFiles(home), []byte(b.String()), 0o600); err != nil {
		return err
	}
	// Written by root under sudo, the list stays the user's.
	return home.GiveToOwner(hostsFiles(home))
}

// refreshHostsFiles brings the blocks kpf hosts --write made up to date
// with the running forwards; a file left with nothing forwarded loses its
// block and is forgotten. Problems are warnings: the forwards themselves
// are fine.
func refreshHostsFiles(ctx context.Context, g *globals, home daemon.Home) {
	files := readHostsFiles(home)
	if len(files) == 0 {
		return
	}
	var rows []api.Forward
	if st, err := daemon.NewClient(home).Status(ctx, ""); err == nil {
		rows = st.Forwards
	}
	for path, domain := range files {
		entries := hostEntries(rows, domain)
		if err := hosts.Update(path, entries); errors.Is(err, fs.ErrPermission) {
			// A file only root may write (/etc/hosts): the user's kpf
			// cannot, and says what can. The file stays on the list.
			what := "bring it up to date"
			if len(entries) == 0 {
				what = "remove it"
			}
			fmt.Fprintf(g.errOut, "kpf: the kpf block of %s is out of date and you may not write that file: %s with: sudo kpf hosts --write %s\n", path, what, path)
			continue
		} else if err != nil {
			fmt.Fprintf(g.errOut, "kpf: warning: the kpf block of %s: %v\n", path, err)
			continue
		}
		if len(entries) == 0 {
			delete(files, path)
			fmt.Fprintf(g.out, "%s: removed the kpf block\n", path)
		}
	}
	if err := writeHostsFiles(home, files); err != nil {
		fmt.Fprintf(g.errOut, "kpf: warning: %v\n", err)
	}
}
