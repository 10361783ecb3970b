// Package mcp is `kpf mcp`: a Model Context Protocol server (over stdio,
// with the official Go SDK) whose tools let an AI agent find what it can
// forward to, forward to it through the kpf daemon, and see how that
// goes. It talks to the daemon through its API as the identity of the
// kpf mcp process, and to the cluster (to list contexts, namespaces and
// targets) through Cluster, which the CLI supplies. No tool takes a
// kubeconfig's contents, a token or a password; every forward it starts
// listens on loopback, carries the origin "started by mcp", and is
// stopped when the session ends unless the call asked to keep it.
package mcp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/kpf-dev/kpf/internal/spec"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// Origin labels the forwards kpf mcp starts, in kpf status.
const Origin = "started by mcp"

// Daemon is what the tools ask of the daemon (daemon.Client).
type Daemon interface {
	Status(ctx context.Context, file string) (*api.Status, error)
	Start(ctx context.Context, req api.StartRequest) (*api.Forward, error)
	Stop(ctx context.Context, name, file string) (*api.Forward, error)
	Doctor(ctx context.Context, name, file string) (*api.DoctorResult, error)
	HTTPLog(ctx context.Context, name, file string, lines int) ([]string, error)
}

// Context is a kubeconfig context.
type Context struct {
	Name      string `json:"name"`
	Cluster   string `json:"cluster"`
	User      string `json:"user"`
	Namespace string `json:"namespace,omitempty"`
	Current   bool   `json:"current"`
}

// Target is something to forward to, with its ports.
type Target struct {
	Target string   `json:"target"` // TYPE/NAME, as start_forward takes it
	Ports  []string `json:"ports"`  // "80 (http) -> 8080" as the target declares them
	Ready  string   `json:"ready,omitempty"`
}

// Cluster lists what the tools show of the cluster, as the kpf mcp
// process's identity (with context, "" for the current one).
type Cluster interface {
	Contexts() ([]Context, error)
	Namespaces(ctx context.Context, context string) ([]string, error)
	Targets(ctx context.Context, context, namespace string) ([]Target, error)
}

// Options make a Server.
type Options struct {
	Daemon   Daemon
	Cluster  Cluster
	Identity identity.Identity
	Settings spec.Settings
	ReadOnly bool // offer only the tools that change nothing
	// Context, if set (kpf mcp --context), is the only kubeconfig context
	// the tools offer and act in: a tool asked for another refuses.
	Context string
	Version string
	// Session, if set, is sent with the forwards that are not to be kept
	// (api.StartRequest.Session): the daemon stops them when the stream
	// that holds the session ends, even if kpf mcp is killed.
	Session string
}

// Server is one kpf mcp session.
type Server struct {
	o   Options
	srv *sdk.Server

	mu      sync.Mutex
	started []string // the forwards to stop when the session ends
}

// New makes the server and its tools.
func New(o Options) *Server {
	s := &Server{o: o}
	s.srv = sdk.NewServer(&sdk.Implementation{Name: "kpf", Version: o.Version}, &sdk.ServerOptions{
		Instructions: "kpf forwards local ports to services and pods of a Kubernetes cluster, through the user's kpf daemon and as the user's kubeconfig identity. To reach something in the cluster: list_targets (list_contexts and list_namespaces to look elsewhere), start_forward, then connect to the local address it returns; stop_forward when done. Forwards you start stop when this session ends unless you pass keep: true.",
	})
	s.tools()
	return s
}

// Run serves the session on t until it ends, then stops the forwards it
// started that were not to be kept.
func (s *Server) Run(ctx context.Context, t sdk.Transport) error {
	err := s.srv.Run(ctx, t)
	s.cleanup()
	return err
}

// cleanup stops this session's forwards, even when ctx has ended.
func (s *Server) cleanup() {
	s.mu.Lock()
	names := s.started
	s.started = nil
	s.mu.Unlock()
	for _, n := range names {
		s.o.Daemon.Stop(context.Background(), n, "")
	}
}

var (
	yes = true
	no  = false
)

