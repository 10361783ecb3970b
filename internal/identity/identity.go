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
//
// Of the environment, only what decides how kpf connects is kept: the
// variables named in EnvNames and EnvPrefixes (what kubeconfig loading, a
// proxy and the common exec credential plugins read), and those a user
// names in KPF_PASS_ENV. The rest of a shell (PWD, OLDPWD, TERM, a secret
// of another tool) is neither kept nor compared: applying a file again
// from another terminal is the same identity. The kubeconfig files in
// effect are kept by path and by a hash of their bytes, so an edited
// kubeconfig is another identity.
package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
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
// may hold a bearer token (--token) or a secret variable: it travels only
// over the daemon's user-only socket and lives only as long as the
// forwards that use it; what the daemon writes to disk is Storable's.
type Identity struct {
	// Flags are the kubectl connection flags that were given, by name.
	Flags map[string][]string `json:"flags,omitempty"`
	// Env is what of the command's environment decides how kpf connects
	// (KUBECONFIG, proxies, what exec credential plugins read: see
	// EnvNames), as NAME=VALUE, sorted.
	Env []string `json:"env,omitempty"`
	// Files are the kubeconfig files in effect and the files the path
	// flags name, each with a hash of its bytes when it was captured.
	Files []File `json:"files,omitempty"`
}

// File is a file an identity reads, and a hash of its bytes ("" when it
// could not be read: missing is a state too).
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256,omitempty"`
}

// Equal reports whether id and o connect the same way, field by field:
// the same flags with the same values, the same kept environment, and
// the same files with the same contents.
func (id Identity) Equal(o Identity) bool {
	return maps.EqualFunc(id.Flags, o.Flags, slices.Equal[[]string]) &&
		slices.Equal(id.Env, o.Env) &&
		slices.Equal(id.Files, o.Files)
}

// EnvNames are the variables of a command's environment that decide how
// kpf connects, kept with its identity (README: "The daemon runs each file
// as the command that applied it"): where the kubeconfig is and where
// kubectl caches, the proxies (both cases, as net/http reads them), the
// PATH (kept only when a kubeconfig in effect has an exec plugin) and
// HOME exec plugins are found and run with, and the CA bundles
// plugins' HTTP clients read. Add a name here for a variable that every
// user of a plugin needs; a user's own variable goes in KPF_PASS_ENV.
var EnvNames = []string{
	"KUBECONFIG", "KUBECACHEDIR", "HOME", "PATH", "USER",
	"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
	"http_proxy", "https_proxy", "no_proxy", "all_proxy",
	"SSL_CERT_FILE", "SSL_CERT_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
	PassEnv,
}

// EnvPrefixes are the prefixes of the variables exec credential plugins
// read, kept like EnvNames.
var EnvPrefixes = []string{
	"AWS_",           // aws eks get-token, aws-iam-authenticator
	"AZURE_", "AAD_", // kubelogin (Azure)
	"GOOGLE_", "CLOUDSDK_", // gke-gcloud-auth-plugin, gcloud
	"KUBELOGIN_",    // kubelogin
	"TELEPORT_",     // tsh
	"VAULT_",        // vault
	"OCI_",          // oci ce cluster generate-token
	"IBMCLOUD_",     // ibmcloud
	"DIGITALOCEAN_", // doctl
	"OS_",           // OpenStack (client-keystone-auth)
}

// PassEnv names the variable in which a user lists more variables to keep
// with the identity (comma- or space-separated; NAME* for a prefix): what
// a plugin of their own reads, such as KPF_PASS_ENV=CORP_SSO_PROFILE.
const PassEnv = "KPF_PASS_ENV"

