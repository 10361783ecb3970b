package identity

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// Every kubectl connection flag a command is given reaches the forward,
// wherever it runs: the test enumerates cli-runtime's flags (a flag added
// there is covered without a change here), gives each a value, sends the
// identity through JSON (as to the daemon) and reads each value back from
// the rebuilt ConfigFlags.
func TestEveryConnectionFlagReachesTheForward(t *testing.T) {
	f := NewFlags()
	fs := pflag.NewFlagSet("kpf", pflag.ContinueOnError)
	f.AddFlags(fs)
	var all []string
	probe := pflag.NewFlagSet("probe", pflag.ContinueOnError)
	genericclioptions.NewConfigFlags(true).AddFlags(probe)
	probe.VisitAll(func(fl *pflag.Flag) { all = append(all, fl.Name) })
	if got := f.Names(); !slices.Equal(got, all) {
		t.Fatalf("registered %v, cli-runtime has %v", got, all)
	}
	want := map[string]string{}
	var args []string
	for _, name := range all {
		fl := fs.Lookup(name)
		switch {
		case fl.Value.Type() == "bool":
			args = append(args, "--"+name+"=true")
			want[name] = "true"
		case fl.Value.Type() == "stringArray":
			args = append(args, "--"+name+"=a-"+name, "--"+name+"=b-"+name)
			want[name] = "[a-" + name + ",b-" + name + "]"
		case slices.Contains(pathFlags, name):
			args = append(args, "--"+name+"=rel/"+name)
			want[name] = filepath.Join("/work/dir", "rel", name)
		default:
			args = append(args, "--"+name+"=v-"+name)
			want[name] = "v-" + name
		}
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	id := f.Capture(fs, []string{"KUBECONFIG=a.yaml" + string(filepath.ListSeparator) + "/abs/b.yaml", "AWS_PROFILE=dev"}, "/work/dir")
	b, err := json.Marshal(id)
	if err != nil {
		t.Fatal(err)
	}
	var sent Identity
	if err := json.Unmarshal(b, &sent); err != nil {
		t.Fatal(err)
	}
	kube, err := sent.Getter()
	if err != nil {
		t.Fatal(err)
	}
	// Registering the rebuilt ConfigFlags again shows each field's value as
	// the flag's default.
	back := pflag.NewFlagSet("back", pflag.ContinueOnError)
	kube.AddFlags(back)
	for _, name := range all {
		if got := back.Lookup(name).DefValue; got != want[name] {
			t.Errorf("--%s: the forward has %q, want %q", name, got, want[name])
		}
	}
	if got := sent.getenv("KUBECONFIG"); got != "/work/dir/a.yaml"+string(filepath.ListSeparator)+"/abs/b.yaml" {
		t.Errorf("KUBECONFIG %q: want the command's files, made absolute", got)
	}
}

// The kubeconfig files are the command's KUBECONFIG (merged, as kubectl
// merges them), not the environment of the process that rebuilds them.
func TestKubeconfigFromTheCommandsEnvironment(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", kubeconfig("ctx-a", "user-a", "https://a.example:6443", ""))
	write(t, dir, "b.yaml", kubeconfig("ctx-b", "user-b", "https://b.example:6443", ""))
	t.Setenv("KUBECONFIG", filepath.Join(dir, "nothing.yaml"))
	id := Identity{Env: []string{"KUBECONFIG=" + filepath.Join(dir, "a.yaml") + string(filepath.ListSeparator) + filepath.Join(dir, "b.yaml")}}
	kube, err := id.Getter()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := kube.ToRESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://a.example:6443" {
		t.Fatalf("host %q, want the first file's current context", cfg.Host)
	}
	if c, cl, u := Describe(kube); c != "ctx-a" || cl != "ctx-a" || u != "user-a" {
		t.Fatalf("described as %q %q %q", c, cl, u)
	}
	kube, err = id.WithContext("ctx-b").Getter()
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err = kube.ToRESTConfig(); err != nil || cfg.Host != "https://b.example:6443" {
		t.Fatalf("with --context ctx-b: host %q, %v", cfg.Host, err)
	}
	if c, _, u := Describe(kube); c != "ctx-b" || u != "user-b" {
		t.Fatalf("described as %q %q", c, u)
	}
}

