// Package identity is who a forward connects as, and to which cluster: the
// kubectl connection flags a command was given, the kubeconfig files in
// effect (KUBECONFIG) and the environment its exec credential plugins run
// with. It is captured where the command runs, with relative paths made
// absolute, and rebuilt wherever the forward runs (the command itself or
// the daemon), so that a file applied with --kubeconfig dev runs as dev
// whoever started the daemon.
//
// The flags are kept by name, as cli-runtime's ConfigFlags registers them,
// not as a hand-kept list of fields: a flag that cli-runtime adds reaches
// the daemon without a change here.
package identity

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/net/http/httpproxy"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identity is what a forward needs to reach its cluster as its user. It
// may hold a bearer token (--token): it travels only over the daemon's
// user-only socket and lives only as long as the forwards that use it.
type Identity struct {
	// Flags are the kubectl connection flags that were given, by name.
	Flags map[string][]string `json:"flags,omitempty"`
	// Env is the environment of the command: KUBECONFIG, and what exec
	// credential plugins read (AWS_PROFILE, CLOUDSDK_CONFIG, PATH, ...).
	Env []string `json:"env,omitempty"`
}

// pathFlags name files: captured as absolute paths, since the daemon runs
// in another folder.
var pathFlags = []string{"kubeconfig", "certificate-authority", "client-certificate", "client-key", "cache-dir"}

// Flags are kubectl's connection flags on a command.
type Flags struct {
	kube  *genericclioptions.ConfigFlags
	names []string
}

// NewFlags returns kubectl's connection flags, not yet registered.
func NewFlags() *Flags { return &Flags{kube: genericclioptions.NewConfigFlags(true)} }

// AddFlags registers the flags on fs, as kubectl does.
func (f *Flags) AddFlags(fs *pflag.FlagSet) {
	own := pflag.NewFlagSet("kube", pflag.ContinueOnError)
	f.kube.AddFlags(own)
	own.VisitAll(func(fl *pflag.Flag) { f.names = append(f.names, fl.Name) })
	fs.AddFlagSet(own)
}

// Names lists the connection flags.
func (f *Flags) Names() []string { return slices.Clone(f.names) }

// Capture records the connection flags given on fs (the command's flag
// set after parsing), env and the kubeconfig paths in effect, with
// relative paths resolved against dir.
func (f *Flags) Capture(fs *pflag.FlagSet, env []string, dir string) Identity {
	id := Identity{Flags: map[string][]string{}}
	for _, name := range f.names {
		fl := fs.Lookup(name)
		if fl == nil || !fl.Changed {
			continue
		}
		var vals []string
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			vals = sv.GetSlice()
		} else {
			vals = []string{fl.Value.String()}
		}
		if slices.Contains(pathFlags, name) && vals[0] != "" {
			vals = []string{abs(dir, vals[0])}
		}
		id.Flags[name] = vals
	}
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == "KUBECONFIG" && v != "" {
			var paths []string
			for _, p := range filepath.SplitList(v) {
				if p != "" {
					paths = append(paths, abs(dir, p))
				}
			}
			kv = "KUBECONFIG=" + strings.Join(paths, string(filepath.ListSeparator))
		}
		id.Env = append(id.Env, kv)
	}
	return id
}