// contextOf is the context a tool acts in: in, refused when kpf mcp was
// started with --context and in names another.
func (s *Server) contextOf(in string) (string, error) {
	if s.o.Context != "" && in != "" && in != s.o.Context {
		return "", fmt.Errorf("context %q: this kpf mcp was started with --context %s and acts in that context only (omit context, or ask the user to start kpf mcp without --context)", in, s.o.Context)
	}
	return in, nil
}

// ownForward reports whether name is a forward this kind of session may
// stop: one started through kpf mcp, never the user's own.
func (s *Server) ownForward(ctx context.Context, name string) error {
	st, err := s.o.Daemon.Status(ctx, "")
	if err != nil {
		return err
	}
	for _, f := range st.Forwards {
		if f.Name != name {
			continue
		}
		if f.Origin == Origin {
			return nil
		}
		from := f.File
		if from == "" {
			from = f.Origin
		}
		return fmt.Errorf("forward %q is the user's own (from %s), not one started through kpf mcp: stop_forward stops only those; ask the user to stop it (kpf down %s)", name, from, name)
	}
	return fmt.Errorf("no forward %q runs (status lists them)", name)
}

func readOnly(title string) *sdk.ToolAnnotations {
	return &sdk.ToolAnnotations{Title: title, ReadOnlyHint: true, OpenWorldHint: &yes}
}

type contextArgs struct {
	Context string `json:"context,omitempty" jsonschema:"a kubeconfig context name from list_contexts; omit for the current context"`
}

type namespaceArgs struct {
	Context   string `json:"context,omitempty" jsonschema:"a kubeconfig context name from list_contexts; omit for the current context"`
	Namespace string `json:"namespace,omitempty" jsonschema:"the namespace; omit for the context's default namespace"`
}

type startArgs struct {
	Target    string   `json:"target" jsonschema:"what to forward to, as TYPE/NAME: svc/web, deployment/api, pod/db-0 (list_targets lists them)"`
	Ports     []string `json:"ports" jsonschema:"ports as [LOCAL:]REMOTE, e.g. [\"8080\"], [\"5433:5432\"], or [\":80\"] for any free local port; REMOTE is the target's port (a service's port, or the pod's)"`
	Namespace string   `json:"namespace,omitempty" jsonschema:"the target's namespace; omit for the context's default"`
	Context   string   `json:"context,omitempty" jsonschema:"a kubeconfig context from list_contexts; omit for the current one"`
	Name      string   `json:"name,omitempty" jsonschema:"a name for the forward (lower-case, digits, dashes); omit to name it after the target"`
	Keep      bool     `json:"keep,omitempty" jsonschema:"keep the forward running after this session ends (default: it is stopped)"`
}

type nameArgs struct {
	Name string `json:"name" jsonschema:"the forward's name, as start_forward or status returned it"`
}

type logArgs struct {
	Name  string `json:"name" jsonschema:"the forward's name, as start_forward or status returned it"`
	Lines int    `json:"lines,omitempty" jsonschema:"how many of the last requests (default 20, at most 1000)"`
}

type roleArgs struct {
	Target    string `json:"target" jsonschema:"what the forward goes to, as TYPE/NAME: svc/web, deployment/api, pod/db-0"`
	Namespace string `json:"namespace" jsonschema:"the namespace the Role is for"`
}

// Results.
type (
	contextsOut struct {
		Contexts []Context `json:"contexts"`
	}
	namespacesOut struct {
		Namespaces []string `json:"namespaces"`
	}
	targetsOut struct {
		Namespace string   `json:"namespace"`
		Targets   []Target `json:"targets"`
	}
	startOut struct {
		Name    string   `json:"name"`
		Address string   `json:"address"` // the first local address: HOST:PORT
		Local   []string `json:"local"`
		Target  string   `json:"target"`
		Pod     string   `json:"pod,omitempty"`
		Kept    bool     `json:"kept"`
	}
	statusOut struct {
		Forwards []api.Forward `json:"forwards"`
	}
	stopOut struct {
		Stopped string `json:"stopped"`
	}
	roleOut struct {
		Role string `json:"role"`
	}
	logOut struct {
		Lines []string `json:"lines"`
	}
)