// Exec credential plugins run with the command's environment and PATH;
// the kubeconfig's own env entries still win.
func TestExecPluginsRunWithTheCommandsEnvironment(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	write(t, bin, "my-plugin", "#!/bin/sh\nexit 1\n")
	os.Chmod(filepath.Join(bin, "my-plugin"), 0o755)
	write(t, dir, "kc.yaml", kubeconfig("ctx", "u", "https://a.example:6443", `
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: my-plugin
      interactiveMode: Never
      env:
      - {name: REGION, value: from-kubeconfig}`))
	id := Identity{Flags: map[string][]string{"kubeconfig": {filepath.Join(dir, "kc.yaml")}},
		Env: []string{"PATH=" + bin, "AWS_PROFILE=dev", "REGION=from-command", "HTTPS_PROXY=http://proxy.example:3128"}}
	kube, err := id.Getter()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := kube.ToRESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.ExecProvider
	if e.Command != filepath.Join(bin, "my-plugin") {
		t.Errorf("command %q: want it found on the command's PATH", e.Command)
	}
	env := map[string]string{}
	for _, v := range e.Env {
		env[v.Name] = v.Value // later entries win, as in os/exec
	}
	if env["AWS_PROFILE"] != "dev" || env["REGION"] != "from-kubeconfig" {
		t.Errorf("plugin environment %v", env)
	}
	// The proxy comes from the command's environment too.
	req, _ := httpRequest("https://a.example:6443/api")
	u, err := cfg.Proxy(req)
	if err != nil || u == nil || u.Host != "proxy.example:3128" {
		t.Errorf("proxy %v, %v: want the command's HTTPS_PROXY", u, err)
	}
	// Nothing of it shows when the configuration is printed.
	if s := cfg.String(); strings.Contains(s, "from-command") || strings.Contains(s, "AWS_PROFILE") {
		t.Errorf("the configuration prints the plugin's environment: %s", s)
	}
}

func TestUnknownFlagIsAClearError(t *testing.T) {
	_, err := Identity{Flags: map[string][]string{"warp-drive": {"on"}}}.Getter()
	if err == nil || !strings.Contains(err.Error(), "unknown connection flag --warp-drive") {
		t.Fatalf("err %v", err)
	}
}

func TestWithContextLeavesTheOriginal(t *testing.T) {
	id := Identity{Flags: map[string][]string{"context": {"a"}, "namespace": {"n"}}}
	other := id.WithContext("b")
	if id.Get("context") != "a" || other.Get("context") != "b" || other.Get("namespace") != "n" {
		t.Fatalf("%v %v", id, other)
	}
	if !id.WithContext("").Equal(id) {
		t.Fatal("an empty context changed the identity")
	}
}

func kubeconfig(ctx, user, server, userBody string) string {
	return `apiVersion: v1
kind: Config
current-context: ` + ctx + `
clusters:
- name: ` + ctx + `
  cluster: {server: "` + server + `"}
contexts:
- name: ` + ctx + `
  context: {cluster: ` + ctx + `, user: ` + user + `}
users:
- name: ` + user + `
  user:` + orEmpty(userBody) + "\n"
}

func orEmpty(s string) string {
	if s == "" {
		return " {}"
	}
	return s
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpRequest(u string) (*http.Request, error) { return http.NewRequest(http.MethodGet, u, nil) }

// Of a shell's environment, only what decides how kpf connects is kept:
// the named variables and prefixes, and those KPF_PASS_ENV adds. A
// secret of another tool, the folder and the terminal are not.
func TestCaptureKeepsOnlyWhatConnects(t *testing.T) {
	f := NewFlags()
	fs := pflag.NewFlagSet("kpf", pflag.ContinueOnError)
	f.AddFlags(fs)
	id := f.Capture(fs, []string{
		"PWD=/src/a", "OLDPWD=/src", "TERM=xterm-256color", "SHLVL=2", "FOO=secret", "GITHUB_TOKEN=ghp_secret",
		"PATH=/usr/bin", "HOME=/home/u", "AWS_PROFILE=dev", "CLOUDSDK_CONFIG=/g", "https_proxy=http://p:3128",
		"KPF_PASS_ENV=CORP_SSO, MY_*", "CORP_SSO=team", "CORP_OTHER=no", "MY_A=1", "MY_B=2",
		"AWS_PROFILE=prod", // the last wins, as in a shell
	}, "/src/a")
	// No PATH: no kubeconfig in effect (/home/u/.kube/config is missing)
	// runs an exec plugin (TestPathOnlyWithPlugins).
	want := []string{"AWS_PROFILE=prod", "CLOUDSDK_CONFIG=/g", "CORP_SSO=team", "HOME=/home/u", "KPF_PASS_ENV=CORP_SSO, MY_*",
		"MY_A=1", "MY_B=2", "https_proxy=http://p:3128"}
	if !slices.Equal(id.Env, want) {
		t.Fatalf("kept %q\nwant %q", id.Env, want)
	}
	b, _ := json.Marshal(id)
	for _, secret := range []string{"FOO", "secret", "GITHUB_TOKEN", "PWD", "TERM", "CORP_OTHER"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("the identity sent to the daemon holds %q: %s", secret, b)
		}
	}
}