// keepEnv reports whether the variable named k is kept; pass is the
// command's KPF_PASS_ENV.
func keepEnv(k, pass string) bool {
	if slices.Contains(EnvNames, k) || slices.ContainsFunc(EnvPrefixes, func(p string) bool { return strings.HasPrefix(k, p) }) {
		return true
	}
	for _, n := range strings.FieldsFunc(pass, func(r rune) bool { return r == ',' || r == ' ' }) {
		if p, ok := strings.CutSuffix(n, "*"); ok && p != "" && strings.HasPrefix(k, p) || n == k {
			return true
		}
	}
	return false
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
// set after parsing), what of env decides how kpf connects (see
// EnvNames), and the kubeconfig files in effect with a hash of each,
// with relative paths resolved against dir.
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
	var pass string
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == PassEnv {
			pass = v
		}
	}
	kept := map[string]string{} // the last of a name wins, as in os/exec
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !keepEnv(k, pass) {
			continue
		}
		if k == "KUBECONFIG" && v != "" {
			var paths []string
			for _, p := range filepath.SplitList(v) {
				if p != "" {
					paths = append(paths, abs(dir, p))
				}
			}
			v = strings.Join(paths, string(filepath.ListSeparator))
		}
		kept[k] = v
	}
	// PATH decides only where exec credential plugins are found (and
	// what they run): kept when a kubeconfig in effect has one. Otherwise
	// a virtualenv, direnv or nvm that changes PATH from one folder or
	// terminal to the next made another identity, and applying a file
	// again from there restarted every forward and cut its connections.
	kubeconfigs := id.kubeconfigsWith(kept)
	if _, ok := kept["PATH"]; ok && !usesPlugins(kubeconfigs) {
		delete(kept, "PATH")
	}
	for _, k := range slices.Sorted(maps.Keys(kept)) {
		id.Env = append(id.Env, k+"="+kept[k])
	}
	for _, p := range id.filePaths() {
		id.Files = append(id.Files, File{Path: p, SHA256: hashFile(p)})
	}
	return id
}

// kubeconfigsWith are the kubeconfig files in effect for id with the
// environment kept (before it is set in id.Env).
func (id Identity) kubeconfigsWith(kept map[string]string) []string {
	probe := Identity{Flags: id.Flags}
	for _, k := range []string{"KUBECONFIG", "HOME"} {
		if v, ok := kept[k]; ok {
			probe.Env = append(probe.Env, k+"="+v)
		}
	}
	return probe.kubeconfigs()
}

// usesPlugins reports whether any of the kubeconfig files names a user
// with an exec credential plugin or an auth provider (which may run one).
func usesPlugins(files []string) bool {
	for _, p := range files {
		cfg, err := clientcmd.LoadFromFile(p)
		if err != nil {
			continue
		}
		for _, u := range cfg.AuthInfos {
			if u.Exec != nil || u.AuthProvider != nil {
				return true
			}
		}
	}
	return false
}

// filePaths are the files id reads: the kubeconfig files in effect (as
// Getter loads them), then the files the path flags name.
func (id Identity) filePaths() []string {
	out := id.kubeconfigs()
	for _, name := range pathFlags {
		if p := id.Get(name); p != "" && name != "kubeconfig" && name != "cache-dir" {
			out = append(out, p)
		}
	}
	return out
}

