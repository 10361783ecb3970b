package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kpf rbac -f adds what a file's /udp ports' relay needs: pods to create
// and delete, or with --udp-relay ephemeral, pods/ephemeralcontainers to
// patch; a file of TCP forwards gets neither.
func TestRBACOfAFileWithUDPPorts(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, namespace: team}}]\ncurrent-context: c\n"), 0o600)
	udp := filepath.Join(dir, "udp.yaml")
	os.WriteFile(udp, []byte("forwards:\n  - {name: dns, target: svc/dns, ports: [\"5353:53/udp\"]}\n"), 0o600)
	tcp := filepath.Join(dir, "tcp.yaml")
	os.WriteFile(tcp, []byte("forwards:\n  - {name: api, target: svc/api, ports: [\"8080:80\"]}\n"), 0o600)
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), append([]string{"--kubeconfig", kubeconfig, "rbac"}, args...), &out, &errOut); code != 0 {
			t.Fatalf("kpf rbac %v: exit %d: %s", args, code, errOut.String())
		}
		return out.String()
	}
	if out := run("-f", udp); !strings.Contains(out, "#   create,delete pods: the UDP relay pod") || strings.Contains(out, "ephemeralcontainers") {
		t.Errorf("pod relay:\n%s", out)
	}
	if out := run("-f", udp, "--udp-relay", "ephemeral"); !strings.Contains(out, "#   patch pods/ephemeralcontainers: the UDP relay") || strings.Contains(out, "create,delete pods") {
		t.Errorf("ephemeral relay:\n%s", out)
	}
	if out := run("-f", tcp); strings.Contains(out, "relay") {
		t.Errorf("a file without /udp ports:\n%s", out)
	}
	// With --expose too: the relay's pods rule once, and kpf expose's
	// EndpointSlice rule kept.
	if out := run("-f", udp, "--expose"); strings.Count(out, "#   create,delete pods") != 1 || !strings.Contains(out, "#   create,update,delete endpointslices.discovery.k8s.io: kpf expose") {
		t.Errorf("a file with /udp ports and --expose:\n%s", out)
	}
	two := filepath.Join(dir, "two.yaml")
	os.WriteFile(two, []byte("forwards:\n  - {name: a, target: svc/dns, ports: [\"5353:53/udp\"]}\n  - {name: b, target: svc/dns2, ports: [\"5354:53/udp\"]}\n"), 0o600)
	if out := run("-f", two); strings.Count(out, "the UDP relay pod") != 1 {
		t.Errorf("two forwards with /udp ports in one namespace: want the relay's rule once:\n%s", out)
	}
	var errOut bytes.Buffer
	if code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "rbac", "-f", udp, "--udp-relay", "job"}, &bytes.Buffer{}, &errOut); code == 0 || !strings.Contains(errOut.String(), `--udp-relay "job": want pod or ephemeral`) {
		t.Errorf("--udp-relay job: exit %d, %s", code, errOut.String())
	}
}

// kpf rbac host/NAME or ip/ADDR: what pod targets need (pods followed,
// tunnels), and the relay pod to create and delete; with a file's
// kpf.yaml too. ip/ is no IPAddress: no rule of networking.k8s.io.
func TestRBACOfDestinations(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, namespace: team}}]\ncurrent-context: c\n"), 0o600)
	file := filepath.Join(dir, "kpf.yaml")
	os.WriteFile(file, []byte("forwards:\n  - {name: db, target: host/orders.example, ports: [\"5432\"]}\n"), 0o600)
	for _, args := range [][]string{{"ip/10.1.2.3"}, {"host/orders.example"}, {"-f", file}} {
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), append([]string{"--kubeconfig", kubeconfig, "rbac"}, args...), &out, &errOut); code != 0 {
			t.Fatalf("kpf rbac %v: exit %d: %s", args, code, errOut.String())
		}
		s := out.String()
		for _, want := range []string{"#   list,watch pods: follow the relay pods kpf made", "#   create,get pods/portforward", "#   create,delete pods: the relay pod of host/ and ip/ targets"} {
			if !strings.Contains(s, want) {
				t.Errorf("kpf rbac %v: no %q in\n%s", args, want, s)
			}
		}
		// No get on pods: kpf knows the relay pods it made, and a
		// destination has no object to read.
		if strings.Contains(s, "get,list,watch") || strings.Contains(s, "get pods:") {
			t.Errorf("kpf rbac %v asks for get on pods, which a host/ or ip/ forward never does:\n%s", args, s)
		}
		if strings.Contains(s, "networking.k8s.io") || strings.Contains(s, "ipaddresses") {
			t.Errorf("kpf rbac %v names IPAddresses:\n%s", args, s)
		}
	}
	// What kpf forward refuses, kpf rbac refuses too, with its words.
	for _, bad := range []string{"ip/0.0.0.0", "ip/255.255.255.255", "ip/224.0.0.1", "ip/127.0.0.1", "host/localhost"} {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "rbac", bad}, &out, &errOut)
		if code == 0 || !strings.Contains(errOut.String(), `target "`+bad+`"`) || out.Len() != 0 {
			t.Errorf("kpf rbac %s: exit %d, %q, printed %q; want refused naming it", bad, code, errOut.String(), out.String())
		}
	}
}

// kpf rbac --expose: what kpf expose needs in the namespace.
func TestRBACOfExpose(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "config")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, namespace: team}}]\ncurrent-context: c\n"), 0o600)
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"--kubeconfig", kubeconfig, "rbac", "--expose", "-n", "web"}, &out, &errOut); code != 0 {
		t.Fatalf("kpf rbac --expose: exit %d: %s", code, errOut.String())
	}
	s := out.String()
	for _, want := range []string{"namespace: web", "#   get,list,watch pods", "#   create,get pods/portforward", "#   get,create,update,delete services: kpf expose", "#   create,delete pods: kpf expose", "#   create,update,delete endpointslices.discovery.k8s.io: kpf expose"} {
		if !strings.Contains(s, want) {
			t.Errorf("kpf rbac --expose: no %q in\n%s", want, s)
		}
	}
}
