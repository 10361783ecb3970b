package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// TestLoopbackAddressPerService: kpf up gives postgres and redis loopback
// addresses of their own (address: auto) at their real ports; kpf hosts
// --write puts their cluster names in a hosts file, through which psql and
// redis-cli reach them by name (the file bind-mounted on /etc/hosts in a
// mount namespace of their own); kpf down takes the block out again.
func TestLoopbackAddressPerService(t *testing.T) {
	needPrograms(t, "redis-server", "redis-cli", "psql", "unshare")
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a hosts file over /etc/hosts in a mount namespace: run it as root (CI does)")
	}
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	pgdir, err := os.MkdirTemp("", "kpf-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pgdir) })
	os.Chmod(pgdir, 0o777)
	sb.Apply(t, ns, sandboxtest.PostgresPod(pgdir)+"---"+sandboxtest.RedisPod+`
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{port: 6379}]}
`)
	sb.ReadyPods(t, ns, "app=postgres", 1)
	sb.ReadyPods(t, ns, "app=redis", 1)

	k := newKpfCmd(t, sb)
	file := k.write(t, "kpf.yaml", "defaults: {namespace: "+ns+", address: auto}\nforwards:\n"+
		"- {name: pg, target: svc/postgres, ports: [\"5432\"]}\n"+
		"- {name: cache, target: svc/redis, ports: [\"6379\"]}\n")
	if out, code := k.run(t, "up", "-d", "--wait", "-f", file); code != 0 {
		t.Fatalf("kpf up -d: exit %d\n%s", code, out)
	}
	local := map[string]string{}
	for _, f := range k.status(t).Forwards {
		if len(f.Local) != 1 || !strings.HasPrefix(f.Local[0], "127.20.") {
			t.Fatalf("%s listens on %v, want an address of its own in 127.20.0.0/16", f.Name, f.Local)
		}
		local[f.Name] = f.Local[0]
	}
	if !strings.HasSuffix(local["pg"], ":5432") || !strings.HasSuffix(local["cache"], ":6379") {
		t.Fatalf("not at their real ports: %v", local)
	}

	hostsFile := filepath.Join(t.TempDir(), "hosts")
	orig := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	os.WriteFile(hostsFile, []byte(orig), 0o644)
	if out, code := k.run(t, "hosts", "--write", hostsFile); code != 0 {
		t.Fatalf("kpf hosts --write: exit %d\n%s", code, out)
	}
	b, _ := os.ReadFile(hostsFile)
	pgHost, _, _ := strings.Cut(local["pg"], ":")
	if want := pgHost + "\tpostgres." + ns + " postgres." + ns + ".svc postgres." + ns + ".svc.cluster.local postgres\n"; !strings.HasPrefix(string(b), orig) || !strings.Contains(string(b), want) {
		t.Fatalf("hosts file:\n%s\nwant the original lines and %q", b, want)
	}
	script := `mount --bind "$1" /etc/hosts && redis-cli -h "redis.$2" -p 6379 ping && psql -h "postgres.$2.svc.cluster.local" -p 5432 -U postgres -Atc 'select 40 + 2'`
	out, err := exec.Command("unshare", "--mount", "sh", "-c", script, "sh", hostsFile, ns).CombinedOutput()
	if err != nil || strings.Fields(string(out))[0] != "PONG" || !strings.Contains(string(out), "\n42") {
		t.Fatalf("redis-cli and psql by name: %v\n%s", err, out)
	}

	if out, code := k.run(t, "down", "-f", file); code != 0 || !strings.Contains(out, "removed the kpf block") {
		t.Fatalf("kpf down: exit %d\n%s", code, out)
	}
	if b, _ := os.ReadFile(hostsFile); string(b) != orig {
		t.Fatalf("after kpf down the hosts file is:\n%s\nwant it as it was:\n%s", b, orig)
	}
}