// kubeconfigs are the kubeconfig files in effect, as kubectl picks them:
// --kubeconfig, else KUBECONFIG, else .kube/config in the command's HOME.
func (id Identity) kubeconfigs() []string {
	if p := id.Get("kubeconfig"); p != "" {
		return []string{p}
	}
	if kc := id.getenv("KUBECONFIG"); kc != "" {
		var out []string
		for _, p := range filepath.SplitList(kc) {
			if p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	if home := id.getenv("HOME"); home != "" {
		return []string{filepath.Join(home, clientcmd.RecommendedHomeDir, clientcmd.RecommendedFileName)}
	}
	return []string{clientcmd.RecommendedHomeFile}
}

// hashFile is a hash of the file's bytes, "" when it cannot be read.
func hashFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
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
	out := Identity{Flags: make(map[string][]string, len(id.Flags)+1), Env: id.Env, Files: id.Files}
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

// Getenv is a variable of the command's environment as the identity
// kept it ("" when it kept none).
func (id Identity) Getenv(key string) string { return id.getenv(key) }

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
	// kubectl's cache folder is the command's KUBECACHEDIR, not the
	// daemon's, unless --cache-dir was given.
	if _, ok := id.Flags["cache-dir"]; !ok {
		if d := id.getenv("KUBECACHEDIR"); d != "" {
			fs.Set("cache-dir", d)
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
	} else if home := id.getenv("HOME"); home != "" {
		rules.Precedence = []string{filepath.Join(home, clientcmd.RecommendedHomeDir, clientcmd.RecommendedFileName)}
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

// secretFlags are the connection flags whose values are credentials.
var secretFlags = []string{"token", "password"}

// PlainEnv are variables whose values are never credentials (paths,
// names of profiles, regions, addresses), written to disk (Storable)
// whatever their names look like.
var PlainEnv = []string{
	"KUBECONFIG", "KUBECACHEDIR", "HOME", "PATH", "USER", "NO_PROXY", "no_proxy",
	"SSL_CERT_FILE", "SSL_CERT_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", PassEnv,
	"GOOGLE_APPLICATION_CREDENTIALS", "OS_AUTH_URL",
}

// SecretWords mark the names of variables that may hold a credential:
// a variable kept by EnvPrefixes whose name holds one (AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN, VAULT_TOKEN, AZURE_CLIENT_SECRET, OS_PASSWORD,
// IBMCLOUD_API_KEY) is never written to disk (Storable). A variable that
// KPF_PASS_ENV names is a user's own, which kpf cannot judge: never
// written either, unless it is in PlainEnv.
var SecretWords = []string{"SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASSPHRASE", "PASS", "KEY", "CREDENTIAL", "SESSION", "AUTH", "COOKIE", "PRIVATE", "SIGNATURE", "CERTIFICATE"}

// plainEnv reports whether the value of the kept variable k may be
// written to disk.
func plainEnv(k, v string) bool {
	switch {
	case slices.Contains(PlainEnv, k):
		return true
	case slices.Contains(proxyEnv, k):
		// user:password@host, with a scheme or without: any user part is
		// left out, whatever a parser makes of the rest.
		return !strings.Contains(v, "@")
	case slices.Contains(EnvNames, k):
		return true
	case !slices.ContainsFunc(EnvPrefixes, func(p string) bool { return strings.HasPrefix(k, p) }):
		return false // only KPF_PASS_ENV keeps it: a user's own
	}
	up := strings.ToUpper(k)
	return !slices.ContainsFunc(SecretWords, func(w string) bool { return strings.Contains(up, w) })
}

// proxyEnv are the proxy variables: written when their URL names no
// user.
var proxyEnv = []string{"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"}

// Storable is the identity without what may be a credential, for the
// daemon to write to disk (it never writes a token or a password), and
// the names of what it left out ("--token", "AWS_SECRET_ACCESS_KEY"):
// the credential flags' values, the variables whose names hold one of
// SecretWords or that only KPF_PASS_ENV keeps (see plainEnv), and a proxy
// URL that names a user (and may hold a password). An identity that left nothing
// out is the same identity when read back; one that did is not, and the
// daemon does not run it as if it were.
func (id Identity) Storable() (Identity, []string) {
	out := Identity{Files: slices.Clone(id.Files)}
	var withheld []string
	for _, name := range slices.Sorted(maps.Keys(id.Flags)) {
		if slices.Contains(secretFlags, name) {
			withheld = append(withheld, "--"+name)
			continue
		}
		if out.Flags == nil {
			out.Flags = map[string][]string{}
		}
		out.Flags[name] = slices.Clone(id.Flags[name])
	}
	for _, kv := range id.Env {
		k, v, _ := strings.Cut(kv, "=")
		if !plainEnv(k, v) {
			withheld = append(withheld, k)
			continue
		}
		out.Env = append(out.Env, kv)
	}
	return out, withheld
}

// Rehash is the identity with the hash of each of its files taken again
// now, and the paths of those whose bytes changed (or that appeared or
// went) since it was captured.
func (id Identity) Rehash() (Identity, []string) {
	out := Identity{Flags: id.Flags, Env: id.Env, Files: make([]File, len(id.Files))}
	var changed []string
	for i, f := range id.Files {
		out.Files[i] = File{Path: f.Path, SHA256: hashFile(f.Path)}
		if out.Files[i].SHA256 != f.SHA256 {
			changed = append(changed, f.Path)
		}
	}
	return out, changed
}
