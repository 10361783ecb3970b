package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/portspec"
	"go.yaml.in/yaml/v3"
)

// yamlParser walks the YAML node tree so that every problem carries its
// line, and unknown keys are caught.
type yamlParser struct {
	autoOwner map[string]string // auto address -> the target that has it
	probs     []Problem
	dir       string // the file's folder, for relative paths in it
}

func (p *yamlParser) add(n *yaml.Node, field, format string, a ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.probs = append(p.probs, Problem{Line: line, Field: field, Msg: fmt.Sprintf(format, a...)})
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

type defaults struct {
	context, namespace string
	addresses          []string
	health             *Health
}

func parseYAML(path string, b []byte) (*File, error) {
	var doc yaml.Node
	p := &yamlParser{dir: filepath.Dir(path)}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		line := 0
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
		}
		return nil, &Error{Path: path, Problems: []Problem{{Line: line, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}}
	}
	f := &File{Path: path}
	if len(doc.Content) == 0 {
		return nil, &Error{Path: path, Problems: []Problem{{Line: 1, Msg: "the file is empty: it needs a forwards: list"}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.add(root, "", "the file must be a mapping with a forwards: list")
		return nil, asError(path, p.probs)
	}
	var def defaults
	var forwards, proxies, discover *yaml.Node
	p.mapping(root, "", map[string]func(k, v *yaml.Node){
		"version": func(k, v *yaml.Node) {
			if v.Value != "1" {
				p.add(v, "version", "%q: this kpf reads version 1", v.Value)
			}
		},
		"defaults": func(k, v *yaml.Node) { def = p.defaults(v) },
		"forwards": func(k, v *yaml.Node) { forwards = v },
		"proxies":  func(k, v *yaml.Node) { proxies = v },
		"discover": func(k, v *yaml.Node) { discover = v },
		"metrics": func(k, v *yaml.Node) {
			f.Metrics = p.str(v, "metrics")
			if _, _, err := net.SplitHostPort(f.Metrics); err != nil {
				p.add(v, "metrics", "%q: want HOST:PORT for Prometheus metrics, such as 127.0.0.1:9090", f.Metrics)
			}
		},
	})
	if proxies != nil {
		if proxies.Kind != yaml.SequenceNode {
			p.add(proxies, "proxies", "must be a list")
		} else {
			for i, n := range proxies.Content {
				if px, _ := p.proxy(n, i, def); px.Name != "" {
					f.Forwards = append(f.Forwards, px)
				}
			}
		}
	}
	if forwards == nil {
		if proxies == nil && discover == nil {
			p.add(root, "forwards", "missing: list the forwards to run (or discover: {namespace: NS} for every service of a namespace)")
		}
	} else if forwards.Kind != yaml.SequenceNode {
		p.add(forwards, "forwards", "must be a list")
	} else {
		for i, n := range forwards.Content {
			// Forwards with problems still take part in the cross checks
			// (names, ports), so that one run reports everything.
			if fw, _ := p.forward(n, i, def); fw.Name != "" {
				f.Forwards = append(f.Forwards, fw)
			}
		}
		if len(forwards.Content) == 0 {
			p.add(forwards, "forwards", "is empty")
		}
	}
	if discover != nil {
		f.Forwards = append(f.Forwards, p.discoverEntries(discover, def)...)
	}
	p.probs = append(p.probs, crossChecks(f.Forwards, true)...)
	return f, asError(path, p.probs)
}

// mapping calls the handler of each key, and reports unknown keys.
func (p *yamlParser) mapping(n *yaml.Node, where string, handlers map[string]func(k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.add(n, where, "must be a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := k.Value
		if where != "" {
			field = where + "." + k.Value
		}
		if seen[k.Value] {
			p.add(k, field, "given twice")
			continue
		}
		seen[k.Value] = true
		h, ok := handlers[k.Value]
		if !ok {
			var known []string
			for name := range handlers {
				known = append(known, name)
			}
			p.add(k, field, "unknown key (known here: %s)", strings.Join(sorted(known), ", "))
			continue
		}
		h(k, v)
	}
}

func sorted(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

func (p *yamlParser) str(v *yaml.Node, field string) string {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		p.add(v, field, "must be a string")
		return ""
	}
	return v.Value
}

func (p *yamlParser) addresses(v *yaml.Node, field string) []string {
	var raw []string
	switch v.Kind {
	case yaml.ScalarNode:
		raw = []string{v.Value}
	case yaml.SequenceNode:
		for _, n := range v.Content {
			raw = append(raw, p.str(n, field))
		}
	default:
		p.add(v, field, "must be an address or a list of them")
		return nil
	}
	var out []string
	for _, r := range raw {
		for _, a := range strings.Split(r, ",") {
			out = append(out, strings.TrimSpace(a))
		}
	}
	if slices.Contains(out, Auto) {
		if len(out) > 1 {
			p.add(v, field, "%q gives the forward a loopback address of its own and goes alone, not with %s", Auto, strings.Join(slices.DeleteFunc(slices.Clone(out), func(a string) bool { return a == Auto }), ", "))
			return nil
		}
		return out
	}
	if _, err := portspec.ParseAddresses(out); err != nil {
		p.add(v, field, "%s", strings.TrimPrefix(err.Error(), "--address "))
		return nil
	}
	return out
}

func (p *yamlParser) defaults(n *yaml.Node) defaults {
	var d defaults
	p.mapping(n, "defaults", map[string]func(k, v *yaml.Node){
		"context":   func(k, v *yaml.Node) { d.context = p.str(v, "defaults.context") },
		"namespace": func(k, v *yaml.Node) { d.namespace = p.str(v, "defaults.namespace") },
		"address":   func(k, v *yaml.Node) { d.addresses = p.addresses(v, "defaults.address") },
		"health":    func(k, v *yaml.Node) { d.health = p.health(v, "defaults.health", nil) },
	})
	return d
}

func (p *yamlParser) forward(n *yaml.Node, i int, d defaults) (Forward, bool) {
	where := fmt.Sprintf("forwards[%d]", i)
	fw := Forward{Pos: Pos{Line: n.Line, Index: i}, Context: d.context, Namespace: d.namespace, Addresses: d.addresses, Health: d.health}
	before := len(p.probs)
	var gotName, gotTarget, gotPorts bool
	p.mapping(n, where, map[string]func(k, v *yaml.Node){
		"name": func(k, v *yaml.Node) {
			gotName = true
			fw.Name = p.name(v, where+".name")
		},
		"context":   func(k, v *yaml.Node) { fw.Context = p.str(v, where+".context") },
		"namespace": func(k, v *yaml.Node) { fw.Namespace = p.str(v, where+".namespace") },
		"target": func(k, v *yaml.Node) {
			gotTarget = true
			fw.Target = p.str(v, where+".target")
			if fw.Target != "" {
				if msg := checkTarget(fw.Target); msg != "" {
					p.add(v, where+".target", "%s", msg)
				}
			}
		},
		"ports": func(k, v *yaml.Node) {
			gotPorts = true
			var items []*yaml.Node
			switch v.Kind {
			case yaml.ScalarNode:
				items = []*yaml.Node{v}
			case yaml.SequenceNode:
				items = v.Content
			default:
				p.add(v, where+".ports", "must be a port or a list of ports like \"8080:80\"")
			}
			if v.Kind == yaml.SequenceNode && len(items) == 0 {
				p.add(v, where+".ports", "is empty")
			}
			for _, it := range items {
				if it.Kind != yaml.ScalarNode {
					p.add(it, where+".ports", "each port must be a string like \"8080:80\"")
					continue
				}
				port, err := portspec.ParsePort(it.Value)
				if err != nil {
					p.add(it, where+".ports", "%v", err)
					continue
				}
				fw.Ports = append(fw.Ports, port)
				fw.Pos.PortLines = append(fw.Pos.PortLines, it.Line)
			}
		},
		"address": func(k, v *yaml.Node) { fw.Addresses = p.addresses(v, where+".address") },
		"balance": func(k, v *yaml.Node) {
			if err := v.Decode(&fw.Balance); err != nil || v.Tag != "!!bool" {
				p.add(v, where+".balance", "must be true or false")
			}
		},
		"health": func(k, v *yaml.Node) { fw.Health = p.health(v, where+".health", d.health) },
		"httpLog": func(k, v *yaml.Node) {
			fw.HTTPLog = p.str(v, where+".httpLog")
			if fw.HTTPLog != "" && fw.HTTPLog != "-" && !filepath.IsAbs(fw.HTTPLog) {
				fw.HTTPLog = filepath.Join(p.dir, fw.HTTPLog)
			}
		},
	})
	if !gotName {
		p.add(n, where+".name", "missing")
	}
	if !gotTarget {
		p.add(n, where+".target", "missing (like svc/api, deployment/web, pod/db-0)")
	}
	if !gotPorts {
		p.add(n, where+".ports", "missing (like [\"8080:80\"])")
	}
	if len(fw.Addresses) == 0 {
		fw.Addresses = []string{"localhost"}
	}
	if len(fw.Addresses) == 1 && fw.Addresses[0] == Auto {
		fw.AutoAddress = true
		fw.Addresses = []string{p.autoAddress(fw)}
	}
	return fw, len(p.probs) == before
}

func (p *yamlParser) health(n *yaml.Node, where string, base *Health) *Health {
	h := &Health{Type: "tcp", StatusMin: 200, StatusMax: 399, Interval: 10 * time.Second, Timeout: 2 * time.Second, FailureThreshold: 3}
	if base != nil {
		*h = *base
	}
	typeSet := false
	dur := func(v *yaml.Node, field string, dst *time.Duration) {
		d, err := time.ParseDuration(v.Value)
		if err != nil || d <= 0 {
			p.add(v, field, "%q: want a duration like 5s or 1m", v.Value)
			return
		}
		*dst = d
	}
	p.mapping(n, where, map[string]func(k, v *yaml.Node){
		"type": func(k, v *yaml.Node) {
			typeSet = true
			h.Type = p.str(v, where+".type")
			if h.Type != "tcp" && h.Type != "http" {
				p.add(v, where+".type", "%q: want tcp or http", h.Type)
			}
		},
		"path": func(k, v *yaml.Node) {
			h.Path = p.str(v, where+".path")
			if !typeSet {
				h.Type = "http"
			}
			if !strings.HasPrefix(h.Path, "/") {
				p.add(v, where+".path", "%q: must start with /", h.Path)
			}
		},
		"expect": func(k, v *yaml.Node) {
			lo, hi, err := parseStatusRange(v.Value)
			if err != nil {
				p.add(v, where+".expect", "%v", err)
				return
			}
			h.StatusMin, h.StatusMax = lo, hi
		},
		"interval": func(k, v *yaml.Node) { dur(v, where+".interval", &h.Interval) },
		"timeout":  func(k, v *yaml.Node) { dur(v, where+".timeout", &h.Timeout) },
		"failureThreshold": func(k, v *yaml.Node) {
			n, err := strconv.Atoi(v.Value)
			if err != nil || n < 1 {
				p.add(v, where+".failureThreshold", "%q: want a whole number of 1 or more", v.Value)
				return
			}
			h.FailureThreshold = n
		},
	})
	if h.Type == "http" && h.Path == "" {
		h.Path = "/"
	}
	return h
}

// proxy reads an entry of proxies: into a Forward whose Proxy is set.
func (p *yamlParser) proxy(n *yaml.Node, i int, d defaults) (Forward, bool) {
	where := fmt.Sprintf("proxies[%d]", i)
	px := &Proxy{Listen: DefaultProxyListen, ClusterDomain: "cluster.local"}
	fw := Forward{Pos: Pos{Line: n.Line, Index: i}, Context: d.context, Namespace: d.namespace, Target: "proxy", Proxy: px}
	before := len(p.probs)
	gotName := false
	p.mapping(n, where, map[string]func(k, v *yaml.Node){
		"name": func(k, v *yaml.Node) {
			gotName = true
			fw.Name = p.name(v, where+".name")
		},
		"context":   func(k, v *yaml.Node) { fw.Context = p.str(v, where+".context") },
		"namespace": func(k, v *yaml.Node) { fw.Namespace = p.str(v, where+".namespace") },
		"listen": func(k, v *yaml.Node) {
			px.Listen = p.str(v, where+".listen")
			ap, err := netip.ParseAddrPort(strings.Replace(px.Listen, "localhost:", "127.0.0.1:", 1))
			switch {
			case err != nil:
				p.add(v, where+".listen", "%q: want IP:PORT, like %s", px.Listen, DefaultProxyListen)
			case !ap.Addr().IsLoopback():
				p.add(v, where+".listen", "%q: a proxy of a file listens on loopback only (anyone who reaches it reaches the cluster as you, and the password it would need does not belong in a file); run kpf proxy --listen %s --auth USER:PASSWORD for that", px.Listen, px.Listen)
			case ap.Port() == 0:
				p.add(v, where+".listen", "%q: give a port, so that clients know where the proxy is", px.Listen)
			}
		},
		"clusterDomain": func(k, v *yaml.Node) { px.ClusterDomain = p.str(v, where+".clusterDomain") },
		"direct": func(k, v *yaml.Node) {
			if err := v.Decode(&px.Direct); err != nil || v.Tag != "!!bool" {
				p.add(v, where+".direct", "must be true or false")
			}
		},
	})
	if !gotName {
		p.add(n, where+".name", "missing")
	}
	return fw, len(p.probs) == before
}

// name reads a forward's or proxy's name.
func (p *yamlParser) name(v *yaml.Node, field string) string {
	name := p.str(v, field)
	if name != "" && !nameRE.MatchString(name) {
		p.add(v, field, "%q: use lower-case letters, digits and '-', at most 40 (it becomes KPF_<NAME>_ADDR)", name)
	}
	return name
}