// The same command from another folder and terminal is the same
// identity; an edited kubeconfig, another profile or another flag is not.
func TestEqualComparesWhatConnects(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kc.yaml")
	write(t, dir, "kc.yaml", kubeconfig("ctx", "u", "https://a.example:6443", ""))
	capture := func(args []string, env ...string) Identity {
		f := NewFlags()
		fs := pflag.NewFlagSet("kpf", pflag.ContinueOnError)
		f.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.Capture(fs, append([]string{"KUBECONFIG=" + kc, "PATH=/usr/bin"}, env...), dir)
	}
	base := capture([]string{"--context", "ctx"}, "PWD=/a", "TERM=xterm", "AWS_PROFILE=dev")
	if len(base.Files) != 1 || base.Files[0].Path != kc || base.Files[0].SHA256 == "" {
		t.Fatalf("files %+v: want the kubeconfig with its hash", base.Files)
	}
	same := capture([]string{"--context", "ctx"}, "PWD=/b", "OLDPWD=/a", "TERM=screen", "FOO=secret", "AWS_PROFILE=dev")
	if !base.Equal(same) {
		t.Fatalf("another folder and terminal made another identity:\n%+v\n%+v", base, same)
	}
	for name, other := range map[string]Identity{
		"another flag value": capture([]string{"--context", "other"}, "AWS_PROFILE=dev"),
		"one flag more":      capture([]string{"--context", "ctx", "--namespace", "n"}, "AWS_PROFILE=dev"),
		"another profile":    capture([]string{"--context", "ctx"}, "AWS_PROFILE=prod"),
		"a proxy":            capture([]string{"--context", "ctx"}, "AWS_PROFILE=dev", "HTTPS_PROXY=http://p:3128"),
	} {
		if base.Equal(other) || other.Equal(base) {
			t.Errorf("%s: equal", name)
		}
	}
	write(t, dir, "kc.yaml", kubeconfig("ctx", "u", "https://b.example:6443", ""))
	if edited := capture([]string{"--context", "ctx"}, "AWS_PROFILE=dev"); base.Equal(edited) {
		t.Error("an edited kubeconfig: equal")
	}
	// Without KUBECONFIG, the file in effect is the command's HOME's.
	f := NewFlags()
	fs := pflag.NewFlagSet("kpf", pflag.ContinueOnError)
	f.AddFlags(fs)
	if id := f.Capture(fs, []string{"HOME=/home/u"}, dir); len(id.Files) != 1 || id.Files[0].Path != "/home/u/.kube/config" || id.Files[0].SHA256 != "" {
		t.Errorf("files %+v: want /home/u/.kube/config, missing", id.Files)
	}
}

// PATH is where exec credential plugins are found: it is part of the
// identity when a kubeconfig in effect has one, and only then, so that a
// virtualenv or direnv that changes PATH from one folder to the next does
// not make applying a file again restart its forwards.
func TestPathOnlyWithPlugins(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "plain.yaml", kubeconfig("ctx", "u", "https://a.example:6443", ""))
	write(t, dir, "exec.yaml", kubeconfig("ctx", "u", "https://a.example:6443", `
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: my-plugin`))
	capture := func(kc, path string) Identity {
		f := NewFlags()
		fs := pflag.NewFlagSet("kpf", pflag.ContinueOnError)
		f.AddFlags(fs)
		return f.Capture(fs, []string{"KUBECONFIG=" + filepath.Join(dir, kc), "PATH=" + path, "HOME=/home/u"}, dir)
	}
	if a, b := capture("plain.yaml", "/usr/bin"), capture("plain.yaml", "/venv/bin:/usr/bin"); !a.Equal(b) {
		t.Errorf("another PATH with no plugin to find made another identity:\n%+v\n%+v", a, b)
	}
	a, b := capture("exec.yaml", "/usr/bin"), capture("exec.yaml", "/venv/bin:/usr/bin")
	if a.Equal(b) || a.Getenv("PATH") != "/usr/bin" {
		t.Errorf("with an exec plugin, PATH is kept and compared: %+v", a)
	}
}

