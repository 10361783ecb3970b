package config

import (
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Discover is a discover: entry of kpf.yaml (or kpf up --all): every
// Service of a namespace that matches Selector, forwarded as the cluster
// has them now (internal/discover keeps the forwards in step). It is a
// Forward whose Discover is set; the forwards it makes carry its name as
// their Owner.
//
// The namespace whose services it forwards is the Forward's Namespace
// ("" for the context's).
type Discover struct {
	Selector string // a label selector, "" for every service
	Kinds    []string
}

// DiscoverKinds are the kinds of object a discover: entry forwards.
var DiscoverKinds = []string{"services"}

// DiscoverName is the name a discover: entry of namespace takes unless it
// names itself.
func DiscoverName(namespace string) string {
	if namespace == "" {
		return "discover"
	}
	return "discover-" + namespace
}

// DiscoverTarget is what a discover entry's row shows as its target.
func DiscoverTarget(d *Discover) string {
	t := strings.Join(d.Kinds, ",")
	if d.Selector != "" {
		t += " -l " + d.Selector
	}
	return t
}

// discoverEntries reads discover: (one entry, or a list of them).
func (p *yamlParser) discoverEntries(n *yaml.Node, d defaults) []Forward {
	if n.Kind == yaml.MappingNode {
		fw, _ := p.discover(n, "discover", 0, d)
		return []Forward{fw}
	}
	if n.Kind != yaml.SequenceNode {
		p.add(n, "discover", "must be a mapping like {namespace: shop, address: auto}, or a list of them")
		return nil
	}
	if len(n.Content) == 0 {
		p.add(n, "discover", "is empty")
	}
	var out []Forward
	for i, it := range n.Content {
		fw, _ := p.discover(it, fmt.Sprintf("discover[%d]", i), i, d)
		out = append(out, fw)
	}
	return out
}

func (p *yamlParser) discover(n *yaml.Node, where string, i int, d defaults) (Forward, bool) {
	dis := &Discover{Kinds: DiscoverKinds}
	fw := Forward{Pos: Pos{Line: n.Line, Index: i}, Context: d.context, Namespace: d.namespace, Addresses: d.addresses, Discover: dis}
	before := len(p.probs)
	p.mapping(n, where, map[string]func(k, v *yaml.Node){
		"name":    func(k, v *yaml.Node) { fw.Name = p.name(v, where+".name") },
		"context": func(k, v *yaml.Node) { fw.Context = p.str(v, where+".context") },
		"namespace": func(k, v *yaml.Node) {
			fw.Namespace = p.str(v, where+".namespace")
			if fw.Namespace != "" && len(validation.IsDNS1123Label(fw.Namespace)) > 0 {
				p.add(v, where+".namespace", "%q is not a namespace name (lower-case letters, digits and '-')", fw.Namespace)
			}
		},
		"selector": func(k, v *yaml.Node) {
			dis.Selector = p.str(v, where+".selector")
			if _, err := labels.Parse(dis.Selector); err != nil {
				p.add(v, where+".selector", "%q: not a label selector (like app=web or tier in (api,db)): %v", dis.Selector, err)
			}
		},
		"kinds": func(k, v *yaml.Node) {
			var kinds []string
			switch v.Kind {
			case yaml.ScalarNode:
				kinds = []string{p.str(v, where+".kinds")}
			case yaml.SequenceNode:
				for _, it := range v.Content {
					kinds = append(kinds, p.str(it, where+".kinds"))
				}
			default:
				p.add(v, where+".kinds", "must be a list of kinds, like [services]")
				return
			}
			if len(kinds) == 0 {
				p.add(v, where+".kinds", "is empty (want [%s])", strings.Join(DiscoverKinds, ", "))
				return
			}
			for _, k := range kinds {
				if !slices.Contains(DiscoverKinds, k) {
					p.add(v, where+".kinds", "%q: discover forwards %s only", k, strings.Join(DiscoverKinds, ", "))
					return
				}
			}
			slices.Sort(kinds)
			dis.Kinds = slices.Compact(kinds)
		},
		"address": func(k, v *yaml.Node) { fw.Addresses = p.addresses(v, where+".address") },
	})
	if fw.Name == "" {
		fw.Name = DiscoverName(fw.Namespace)
	}
	fw.Target = DiscoverTarget(dis)
	if len(fw.Addresses) == 0 {
		fw.Addresses = []string{"localhost"}
	}
	if len(fw.Addresses) == 1 && fw.Addresses[0] == Auto {
		// Each service it finds takes an address of its own.
		fw.AutoAddress, fw.Addresses = true, nil
	}
	return fw, len(p.probs) == before
}
