package mcp

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/testnet"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

type fakeDaemon struct {
	mu      sync.Mutex
	starts  []api.StartRequest
	stopped []string
}

func (d *fakeDaemon) Status(context.Context, string) (*api.Status, error) {
	return &api.Status{Forwards: []api.Forward{{Name: "web", Origin: Origin, State: "ready"}, {Name: "users-db", File: "/home/u/kpf.yaml", State: "ready"}}}, nil
}

func (d *fakeDaemon) Start(_ context.Context, req api.StartRequest) (*api.Forward, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts = append(d.starts, req)
	name := req.Name
	if name == "" {
		name = "web"
	}
	return &api.Forward{Name: name, Target: req.Target, Local: []string{"127.0.0.1:40123"}, Pod: "web-1", State: "ready"}, nil
}

func (d *fakeDaemon) Stop(_ context.Context, name, _ string) (*api.Forward, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = append(d.stopped, name)
	return &api.Forward{Name: name}, nil
}

func (d *fakeDaemon) Doctor(context.Context, string, string) (*api.DoctorResult, error) {
	return &api.DoctorResult{OK: true, Checks: []api.Check{}}, nil
}

func (d *fakeDaemon) HTTPLog(_ context.Context, _ string, _ string, n int) ([]string, error) {
	return []string{`{"method":"GET"}`}, nil
}

func (d *fakeDaemon) stops() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.stopped)
}

type fakeCluster struct{}

func (fakeCluster) Contexts() ([]Context, error) {
	return []Context{{Name: "dev", Cluster: "c", User: "u", Current: true}}, nil
}
func (fakeCluster) Namespaces(context.Context, string) ([]string, error) {
	return []string{"default", "shop"}, nil
}
func (fakeCluster) Targets(context.Context, string, string) ([]Target, error) {
	return []Target{{Target: "svc/web", Ports: []string{"80"}}}, nil
}

// session runs a server on in-memory transports; end ends the session and
// waits for the server to return.
func session(t *testing.T, o Options) (cs *sdk.ClientSession, end func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, ct := sdk.NewInMemoryTransports()
	s := New(o)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, st) }()
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "test"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	ended := false
	end = func() {
		if ended {
			return
		}
		ended = true
		cs.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the server did not return")
		}
		cancel()
	}
	t.Cleanup(end)
	return cs, end
}

func toolNames(t *testing.T, cs *sdk.ClientSession) map[string]*sdk.Tool {
	t.Helper()
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*sdk.Tool{}
	for _, tl := range res.Tools {
		out[tl.Name] = tl
	}
	return out
}

