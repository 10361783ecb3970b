// Package rbac says what a forward needs of RBAC, and writes it as a
// least-privilege Role and RoleBinding: kpf doctor checks these rules and
// kpf rbac prints them.
package rbac

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Rule is one permission: verbs on a resource of an API group.
type Rule struct {
	Group    string
	Resource string // "pods", "pods/portforward"
	Verbs    []string
	Why      string
}

// Kind is a target's resource, as the REST mapper names it.
type Kind struct{ Group, Resource string }

// Pods is the core group's pods.
var Pods = Kind{Resource: "pods"}

// For is what forwards to targets of these kinds need in one namespace:
// get, list and watch on pods (kpf follows the pods behind a target), get
// on each target kind, and create and get on pods/portforward (SPDY's
// upgrade is a POST, create; WebSocket's a GET, get).
func For(kinds []Kind) []Rule {
	rules := []Rule{{Resource: "pods", Verbs: []string{"get", "list", "watch"}, Why: "find the target's pods and follow them"}}
	seen := map[Kind]bool{Pods: true}
	sort.Slice(kinds, func(i, j int) bool {
		return kinds[i].Group+"/"+kinds[i].Resource < kinds[j].Group+"/"+kinds[j].Resource
	})
	for _, k := range kinds {
		if seen[k] {
			continue
		}
		seen[k] = true
		rules = append(rules, Rule{Group: k.Group, Resource: k.Resource, Verbs: []string{"get"}, Why: "read the target's selector and ports"})
	}
	return append(rules, Rule{Resource: "pods/portforward", Verbs: []string{"create", "get"}, Why: "open tunnels (create: SPDY, get: WebSocket)"})
}

// Relay is what the UDP relay of /udp ports needs, by --udp-relay mode:
// a relay pod to create and delete, or an ephemeral container to add.
func Relay(mode string) Rule {
	if mode == "ephemeral" {
		return Rule{Resource: "pods/ephemeralcontainers", Verbs: []string{"patch"}, Why: "the UDP relay of /udp ports (--udp-relay ephemeral): a container added to the target pod"}
	}
	return Rule{Resource: "pods", Verbs: []string{"create", "delete"}, Why: "the UDP relay pod of /udp ports: made when the forward starts, deleted when it stops"}
}

// ForDestinations is what host/ and ip/ targets need in a namespace
// with no other target, beside Destination: their relay pods followed
// (list, watch: the pods kpf made, which it knows without a get) and
// tunnels to them, as For's.
func ForDestinations() []Rule {
	return []Rule{
		{Resource: "pods", Verbs: []string{"list", "watch"}, Why: "follow the relay pods kpf made"},
		{Resource: "pods/portforward", Verbs: []string{"create", "get"}, Why: "open tunnels (create: SPDY, get: WebSocket)"},
	}
}

// Destination is what a host/ or ip/ target needs beside For's rules
// (it follows and tunnels to its relay pod as to any pod): its relay pod
// to create, and delete.
func Destination() Rule {
	return Rule{Resource: "pods", Verbs: []string{"create", "delete"}, Why: "the relay pod of host/ and ip/ targets, which dials the destination from inside the cluster: made when the forward starts (and again if it goes), deleted when it stops"}
}

// Expose is what kpf expose needs beside For's rules (it follows and
// tunnels to its relay pods as to any pod): its Service to read, make,
// own by a new relay pod and delete, and its relay pods to create and
// delete.
func Expose() []Rule {
	return []Rule{
		{Resource: "services", Verbs: []string{"get", "create", "update", "delete"}, Why: "kpf expose: its Service (never one it did not make: get refuses those), owned by its relay pods, deleted when it stops"},
		{Resource: "pods", Verbs: []string{"create", "delete"}, Why: "kpf expose: the relay pod the Service reaches, made when it starts (and again if it goes), deleted when it stops"},
		{Group: "discovery.k8s.io", Resource: "endpointslices", Verbs: []string{"create", "update", "delete"}, Why: "kpf expose: the Service's EndpointSlice, which names only the relay pod kpf made (the Service selects no pods by label), deleted when it stops"},
	}
}

// IsDestination: typeName is a host/ or ip/ target (whose "ip" wins over
// the IPAddress resource's short name).
func IsDestination(typeName string) bool {
	typ, _, ok := strings.Cut(typeName, "/")
	typ = strings.ToLower(typ)
	return ok && (typ == "host" || typ == "ip")
}

// kinds are the targets kpf forwards to, by every name kubectl accepts
// for them.
var kinds = map[string]Kind{}

