package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/sandbox/cluster"
	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// serviceYAML is a service of the web pods at port, to their 8080.
func serviceYAML(name string, port int) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {selector: {app: web}, ports: [{port: %d, targetPort: 8080}]}\n", name, port)
}

// informers counts the informers (each one list and one watch) of a kpf
// process serving pprof at debug: of pods (follow.Watches) and of
// services (discover.Watches), by the goroutine that runs each.
func informers(t *testing.T, debug string) (pods, services int) {
	t.Helper()
	resp, err := http.Get("http://" + debug + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, g := range strings.Split(string(b), "\n\n") {
		if !strings.Contains(g, "sharedIndexInformer).RunWithContext") {
			continue
		}
		switch {
		case strings.Contains(g, "internal/follow.runPodWatch"):
			pods++
		case strings.Contains(g, "internal/discover.runServiceWatch"):
			services++
		}
	}
	return pods, services
}

// TestUpAllFollowsTheNamespace: kpf up --all -n NS --address auto -d
// forwards every service of the namespace at an address of its own and
// its real port, named by kpf hosts; a service created is forwarded
// within 5 s, one whose port changes follows it, one deleted stops; 50
// created at once come up on one pod watch and one service watch.
func TestUpAllFollowsTheNamespace(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1) // deployment and service web (port 80)
	k := newKpfCmd(t, sb)
	// The daemon, started here to serve pprof: its informers (one watch
	// each) are counted in its goroutines, which other tests' watches on
	// the shared API server do not disturb.
	d := sandboxtest.Start(t, k.cmd("daemon", "--debug-addr", "127.0.0.1:0"))
	debug := d.WaitLine(t, `Debug server on http://(\S+)/debug/pprof/`, 10*time.Second)[1]
	sandboxtest.WaitFor(t, 10*time.Second, "the daemon to answer", func() (bool, error) {
		_, code := k.run(t, "status")
		return code == 0, nil
	})
	if out, code := k.run(t, "up", "--all", "-n", ns, "--address", "auto", "-d"); code != 0 {
		t.Fatalf("kpf up --all -d: exit %d\n%s", code, out)
	}
	rows := func() map[string]statusRow {
		out := map[string]statusRow{}
		for _, r := range k.status(t).Forwards {
			out[r.Name] = r
		}
		return out
	}
	// ready waits until name is forwarded, ready, at an address of its
	// own and port, and serves; it returns the address.
	ready := func(name string, port int, within time.Duration) string {
		t.Helper()
		var addr string
		sandboxtest.WaitFor(t, within, name+" forwarded and ready", func() (bool, error) {
			r, ok := rows()[name]
			if !ok || r.State != "ready" || len(r.Local) != 1 {
				return false, nil
			}
			addr = r.Local[0]
			return true, nil
		})
		host, p, _ := net.SplitHostPort(addr)
		if !strings.HasPrefix(host, "127.20.") || p != strconv.Itoa(port) {
			t.Fatalf("%s listens on %s, want an address of its own in 127.20.0.0/16 at port %d", name, addr, port)
		}
		if _, err := fetch(addr, 1024); err != nil {
			t.Fatalf("%s at %s: %v", name, addr, err)
		}
		return addr
	}
	gone := func(name, addr string) {
		t.Helper()
		sandboxtest.WaitFor(t, 5*time.Second, name+" to stop", func() (bool, error) {
			_, ok := rows()[name]
			return !ok, nil
		})
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s stopped, but %s still accepts", name, addr)
		}
	}
	// hostsNames checks that kpf hosts gives each name (NAME.NAMESPACE)
	// the address (HOST:PORT) of its forward.
	hostsNames := func(want map[string]string) {
		t.Helper()
		out, code := k.run(t, "hosts")
		if code != 0 {
			t.Fatalf("kpf hosts: exit %d\n%s", code, out)
		}
		for name, addr := range want {
			host, _, _ := net.SplitHostPort(addr)
			found := false
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				found = found || len(f) > 1 && f[0] == host && slices.Contains(f[1:], name)
			}
			if !found {
				t.Errorf("kpf hosts does not give %s the address %s:\n%s", name, host, out)
			}
		}
	}
	web := ready("web."+ns+":80", 80, 30*time.Second)
	hostsNames(map[string]string{"web." + ns: web})

	if r := rows()["discover-"+ns]; r.State != "ready" {
		t.Errorf("the entry's row: %+v, want discover-%s ready", r, ns)
	}

	created := time.Now()
	sb.Apply(t, ns, serviceYAML("api", 8081))
	api := ready("api."+ns+":8081", 8081, 5*time.Second)
	t.Logf("a service created: forwarded and serving %s after kubectl apply", time.Since(created).Round(10*time.Millisecond))
	if strings.Split(api, ":")[0] == strings.Split(web, ":")[0] {
		t.Errorf("api and web share the address %s", api)
	}
	hostsNames(map[string]string{"web." + ns: web, "api." + ns: api})

	sb.Apply(t, ns, serviceYAML("api", 8082))
	api2 := ready("api."+ns+":8082", 8082, 5*time.Second)
	gone("api."+ns+":8081", api)
	if strings.Split(api2, ":")[0] != strings.Split(api, ":")[0] {
		t.Errorf("api moved from %s to %s: a service keeps its address", api, api2)
	}

	if out, err := sb.KubectlRun(t, "delete", "-n", ns, "svc/api"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	gone("api."+ns+":8082", api2)

	var many strings.Builder
	for i := range 50 {
		fmt.Fprintf(&many, "---\n%s", serviceYAML(fmt.Sprintf("s%02d", i), 9000+i))
	}
	start := time.Now()
	sb.Apply(t, ns, many.String())
	for i := range 50 {
		ready(fmt.Sprintf("s%02d.%s:%d", i, ns, 9000+i), 9000+i, 60*time.Second)
	}
	t.Logf("50 services created at once: all forwarded and serving %s after kubectl apply", time.Since(start).Round(100*time.Millisecond))
	pods, services := informers(t, debug)
	if pods != 1 || services != 1 {
		t.Errorf("52 forwards of a namespace run on %d pod watches and %d service watches, want 1 and 1", pods, services)
	}

	// kpf down of the entry stops its forwards with it (and the daemon,
	// left with nothing to run, exits).
	out, code := k.run(t, "down", "discover-"+ns)
	if code != 0 || !strings.Contains(out, "web."+ns+":80") {
		t.Fatalf("kpf down discover-%s: exit %d, want web's forward stopped too\n%s", ns, code, out)
	}
	if c, err := net.DialTimeout("tcp", web, time.Second); err == nil {
		c.Close()
		t.Errorf("the entry is down, but web's %s still accepts", web)
	}
}