// sudo kpf hosts --write FILE works as the README says, for the user who
// ran sudo: it reads that user's daemon (which lets root read its status
// and nothing else) and writes FILE as root; the user's kpf down, which
// cannot write FILE, says exactly which command removes the block, and
// that command does. A throwaway user stands in for the person, a
// root-owned file in a root-owned folder for /etc/hosts.
func TestSudoHostsWriteForTheUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("this test creates a throwaway user to run sudo as: run it as root (CI does)")
	}
	needPrograms(t, "sudo", "useradd", "userdel")
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "named", 1)

	// A folder the user may read: kpf, a kubeconfig of their own, the file.
	dir, err := os.MkdirTemp("", "kpf-sudo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "kpf")
	if b, err := os.ReadFile(kpfBin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("kpft%d", time.Now().UnixNano()%1000000)
	if out, err := exec.Command("useradd", "--no-create-home", "--home-dir", dir, "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	sudoers := "/etc/sudoers.d/" + name
	t.Cleanup(func() {
		os.Remove(sudoers)
		exec.Command("userdel", name).Run()
	})
	if err := os.WriteFile(sudoers, []byte(name+" ALL=(root) NOPASSWD: "+bin+"\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	kc := filepath.Join(dir, "kubeconfig")
	flat, err := sb.KubectlRun(t, "config", "view", "--raw", "--flatten", "--minify")
	if err != nil {
		t.Fatalf("%v\n%s", err, flat)
	}
	os.WriteFile(kc, []byte(flat), 0o600)
	os.Chown(kc, uid, gid)
	file := filepath.Join(dir, "kpf.yaml")
	os.WriteFile(file, []byte("defaults: {namespace: "+ns+", address: auto}\nforwards:\n- {name: web, target: svc/named, ports: [\":80\"]}\n"), 0o644)
	etc, err := os.MkdirTemp("", "kpf-etc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	os.Chmod(etc, 0o755)
	hostsFile := filepath.Join(etc, "hosts")
	orig := "127.0.0.1\tlocalhost\n"
	os.WriteFile(hostsFile, []byte(orig), 0o644)

	// As the user, with the environment sudo and a login give (no
	// KPF_HOME, no XDG_RUNTIME_DIR: the daemon lives in /tmp/kpf-UID).
	as := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = dir
		cmd.Env = []string{"HOME=" + dir, "USER=" + name, "LOGNAME=" + name, "PATH=/usr/local/bin:/usr/bin:/bin", "KUBECONFIG=" + kc}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := runWithin(t, cmd, 90*time.Second)
		return string(out), exitCode(err)
	}
	t.Cleanup(func() {
		as(bin, "down", "--all")
		os.RemoveAll(fmt.Sprintf("/tmp/kpf-%d", uid))
	})
	if out, code := as(bin, "up", "-d", "--wait", "--timeout", "60s", "-f", file); code != 0 {
		t.Fatalf("kpf up -d as %s: exit %d\n%s", name, code, out)
	}
	// The user may not write the file; root may.
	if out, code := as(bin, "hosts", "--write", hostsFile); code == 0 || !strings.Contains(out, "permission denied") {
		t.Fatalf("kpf hosts --write as the user: exit %d, want permission denied\n%s", code, out)
	}
	out, code := as("sudo", "-n", bin, "hosts", "--write", hostsFile)
	if code != 0 || !strings.Contains(out, "1 services; run sudo kpf hosts --write "+hostsFile+" again after kpf up -d or kpf down") {
		t.Fatalf("sudo kpf hosts --write: exit %d\n%s", code, out)
	}
	b, _ := os.ReadFile(hostsFile)
	if !strings.HasPrefix(string(b), orig) || !strings.Contains(string(b), "\tnamed."+ns+" named."+ns+".svc named."+ns+".svc.cluster.local named\n") {
		t.Fatalf("hosts file:\n%s", b)
	}
	list := fmt.Sprintf("/tmp/kpf-%d/hosts-files", uid)
	if fi, err := os.Stat(list); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Fatalf("%s: %v: want it written for the user, theirs", list, err)
	}
	// Root may read the user's daemon, not change it.
	rootClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", fmt.Sprintf("/tmp/kpf-%d/kpf.sock", uid))
	}}}
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{http.MethodGet, "/v1/status", http.StatusOK, `"schemaVersion":2`},
		{http.MethodPost, "/v1/down", http.StatusForbidden, "forbidden: root may only read the status of a user's kpf daemon (run this kpf command as yourself, without sudo)"},
		{http.MethodPost, "/v1/apply", http.StatusForbidden, "root may only read the status"},
	} {
		req, _ := http.NewRequest(c.method, "http://kpf"+c.path, strings.NewReader(`{"all":true}`))
		resp, err := rootClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s as root: %v", c.method, c.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(body), c.body) {
			t.Fatalf("%s %s as root: %d %s, want %d %q", c.method, c.path, resp.StatusCode, body, c.code, c.body)
		}
	}

	out, code = as(bin, "down", "--all")
	want := "the kpf block of " + hostsFile + " is out of date and you may not write that file: remove it with: sudo kpf hosts --write " + hostsFile
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("kpf down as the user: exit %d\n%s\nwant %q", code, out, want)
	}
	out, code = as("sudo", "-n", bin, "hosts", "--write", hostsFile)
	if code != 0 || !strings.Contains(out, "no service is forwarded; removed the kpf block") {
		t.Fatalf("sudo kpf hosts --write after down: exit %d\n%s", code, out)
	}
	if b, _ := os.ReadFile(hostsFile); string(b) != orig {
		t.Fatalf("after down and sudo kpf hosts --write the file is:\n%s\nwant it as it was:\n%s", b, orig)
	}
	if _, err := os.Stat(list); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", list, err)
	}
}
