package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/rbac"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/target"
	"github.com/spf13/cobra"
)

const rbacExample = `  # A Role for forwarding to a service and a deployment of the current namespace
  kpf rbac svc/api deploy/web

  # A Role and RoleBinding per namespace for the forwards of kpf.yaml, for user alice
  kpf rbac -f kpf.yaml --subject user:alice | kubectl apply -f -`

// RBACOptions is kpf rbac.
type RBACOptions struct {
	g *globals

	File     string
	Subject  string
	Name     string
	UDPRelay string
	Expose   bool

	byNamespace map[string][]rbac.Kind
	proxies     map[string]bool // namespaces a proxy of the file serves
	relays      map[string]bool // namespaces with /udp ports (and so relays)
	dests       map[string]bool // namespaces with host/ or ip/ targets (and so their relay pods)
	discovers   map[string]bool // namespaces of discover: entries
	exposes     map[string]bool // the namespace of kpf expose (--expose)
	subject     *rbac.Subject
}

func newRBACCommand(g *globals) *cobra.Command {
	o := &RBACOptions{g: g, Name: "kpf-port-forward"}
	cmd := &cobra.Command{
		Use:   "rbac (TYPE/NAME... | -f FILE [NAME...] | --expose)",
		Short: "Print the least-privilege Role (and RoleBinding) kpf needs for these forwards",
		Long: `Print, as YAML for kubectl apply -f -, a Role per namespace with exactly
what kpf needs to forward to these targets: get, list and watch on pods
(kpf follows the pods behind a target), get on each target kind, and create
and get on pods/portforward (SPDY's upgrade needs create, WebSocket's get);
for a file's /udp ports, what their relay needs (--udp-relay); with
--expose, what kpf expose needs in the namespace (-n): its Service, its
EndpointSlice and relay pod to make and delete, and the tunnels to its relay.
With --subject, a RoleBinding to that user, group or service account too.
kpf doctor checks the same rules.`,
		Example:               rbacExample,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.File, "file", "f", "", "the forwards of this kpf.yaml (all, or the NAMEs given)")
	f.StringVar(&o.Subject, "subject", "", "also bind the Role to user:NAME, group:NAME or sa:NAMESPACE/NAME")
	f.StringVar(&o.Name, "name", o.Name, "name of the Role and RoleBinding")
	f.BoolVar(&o.Expose, "expose", false, "also (or only) what kpf expose needs in the namespace (-n): services get, create, update, delete; pods create, delete; endpointslices create, update, delete")
	f.StringVar(&o.UDPRelay, "udp-relay", "pod", "for a file's /udp ports, the rights of this relay mode: pod (create and delete pods) or ephemeral (patch pods/ephemeralcontainers)")
	return cmd
}

// Complete reads the targets and their namespaces.
func (o *RBACOptions) Complete(cmd *cobra.Command, args []string) error {
	if o.Subject != "" {
		s, err := rbac.ParseSubject(o.Subject)
		if err != nil {
			return usageError{err}
		}
		o.subject = &s
	}
	if o.Name == "" {
		return usagef("--name: the Role needs a name")
	}
	if !slices.Contains(spec.RelayModes, o.UDPRelay) {
		return usagef("--udp-relay %q: want %s", o.UDPRelay, strings.Join(spec.RelayModes, " or "))
	}
	var fws []config.Forward
	if o.File != "" {
		var err error
		if _, fws, err = loadForwards(o.File, args); err != nil {
			return err
		}
	} else {
		if len(args) == 0 && !o.Expose {
			return usagef("kpf rbac needs TYPE/NAME arguments, -f FILE or --expose")
		}
		for _, a := range args {
			fws = append(fws, config.Forward{Target: a})
		}
	}
	// The namespace of a forward without one: -n, or the kubeconfig's.
	id, err := o.g.identity(cmd)
	if err != nil {
		return err
	}
	def := "default"
	if flags, err := id.Getter(); err == nil {
		if ns, _, err := flags.ToRawKubeConfigLoader().Namespace(); err == nil && ns != "" {
			def = ns
		}
	}
	o.byNamespace = map[string][]rbac.Kind{}
	o.proxies = map[string]bool{}
	o.relays = map[string]bool{}
	o.dests = map[string]bool{}
	o.discovers = map[string]bool{}
	o.exposes = map[string]bool{}
	if o.Expose {
		ns := def
		if n, _ := cmd.Flags().GetString("namespace"); n != "" {
			ns = n
		}
		o.exposes[ns] = true
		o.byNamespace[ns] = append(o.byNamespace[ns], rbac.Pods)
	}
	for _, fw := range fws {
		ref := fw.Target
		if fw.Proxy != nil || fw.Discover != nil {
			ref = "services/any" // a proxy reads services and forwards to their pods; so does a discover entry
		}
		k, err := rbac.KindOf(ref)
		if err != nil {
			return usageError{fmt.Errorf("%s: %w", fw.Target, err)}
		}
		ns := fw.Namespace
		if ns == "" {
			ns = def
		}
		if _, isDest, err := target.ParseDestination(ref); err != nil {
			return usageError{err} // as kpf forward refuses it
		} else if !isDest {
			o.byNamespace[ns] = append(o.byNamespace[ns], k)
		} else if o.byNamespace[ns] == nil {
			o.byNamespace[ns] = []rbac.Kind{} // a namespace with destinations only
		}
		if fw.Proxy != nil {
			o.proxies[ns] = true
		}
		if fw.Discover != nil {
			o.discovers[ns] = true
		}
		if rbac.IsDestination(fw.Target) {
			o.dests[ns] = true
		} else if portspec.AnyUDP(fw.Ports) {
			o.relays[ns] = true
		}
	}
	return nil
}

// Run prints the manifest.
func (o *RBACOptions) Run(context.Context) error {
	rules := map[string][]rbac.Rule{}
	for ns, kinds := range o.byNamespace {
		if len(kinds) == 0 { // host/ and ip/ targets only: no object, no pod of theirs to get
			rules[ns] = rbac.ForDestinations()
		} else {
			rules[ns] = rbac.For(kinds)
		}
		if o.proxies[ns] {
			rules[ns] = append(rules[ns], rbac.Rule{Resource: "services", Verbs: []string{"list"}, Why: "kpf proxy: name the services there when a name matches none"})
		}
		if o.discovers[ns] {
			rules[ns] = append(rules[ns], rbac.Rule{Resource: "services", Verbs: []string{"list", "watch"}, Why: "discover: (kpf up --all): watch the services there, to forward each"})
		}
		if o.relays[ns] {
			rules[ns] = append(rules[ns], rbac.Relay(o.UDPRelay))
		}
		if o.dests[ns] && (!o.relays[ns] || o.UDPRelay == "ephemeral") && !o.exposes[ns] {
			rules[ns] = append(rules[ns], rbac.Destination())
		}
		if o.exposes[ns] {
			ex := rbac.Expose()
			if o.relays[ns] && o.UDPRelay != "ephemeral" {
				ex = slices.DeleteFunc(ex, func(r rbac.Rule) bool { return r.Group == "" && r.Resource == "pods" }) // the relay's pods create and delete are there already
			}
			rules[ns] = append(rules[ns], ex...)
		}
	}
	out, err := rbac.Manifest(o.Name, rules, o.subject)
	if err != nil {
		return err
	}
	_, err = o.g.out.Write(out)
	return err
}