// TestUpAllForwardsHeadlessPods: a headless service's pods are forwarded
// one by one, each at its own address, named by kpf hosts as the
// cluster's DNS names them (db-0.db.NS), following the pods as they go.
func TestUpAllForwardsHeadlessPods(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	sb.Apply(t, ns, `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: http, image: kpf.test/http, ports: [{name: main, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432, targetPort: main}]}
`)
	sb.ReadyPods(t, ns, "app=db", 2)
	k := newKpfCmd(t, sb)
	if out, code := k.run(t, "up", "--all", "-n", ns, "--address", "auto", "-d"); code != 0 {
		t.Fatalf("kpf up --all -d: exit %d\n%s", code, out)
	}
	local := map[string]string{}
	sandboxtest.WaitFor(t, 30*time.Second, "db-0 and db-1 forwarded and ready", func() (bool, error) {
		clear(local)
		for _, r := range k.status(t).Forwards {
			if r.State == "ready" && len(r.Local) == 1 {
				local[r.Name] = r.Local[0]
			}
		}
		return local["db-0.db."+ns+":5432"] != "" && local["db-1.db."+ns+":5432"] != "", nil
	})
	out, _ := k.run(t, "hosts")
	for _, pod := range []string{"db-0", "db-1"} {
		addr := local[pod+".db."+ns+":5432"]
		if got := servedBy(t, addr); got != pod {
			t.Errorf("%s at %s is served by %q", pod, addr, got)
		}
		host, _, _ := net.SplitHostPort(addr)
		if !strings.Contains(out, host+"\t"+pod+".db."+ns+" ") {
			t.Errorf("kpf hosts does not give %s.db.%s the address %s:\n%s", pod, ns, host, out)
		}
	}
	if out, err := sb.KubectlRun(t, "scale", "-n", ns, "statefulset/db", "--replicas=1"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "db-1's forward to stop with its pod", func() (bool, error) {
		for _, r := range k.status(t).Forwards {
			if r.Name == "db-1.db."+ns+":5432" {
				return false, nil
			}
		}
		return true, nil
	})
}