func abs(dir, p string) string {
	if strings.HasPrefix(p, "~"+string(filepath.Separator)) {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	if filepath.IsAbs(p) || dir == "" {
		return p
	}
	return filepath.Join(dir, p)
}

// Get returns a flag's value ("" when not given).
func (id Identity) Get(name string) string {
	if v := id.Flags[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// WithContext is the identity with another kubeconfig context ("" keeps
// the one it has).
func (id Identity) WithContext(name string) Identity {
	if name == "" {
		return id
	}
	out := Identity{Flags: make(map[string][]string, len(id.Flags)+1), Env: id.Env}
	for k, v := range id.Flags {
		out.Flags[k] = v
	}
	out.Flags["context"] = []string{name}
	return out
}

// getenvAny is the first of keys that is set, as net/http reads proxies.
func (id Identity) getenvAny(keys ...string) string {
	for _, k := range keys {
		if v := id.getenv(k); v != "" {
			return v
		}
	}
	return ""
}

func (id Identity) getenv(key string) string {
	for i := len(id.Env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(id.Env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// ErrUnknownFlag: the identity names a connection flag this kpf does not
// have (a newer kpf applied the file).
var ErrUnknownFlag = errors.New("unknown connection flag")

// Getter rebuilds the identity as kubectl's flags would have produced it:
// a RESTClientGetter for the resource builder, and the REST configuration.
func (id Identity) Getter() (*genericclioptions.ConfigFlags, error) {
	kube := genericclioptions.NewConfigFlags(true)
	fs := pflag.NewFlagSet("kube", pflag.ContinueOnError)
	kube.AddFlags(fs)
	names := make([]string, 0, len(id.Flags))
	for name := range id.Flags {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		vals := id.Flags[name]
		fl := fs.Lookup(name)
		if fl == nil {
			return nil, fmt.Errorf("%w --%s: update kpf (its daemon may be older than the command: kpf down --all, then kpf up -d)", ErrUnknownFlag, name)
		}
		var err error
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			err = sv.Replace(vals)
		} else if len(vals) > 0 {
			err = fl.Value.Set(vals[0])
		}
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %w", name, strings.Join(vals, ","), err)
		}
	}
	// The kubeconfig files are the command's KUBECONFIG, not the
	// daemon's. ConfigFlags keeps its loader (persistent config), so the
	// loading rules set here are the ones every later call uses.
	loader := kube.ToRawKubeConfigLoader()
	rules, ok := loader.ConfigAccess().(*clientcmd.ClientConfigLoadingRules)
	if !ok {
		return nil, fmt.Errorf("kubeconfig loading rules of type %T: not supported", loader.ConfigAccess())
	}
	rules.Precedence = nil
	if kc := id.getenv("KUBECONFIG"); kc != "" {
		rules.Precedence = filepath.SplitList(kc)
	} else {
		rules.Precedence = []string{clientcmd.RecommendedHomeFile}
	}
	kube.WrapConfigFn = id.wrap
	return kube, nil
}

// wrap makes the REST configuration behave as it would in the command:
// proxies from its HTTPS_PROXY and NO_PROXY (when the kubeconfig names
// none), and exec credential plugins run with its environment.
func (id Identity) wrap(c *rest.Config) *rest.Config {
	if len(id.Env) == 0 {
		return c
	}
	if c.Proxy == nil {
		pc := httpproxy.Config{
			HTTPProxy:  id.getenvAny("HTTP_PROXY", "http_proxy"),
			HTTPSProxy: id.getenvAny("HTTPS_PROXY", "https_proxy"),
			NoProxy:    id.getenvAny("NO_PROXY", "no_proxy"),
		}
		fromEnv := pc.ProxyFunc()
		c.Proxy = utilnet.NewProxierWithNoProxyCIDR(func(r *http.Request) (*url.URL, error) { return fromEnv(r.URL) })
	}
	return id.execEnv(c)
}

// execEnv makes exec credential plugins run as they would from the
// command: with its environment (the kubeconfig's own env entries still
// win, as in client-go) and found on its PATH.
func (id Identity) execEnv(c *rest.Config) *rest.Config {
	if c.ExecProvider == nil {
		return c
	}
	e := *c.ExecProvider // the loaded kubeconfig's: not ours to change
	e.Env = make([]clientcmdapi.ExecEnvVar, 0, len(id.Env)+len(c.ExecProvider.Env))
	for _, kv := range id.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			e.Env = append(e.Env, clientcmdapi.ExecEnvVar{Name: k, Value: v})
		}
	}
	e.Env = append(e.Env, c.ExecProvider.Env...)
	if !strings.ContainsRune(e.Command, filepath.Separator) {
		if p := LookPath(e.Command, id.getenv("PATH")); p != "" {
			e.Command = p
		}
	}
	c.ExecProvider = &e
	return c
}

// LookPath finds a program on a PATH other than this process's.
func LookPath(name, path string) string {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			if _, err := exec.LookPath(p); err == nil {
				return p
			}
		}
	}
	return ""
}

// Describe names what kube resolves to, for status and logs: the context,
// cluster and user. It never includes a credential.
func Describe(kube *genericclioptions.ConfigFlags) (context, cluster, user string) {
	raw, err := kube.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return "", "", ""
	}
	context = raw.CurrentContext
	if v := *kube.Context; v != "" {
		context = v
	}
	if c, ok := raw.Contexts[context]; ok {
		cluster, user = c.Cluster, c.AuthInfo
	}
	if v := *kube.ClusterName; v != "" {
		cluster = v
	}
	if v := *kube.AuthInfoName; v != "" {
		user = v
	}
	return context, cluster, user
}
