package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// kpf daemon install writes a user unit that systemd accepts, with the
// files and the connection flags of the command, readable by the user
// only; a --token or a --proxy-url with a password is refused (each
// named) and nothing is written; uninstall removes it.
func TestDaemonInstallWritesAUnitSystemdAccepts(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the systemd unit is Linux's")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("KUBECONFIG", "rel/kc.yaml")
	dir := t.TempDir()
	t.Chdir(dir)
	os.WriteFile("kpf.yaml", []byte("forwards:\n  - {name: api, target: svc/api, ports: [\"18080:80\"]}\n"), 0o600)
	run := func(args ...string) (string, int) {
		var out bytes.Buffer
		code := Run(context.Background(), args, &out, &out)
		return out.String(), code
	}
	for _, tc := range []struct {
		args  []string
		flags string
	}{
		{[]string{"--token", "s3cret"}, "--token"},
		{[]string{"--proxy-url=http://me:s3cret@proxy.example:3128"}, "--proxy-url (its password)"},
		{[]string{"--token=s3cret", "--proxy-url", "http://me:s3cret@proxy.example:3128"}, "--token, --proxy-url (its password)"},
	} {
		out, code := run(append([]string{"daemon", "install", "--no-start"}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(out, "error: "+tc.flags+": a unit file (and the daemon's command line, which every user of the machine can read) is no place for a credential; put it in a kubeconfig") {
			t.Errorf("install %v: exit %d\n%s", tc.args, code, out)
		}
		if strings.Contains(out, "s3cret") {
			t.Errorf("install %v printed the secret:\n%s", tc.args, out)
		}
		if _, err := os.Stat(filepath.Join(home, ".config", "systemd", "user", "kpf.service")); err == nil {
			t.Fatalf("install %v wrote a unit", tc.args)
		}
	}
	out, code := run("daemon", "install", "--no-start", "--context", "staging", "--as-group", "a b", "--proxy-url", "http://proxy.example:3128")
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	unit := filepath.Join(home, ".config", "systemd", "user", "kpf.service")
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{
		" daemon --apply " + filepath.Join(dir, "kpf.yaml") + " ",
		"--context=staging", `"--as-group=a b"`,
		"Environment=KUBECONFIG=" + filepath.Join(dir, "rel", "kc.yaml") + "\n",
		"WantedBy=default.target",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the unit lacks %q:\n%s", want, text)
		}
	}
	if fi, _ := os.Stat(unit); fi.Mode().Perm() != 0o600 {
		t.Errorf("the unit's mode is %v, want 0600", fi.Mode().Perm())
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is not installed: the unit is not verified")
	} else if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	if out, code := run("daemon", "uninstall"); code != 0 || !strings.Contains(out, "removed "+unit) {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(unit); !os.IsNotExist(err) {
		t.Fatalf("the unit is still there: %v", err)
	}
}