func init() {
	for _, k := range []struct {
		group, resource string
		names           []string
	}{
		{"", "pods", []string{"po", "pod"}},
		{"", "services", []string{"svc", "service"}},
		{"", "replicationcontrollers", []string{"rc", "replicationcontroller"}},
		{"apps", "deployments", []string{"deploy", "deployment"}},
		{"apps", "replicasets", []string{"rs", "replicaset"}},
		{"apps", "statefulsets", []string{"sts", "statefulset"}},
		{"apps", "daemonsets", []string{"ds", "daemonset"}},
		{"batch", "jobs", []string{"job"}},
	} {
		kind := Kind{Group: k.group, Resource: k.resource}
		for _, n := range append(k.names, k.resource) {
			kinds[n] = kind
			if k.group != "" {
				kinds[n+"."+k.group] = kind
			}
		}
	}
}

// KindOf is the resource a TYPE/NAME names ("svc/api", "deployments.apps/web");
// a bare name is a pod.
func KindOf(typeName string) (Kind, error) {
	typ, _, ok := strings.Cut(typeName, "/")
	if !ok || IsDestination(typeName) {
		return Pods, nil // a destination's target is its relay pod
	}
	if k, ok := kinds[strings.ToLower(typ)]; ok {
		return k, nil
	}
	return Kind{}, fmt.Errorf("%q: kpf forwards to pods, services, deployments, replicasets, statefulsets, daemonsets, jobs and replicationcontrollers, and to host/NAME and ip/ADDR through a relay pod", typ)
}

// Name is how a rule reads in a message: "list pods", "get
// deployments.apps".
func Name(verb string, group, resource string) string {
	r := resource
	if group != "" {
		base, sub, hasSub := strings.Cut(resource, "/")
		r = base + "." + group
		if hasSub {
			r += "/" + sub
		}
	}
	return verb + " " + r
}

// Subject is who a RoleBinding binds: user:NAME, group:NAME or sa:NS/NAME.
type Subject struct {
	Kind      string // User, Group, ServiceAccount
	Name      string
	Namespace string // ServiceAccount
}

// ParseSubject parses --subject.
func ParseSubject(s string) (Subject, error) {
	kind, name, ok := strings.Cut(s, ":")
	if ok && name != "" {
		switch kind {
		case "user":
			return Subject{Kind: "User", Name: name}, nil
		case "group":
			return Subject{Kind: "Group", Name: name}, nil
		case "sa", "serviceaccount":
			ns, n, ok := strings.Cut(name, "/")
			if ok && ns != "" && n != "" && !strings.Contains(n, "/") {
				return Subject{Kind: "ServiceAccount", Name: n, Namespace: ns}, nil
			}
		}
	}
	return Subject{}, fmt.Errorf("--subject %q: want user:NAME, group:NAME or sa:NAMESPACE/NAME", s)
}

// Manifest writes a Role and a RoleBinding per namespace, as YAML
// documents for kubectl apply -f -.
func Manifest(name string, byNamespace map[string][]Rule, subject *Subject) ([]byte, error) {
	namespaces := make([]string, 0, len(byNamespace))
	for ns := range byNamespace {
		namespaces = append(namespaces, ns)
	}
	sort.Strings(namespaces)
	var b strings.Builder
	labels := map[string]string{"app.kubernetes.io/managed-by": "kpf"}
	for i, ns := range namespaces {
		type rule struct {
			APIGroups []string `yaml:"apiGroups"`
			Resources []string `yaml:"resources"`
			Verbs     []string `yaml:"verbs"`
		}
		var rules []rule
		for _, r := range byNamespace[ns] {
			rules = append(rules, rule{APIGroups: []string{r.Group}, Resources: []string{r.Resource}, Verbs: slices.Clone(r.Verbs)})
		}
		meta := map[string]any{"name": name, "namespace": ns, "labels": labels}
		docs := []any{map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules}}
		if subject != nil {
			s := map[string]any{"kind": subject.Kind, "name": subject.Name}
			switch subject.Kind {
			case "ServiceAccount":
				s["namespace"] = subject.Namespace
			default:
				s["apiGroup"] = "rbac.authorization.k8s.io"
			}
			docs = append(docs, map[string]any{
				"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
				"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
				"subjects": []any{s},
			})
		}
		for j, d := range docs {
			if i > 0 || j > 0 {
				b.WriteString("---\n")
			}
			if j == 0 {
				fmt.Fprintf(&b, "# What kpf needs to forward in namespace %s (kpf rbac):\n", ns)
				for _, r := range byNamespace[ns] {
					fmt.Fprintf(&b, "#   %s: %s\n", Name(strings.Join(r.Verbs, ","), r.Group, r.Resource), r.Why)
				}
			}
			enc := yaml.NewEncoder(&b)
			enc.SetIndent(2)
			if err := enc.Encode(d); err != nil {
				return nil, err
			}
			enc.Close()
		}
	}
	return []byte(b.String()), nil
}