func TestTools(t *testing.T) {
	d := &fakeDaemon{}
	id := identity.Identity{}
	cs, end := session(t, Options{Daemon: d, Cluster: fakeCluster{}, Identity: id, Settings: spec.Defaults(), Session: "sess"})
	tools := toolNames(t, cs)
	var names []string
	for n, tl := range tools {
		names = append(names, n)
		if len(tl.Description) < 80 {
			t.Errorf("%s: a description a model can act on, please: %q", n, tl.Description)
		}
		for _, word := range []string{"kubeconfig_contents", "token", "password"} {
			if strings.Contains(strings.ToLower(string(mustJSON(tl.InputSchema))), word) {
				t.Errorf("%s takes %s", n, word)
			}
		}
	}
	slices.Sort(names)
	want := []string{"doctor", "http_log", "list_contexts", "list_namespaces", "list_targets", "rbac_role", "start_forward", "status", "stop_forward"}
	if !slices.Equal(names, want) {
		t.Fatalf("tools %v, want %v", names, want)
	}
	for _, n := range []string{"doctor", "http_log", "list_contexts", "list_namespaces", "list_targets", "rbac_role", "status"} {
		if !tools[n].Annotations.ReadOnlyHint {
			t.Errorf("%s is not marked read-only", n)
		}
	}
	if a := tools["stop_forward"].Annotations; a.ReadOnlyHint || a.DestructiveHint == nil || !*a.DestructiveHint {
		t.Errorf("stop_forward is not marked destructive: %+v", a)
	}

	call := func(name string, args any) map[string]any {
		t.Helper()
		res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			t.Fatal(err)
		}
		if res.IsError {
			t.Fatalf("%s: %+v", name, res.Content)
		}
		var out map[string]any
		json.Unmarshal(mustJSON(res.StructuredContent), &out)
		return out
	}
	out := call("start_forward", map[string]any{"target": "svc/web", "ports": []string{":80"}, "namespace": "shop"})
	if out["address"] != "127.0.0.1:40123" || out["name"] != "web" {
		t.Fatalf("start_forward: %v", out)
	}
	call("start_forward", map[string]any{"target": "svc/db", "ports": []string{"5432"}, "name": "db", "keep": true})
	d.mu.Lock()
	req := d.starts[0]
	d.mu.Unlock()
	if req.Origin != Origin || req.Address != "127.0.0.1" || req.Namespace != "shop" || !req.HTTPLog || req.Wait == "" || req.Session != "sess" {
		t.Fatalf("start request %+v: want origin, loopback, the namespace, an HTTP log, a wait, the session", req)
	}
	d.mu.Lock()
	kept := d.starts[1]
	d.mu.Unlock()
	if kept.Session != "" {
		t.Fatalf("a kept forward is tied to the session: %+v", kept)
	}
	role := call("rbac_role", map[string]any{"target": "svc/web", "namespace": "shop"})
	if r, _ := role["role"].(string); !strings.Contains(r, "pods/portforward") || !strings.Contains(r, "namespace: shop") {
		t.Fatalf("rbac_role: %v", role)
	}
	if l := call("http_log", map[string]any{"name": "web"}); l["lines"] == nil {
		t.Fatalf("http_log: %v", l)
	}
	// The session ends: what it started stops, unless kept.
	end()
	testnet.Within(t, 5*time.Second, "web stopped", func() bool { return slices.Contains(d.stops(), "web") })
	if slices.Contains(d.stops(), "db") {
		t.Fatal("db was to be kept")
	}
}

func TestReadOnly(t *testing.T) {
	cs, _ := session(t, Options{Daemon: &fakeDaemon{}, Cluster: fakeCluster{}, ReadOnly: true})
	tools := toolNames(t, cs)
	for n, tl := range tools {
		if !tl.Annotations.ReadOnlyHint {
			t.Errorf("--read-only offers %s, which is not read-only", n)
		}
	}
	if _, ok := tools["start_forward"]; ok || len(tools) != 7 {
		t.Fatalf("read-only tools: %v", tools)
	}
}

// An agent stops what it started, never the user's own forwards; and a
// kpf mcp started with --context acts in that context only.
func TestAgentStaysInItsLane(t *testing.T) {
	d := &fakeDaemon{}
	cs, _ := session(t, Options{Daemon: d, Cluster: fakeCluster{}, Context: "dev"})
	callErr := func(name string, args map[string]any) string {
		t.Helper()
		res, err := cs.CallTool(context.Background(), &sdk.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			return err.Error()
		}
		if !res.IsError {
			t.Fatalf("%s %v: no error", name, args)
		}
		return fmt.Sprint(res.Content[0].(*sdk.TextContent).Text)
	}
	if msg := callErr("stop_forward", map[string]any{"name": "users-db"}); !strings.Contains(msg, "the user's own") || slices.Contains(d.stops(), "users-db") {
		t.Fatalf("stop_forward of the user's forward: %q, stopped %v", msg, d.stops())
	}
	for _, tc := range []struct {
		tool string
		args map[string]any
	}{
		{"start_forward", map[string]any{"target": "svc/web", "ports": []string{"80"}, "context": "prod"}},
		{"list_namespaces", map[string]any{"context": "prod"}},
		{"list_targets", map[string]any{"context": "prod", "namespace": "shop"}},
	} {
		if msg := callErr(tc.tool, tc.args); !strings.Contains(msg, "--context dev") {
			t.Errorf("%s in context prod from a kpf mcp --context dev: %q", tc.tool, msg)
		}
	}
	d.mu.Lock()
	n := len(d.starts)
	d.mu.Unlock()
	if n != 0 {
		t.Fatalf("a forward was started in another context")
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
