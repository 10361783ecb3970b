package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