// TestUpAllSaysWhyAPortCannotBeBound: two services at one port on one
// address: one is forwarded, the other says why it is not, and the
// discovery goes on.
func TestUpAllSaysWhyAPortCannotBeBound(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sb.Apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: one, labels: {port: shared}}
spec: {selector: {app: web}, ports: [{port: %d, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: two, labels: {port: shared}}
spec: {selector: {app: web}, ports: [{port: %d, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, labels: {port: shared}}
spec: {type: ExternalName, externalName: example.com}
`, port, port))
	k := newKpfCmd(t, sb)
	if out, code := k.run(t, "up", "--all", "-n", ns, "-l", "port=shared", "--address", "127.0.0.1", "-d"); code != 0 {
		t.Fatalf("kpf up --all -d: exit %d\n%s", code, out)
	}
	var ready, failed statusRow
	sandboxtest.WaitFor(t, 30*time.Second, "one forward ready and the other failed", func() (bool, error) {
		ready, failed = statusRow{}, statusRow{}
		for _, r := range k.status(t).Forwards {
			switch {
			case strings.HasPrefix(r.Name, "discover-"):
			case r.State == "ready":
				ready = r
			case r.State == "failed":
				failed = r
			}
		}
		return ready.Name != "" && failed.Name != "", nil
	})
	if _, err := fetch(ready.Local[0], 1024); err != nil {
		t.Errorf("%s: %v", ready.Name, err)
	}
	want := fmt.Sprintf("listen tcp4 127.0.0.1:%d: bind: address already in use", port)
	if !strings.Contains(failed.LastError, want) {
		t.Errorf("%s: last error %q, want it to say %q", failed.Name, failed.LastError, want)
	}
	if doctor := "kpf doctor -n " + ns + " svc/"; !strings.Contains(failed.LastError, doctor) {
		t.Errorf("%s: last error %q does not name %q", failed.Name, failed.LastError, doctor)
	}
	// What is not forwarded is said in the entry's events.
	if out, _ := k.run(t, "logs"); !strings.Contains(out, "not forwarded: ext (ExternalName: nothing in the cluster to forward to)") {
		t.Errorf("kpf logs does not say why ext is not forwarded:\n%s", out)
	}
}

// TestRunAll: kpf run --all starts a forward per service, waits until
// they are ready, and gives the command each one's address as
// KPF_NAME_NAMESPACE_PORT_ADDR.
func TestRunAll(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := httpAppIn(t, sb, "web", 1)
	k := newKpfCmd(t, sb)
	key := "KPF_WEB_" + strings.ToUpper(strings.ReplaceAll(ns, "-", "_")) + "_80_ADDR"
	got := filepath.Join(t.TempDir(), "addr")
	cmd := k.cmd("run", "--all", "-n", ns, "--address", "auto", "--timeout", "60s", "--", "sh", "-c", "echo $"+key+" >"+got)
	out, err := runWithin(t, cmd, 90*time.Second)
	if err != nil {
		t.Fatalf("kpf run --all: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(got)
	addr := strings.TrimSpace(string(b))
	if host, port, err := net.SplitHostPort(addr); err != nil || !strings.HasPrefix(host, "127.20.") || port != "80" {
		t.Fatalf("%s=%q, want an address of its own at port 80\n%s", key, addr, out)
	}
}

// TestUpAllSaysWhyItCannotWatch: a user who may not list the namespace's
// services sees the entry failed, saying so.
func TestUpAllSaysWhyItCannotWatch(t *testing.T) {
	sb := sandboxtest.Get(t)
	ns := sb.Namespace(t)
	k := newKpfCmd(t, sb)
	k.kubeconfig = sb.Kubeconfig(cluster.UserDev)
	if out, code := k.run(t, "up", "--all", "-n", ns, "-d"); code != 0 {
		t.Fatalf("kpf up --all -d: exit %d\n%s", code, out)
	}
	sandboxtest.WaitFor(t, 30*time.Second, "the entry to fail, saying why", func() (bool, error) {
		for _, r := range k.status(t).Forwards {
			if r.Name == "discover-"+ns && r.State == "failed" {
				if !strings.Contains(r.LastError, "watch services in namespace "+ns) || !strings.Contains(r.LastError, "forbidden") {
					return false, fmt.Errorf("last error %q", r.LastError)
				}
				return true, nil
			}
		}
		return false, nil
	})
}