func (s *Server) tools() {
	sdk.AddTool(s.srv, &sdk.Tool{Name: "list_contexts", Annotations: readOnly("List kubeconfig contexts"),
		Description: "List the kubeconfig contexts kpf can use (name, cluster, user, default namespace, which one is current). Use it to choose the cluster before list_namespaces or list_targets. Returns {contexts: [...]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, _ struct{}) (*sdk.CallToolResult, contextsOut, error) {
			cs, err := s.o.Cluster.Contexts()
			if s.o.Context != "" { // pinned: the others are not offered
				cs = slices.DeleteFunc(cs, func(c Context) bool { return c.Name != s.o.Context })
			}
			return nil, contextsOut{Contexts: cs}, err
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "list_namespaces", Annotations: readOnly("List namespaces"),
		Description: "List the namespaces of a cluster (a kubeconfig context, or the current one). Use it to find where a service runs. Returns {namespaces: [...]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in contextArgs) (*sdk.CallToolResult, namespacesOut, error) {
			kctx, err := s.contextOf(in.Context)
			if err != nil {
				return nil, namespacesOut{}, err
			}
			ns, err := s.o.Cluster.Namespaces(ctx, kctx)
			return nil, namespacesOut{Namespaces: ns}, err
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "list_targets", Annotations: readOnly("List forwardable targets"),
		Description: "List what can be forwarded to in a namespace: services, deployments, statefulsets and pods, each as TYPE/NAME (what start_forward takes) with its ports. Use it before start_forward to get the target and port right. Returns {namespace, targets: [{target, ports, ready}]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in namespaceArgs) (*sdk.CallToolResult, targetsOut, error) {
			kctx, err := s.contextOf(in.Context)
			if err != nil {
				return nil, targetsOut{}, err
			}
			ts, err := s.o.Cluster.Targets(ctx, kctx, in.Namespace)
			if ts == nil {
				ts = []Target{}
			}
			return nil, targetsOut{Namespace: in.Namespace, Targets: ts}, err
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "status", Annotations: readOnly("Status of forwards"),
		Description: "Show every forward the user's kpf daemon runs (yours, labelled origin \"started by mcp\", and the user's own): state (ready, waiting for pod, reconnecting, failed), local addresses, pod, connections, bytes, last error. Use it to check a forward still works or to find its address. Returns {forwards: [...]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, _ struct{}) (*sdk.CallToolResult, statusOut, error) {
			st, err := s.o.Daemon.Status(ctx, "")
			if err != nil {
				return nil, statusOut{}, err
			}
			return nil, statusOut{Forwards: st.Forwards}, nil
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "doctor", Annotations: readOnly("Diagnose a forward"),
		Description: "Diagnose a running forward step by step, as kpf doctor does: kubeconfig, API server, identity, RBAC, the target and its pod (state, restarts, events), each port through a real tunnel, the local side, the transports. Each failed step says how to fix it. Use it when a forward is not ready or its connections fail. Returns {forward, ok, checks: [{step, status, summary, details, fix}]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in nameArgs) (*sdk.CallToolResult, *api.DoctorResult, error) {
			d, err := s.o.Daemon.Doctor(ctx, in.Name, "")
			return nil, d, err
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "rbac_role", Annotations: &sdk.ToolAnnotations{Title: "The Role a forward needs", ReadOnlyHint: true, OpenWorldHint: &no},
		Description: "Print the Kubernetes Role (YAML) that allows forwarding to a target in a namespace: the least kpf needs (get/list/watch pods, get the target, create pods/portforward). Use it when start_forward or doctor reports forbidden, to hand to the cluster's admin. Returns {role}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in roleArgs) (*sdk.CallToolResult, roleOut, error) {
			typ, _, ok := strings.Cut(in.Target, "/")
			if !ok {
				typ = "pod"
			}
			k, err := rbac.KindOf(typ)
			if err != nil {
				return nil, roleOut{}, err
			}
			ns := in.Namespace
			if ns == "" {
				return nil, roleOut{}, errors.New("namespace is empty: name the namespace the Role is for")
			}
			b, err := rbac.Manifest("kpf-forward", map[string][]rbac.Rule{ns: rbac.For([]rbac.Kind{k})}, nil)
			return nil, roleOut{Role: string(b)}, err
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "http_log", Annotations: readOnly("A forward's HTTP requests"),
		Description: "Show the last HTTP/1.x requests through a forward that start_forward started (method, path, status, sizes, duration, pod; never header values or bodies), one JSON object per line, oldest first. Use it to see what a client sent through the forward and what the service answered. Returns {lines: [...]}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in logArgs) (*sdk.CallToolResult, logOut, error) {
			n := in.Lines
			if n <= 0 {
				n = 20
			}
			n = min(n, 1000)
			l, err := s.o.Daemon.HTTPLog(ctx, in.Name, "", n)
			return nil, logOut{Lines: l}, err
		})
	if s.o.ReadOnly {
		return
	}
	sdk.AddTool(s.srv, &sdk.Tool{Name: "start_forward", Annotations: &sdk.ToolAnnotations{Title: "Start a forward", DestructiveHint: &no, OpenWorldHint: &yes},
		Description: "Forward local ports to a service, deployment or pod of the cluster, through the user's kpf daemon, as the user's kubeconfig identity. It listens on 127.0.0.1 only, follows the target's pods as they restart, logs HTTP requests (http_log), and waits up to 30s until the forward is ready. Connect your client to the returned address. The forward stops when this session ends unless keep is true; stop_forward stops it sooner. Returns {name, address, local, target, pod, kept}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in startArgs) (*sdk.CallToolResult, startOut, error) {
			kctx, err := s.contextOf(in.Context)
			if err != nil {
				return nil, startOut{}, err
			}
			f, err := s.o.Daemon.Start(ctx, api.StartRequest{Name: in.Name, Context: kctx, Namespace: in.Namespace, Target: in.Target, Ports: in.Ports,
				Address: "127.0.0.1", HTTPLog: true, Origin: Origin, Identity: s.o.Identity, Settings: s.o.Settings, Wait: "30s", Session: sessionOf(in.Keep, s.o.Session)})
			if err != nil {
				return nil, startOut{}, err
			}
			if !in.Keep {
				s.mu.Lock()
				s.started = append(s.started, f.Name)
				s.mu.Unlock()
			}
			out := startOut{Name: f.Name, Local: f.Local, Target: f.Target, Pod: f.Pod, Kept: in.Keep}
			if len(f.Local) > 0 {
				out.Address = f.Local[0]
			}
			return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: fmt.Sprintf("forwarding %s to %s (pod %s): connect to %s", f.Name, f.Target, f.Pod, out.Address)}}}, out, nil
		})
	sdk.AddTool(s.srv, &sdk.Tool{Name: "stop_forward", Annotations: &sdk.ToolAnnotations{Title: "Stop a forward", DestructiveHint: &yes, IdempotentHint: true, OpenWorldHint: &no},
		Description: "Stop a forward of the kpf daemon by name: its local port closes and open connections through it end. Use it when you no longer need a forward you started; it stops only forwards started through kpf mcp, never the user's own. Returns {stopped: NAME}."},
		func(ctx context.Context, _ *sdk.CallToolRequest, in nameArgs) (*sdk.CallToolResult, stopOut, error) {
			if err := s.ownForward(ctx, in.Name); err != nil {
				return nil, stopOut{}, err
			}
			if _, err := s.o.Daemon.Stop(ctx, in.Name, ""); err != nil {
				return nil, stopOut{}, err
			}
			s.mu.Lock()
			s.started = slicesDelete(s.started, in.Name)
			s.mu.Unlock()
			return nil, stopOut{Stopped: in.Name}, nil
		})
}

func slicesDelete(names []string, n string) []string {
	out := names[:0]
	for _, x := range names {
		if x != n {
			out = append(out, x)
		}
	}
	return out
}

func sessionOf(keep bool, session string) string {
	if keep {
		return ""
	}
	return session
}