// TestStorableLeavesOutCredentials: what the daemon writes to disk holds
// no token, password, secret variable or proxy password, and says what
// it left out; a plain identity is written whole.
func TestStorableLeavesOutCredentials(t *testing.T) {
	id := Identity{
		Flags: map[string][]string{"kubeconfig": {"/k"}, "token": {"sekrit-token"}, "password": {"sekrit-pw"}, "context": {"dev"}},
		Env: []string{
			"AWS_PROFILE=dev", "AWS_SECRET_ACCESS_KEY=sekrit-aws", "AWS_SESSION_TOKEN=sekrit-sess", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE=/ca.pem",
			"AZURE_CLIENT_SECRET=sekrit-az", "VAULT_TOKEN=sekrit-vault", "OS_PASSWORD=sekrit-os", "IBMCLOUD_API_KEY=sekrit-ibm", "GOOGLE_APPLICATION_CREDENTIALS=/sa.json",
			"CORP_SSO=sekrit-corp", "HOME=/home/u", "HTTPS_PROXY=http://u:sekrit-proxy@proxy:3128",
			"HTTP_PROXY=http://proxy:3128", "KPF_PASS_ENV=CORP_SSO", "KUBECONFIG=/k", "all_proxy=u:sekrit-bare@proxy:1080",
		},
		Files: []File{{Path: "/k", SHA256: "ab"}},
	}
	got, withheld := id.Storable()
	b, _ := json.Marshal(got)
	if strings.Contains(string(b), "sekrit") {
		t.Errorf("a credential in what is written: %s", b)
	}
	want := []string{"--password", "--token", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET", "VAULT_TOKEN", "OS_PASSWORD", "IBMCLOUD_API_KEY", "CORP_SSO", "HTTPS_PROXY", "all_proxy"}
	if !slices.Equal(withheld, want) {
		t.Errorf("withheld %q, want %q", withheld, want)
	}
	for _, kv := range []string{"AWS_PROFILE=dev", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE=/ca.pem", "GOOGLE_APPLICATION_CREDENTIALS=/sa.json", "HOME=/home/u", "HTTP_PROXY=http://proxy:3128", "KUBECONFIG=/k", "KPF_PASS_ENV=CORP_SSO"} {
		if !slices.Contains(got.Env, kv) {
			t.Errorf("%s not kept: %q", kv, got.Env)
		}
	}
	if got.Get("context") != "dev" || got.Get("kubeconfig") != "/k" || len(got.Files) != 1 {
		t.Errorf("flags or files lost: %+v", got)
	}
	plain := Identity{Flags: map[string][]string{"kubeconfig": {"/k"}}, Env: []string{"HOME=/h", "KUBECONFIG=/k"}, Files: []File{{Path: "/k"}}}
	if got, withheld := plain.Storable(); len(withheld) != 0 || !got.Equal(plain) {
		t.Errorf("a plain identity: %+v, withheld %q", got, withheld)
	}
}

// TestRehash: a file whose bytes changed (or that went) is named, and
// the identity carries the new hashes.
func TestRehash(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, []byte("a"), 0o600)
	os.WriteFile(b, []byte("b"), 0o600)
	id := Identity{Files: []File{{Path: a, SHA256: hashFile(a)}, {Path: b, SHA256: hashFile(b)}}}
	if _, changed := id.Rehash(); len(changed) != 0 {
		t.Fatalf("nothing changed, yet %q", changed)
	}
	os.WriteFile(b, []byte("b2"), 0o600)
	os.Remove(a)
	got, changed := id.Rehash()
	if !slices.Equal(changed, []string{a, b}) || got.Files[0].SHA256 != "" || got.Files[1].SHA256 != hashFile(b) {
		t.Errorf("changed %q, files %+v", changed, got.Files)
	}
}
