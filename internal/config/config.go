// Package config reads the forwards file: kpf.yaml (a list of named
// forwards with defaults, documented by an embedded JSON Schema) or the
// plain SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT line format that team
// scripts already have. Validation reports every problem at once, each with
// its line and field.
package config

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/target"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Schema is the JSON Schema of kpf.yaml, for editors (kpf config schema).
//
//go:embed schema.json
var Schema []byte

// DefaultFiles are looked for in the current folder, in this order.
var DefaultFiles = []string{"kpf.yaml", "kpf.yml"}

// File is a validated forwards file.
type File struct {
	Path     string
	Forwards []Forward
	// Metrics is where kpf up serves Prometheus metrics ("" none).
	Metrics string
}

// Forward is one named forward with defaults applied.
type Forward struct {
	Name      string
	Context   string
	Namespace string
	Target    string
	Ports     []portspec.Port
	Addresses []string
	// AutoAddress: the file said address: auto, and Addresses holds the
	// forward's own loopback address (AutoAddress).
	AutoAddress bool
	Balance     bool
	Health      *Health
	// HTTPLog is where to log its HTTP requests ("" none, "-" standard
	// error); a relative path is taken from the file's folder.
	HTTPLog string
	// Proxy, if set, makes this entry a kpf proxy (from the file's
	// proxies: list) rather than a forward; Target is "proxy".
	Proxy *Proxy
	// Discover, if set, makes this entry a discover: entry: it runs the
	// forwards of the services it finds (internal/discover), each with
	// Owner set to its name.
	Discover *Discover
	// Owner is the discover entry that made this forward ("" for a
	// forward of the file).
	Owner string
	// Source is what a discover entry made the forward from beyond its
	// target and ports (a service port's targetPort, which the session
	// resolves when it opens): compared on apply, so that a change of it
	// restarts the forward.
	Source string
	Pos    Pos
}

// Proxy is a kpf proxy the file runs: cluster names through SOCKS5 and
// HTTP on Listen (loopback only: a password does not belong in a file).
type Proxy struct {
	Listen        string
	ClusterDomain string
	Direct        bool
}

// DefaultProxyListen is where a proxy of a file listens unless it says.
const DefaultProxyListen = "127.0.0.1:1080"

// Pos is where a forward stands in its file, for problems.
type Pos struct {
	Line      int   // of the forward
	Index     int   // in the forwards list
	PortLines []int // of each entry of Ports
}

// Health is a forward's health check.
type Health struct {
	Type             string // tcp or http
	Path             string // http
	StatusMin        int    // http: accepted status range
	StatusMax        int
	Interval         time.Duration
	Timeout          time.Duration
	FailureThreshold int
}

// Problem is one thing wrong in a file.
type Problem struct {
	Line  int
	Field string
	Msg   string
}

func (p Problem) String() string {
	if p.Field == "" {
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	}
	return fmt.Sprintf("line %d: %s: %s", p.Line, p.Field, p.Msg)
}

// Error lists every problem of a file.
type Error struct {
	Path     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s):", e.Path, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

// Find returns path, or the first default file in the current folder.
func Find(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	for _, f := range DefaultFiles {
		if _, err := os.Stat(f); err == nil {
			return f, nil
		}
	}
	return "", errors.New("no kpf.yaml in this folder: give one with -f FILE (kpf config schema documents the format)")
}

// Load reads and validates a file. A file whose name ends in .yaml or .yml,
// or whose first meaningful line looks like YAML, is kpf.yaml; anything
// else is the line format.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Parse validates the contents of a file named path.
func Parse(path string, b []byte) (*File, error) {
	ext := strings.ToLower(filepath.Ext(path))
	if ext == ".yaml" || ext == ".yml" || ext == ".json" || looksYAML(b) {
		return parseYAML(path, b)
	}
	return parseLines(path, b)
}

func looksYAML(b []byte) bool {
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		return strings.HasPrefix(l, "forwards:") || strings.HasPrefix(l, "defaults:") || strings.HasPrefix(l, "version:") || strings.HasPrefix(l, "discover:") || strings.HasPrefix(l, "{")
	}
	return false
}

// Target kinds kpf forward accepts, with kubectl's short names.
var targetKinds = map[string]bool{
	"pod": true, "pods": true, "po": true,
	"deployment": true, "deployments": true, "deploy": true,
	"replicaset": true, "replicasets": true, "rs": true,
	"statefulset": true, "statefulsets": true, "sts": true,
	"daemonset": true, "daemonsets": true, "ds": true,
	"job": true, "jobs": true,
	"replicationcontroller": true, "replicationcontrollers": true, "rc": true,
	"service": true, "services": true, "svc": true,
}

func checkTarget(s string) string {
	if _, ok, err := target.ParseDestination(s); ok {
		if err != nil {
			return err.Error()
		}
		return ""
	}
	kind, name, ok := strings.Cut(s, "/")
	if !ok {
		name, kind = s, "pod"
	}
	kind, _, _ = strings.Cut(kind, ".") // deployments.apps
	switch {
	case name == "":
		return fmt.Sprintf("%q names no object (want TYPE/NAME, like svc/api)", s)
	case !targetKinds[strings.ToLower(kind)]:
		return fmt.Sprintf("unknown target kind %q in %q (want pod, deployment, replicaset, statefulset, daemonset, job, replicationcontroller or service, or their short names; or host/NAME or ip/ADDR, dialled by a relay pod)", kind, s)
	}
	return ""
}

// lineFile parses SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT lines.
func parseLines(path string, b []byte) (*File, error) {
	f := &File{Path: path}
	var probs []Problem
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.Index(l, " #"); i >= 0 {
			l = strings.TrimSpace(l[:i])
		}
		parts := strings.Split(l, ":")
		if len(parts) != 4 {
			probs = append(probs, Problem{Line: n, Msg: fmt.Sprintf("%q: want SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT", l)})
			continue
		}
		svc, ns := parts[0], parts[1]
		port, err := portspec.ParsePort(parts[2] + ":" + parts[3])
		if err != nil {
			probs = append(probs, Problem{Line: n, Field: "ports", Msg: err.Error()})
			continue
		}
		if svc == "" || ns == "" {
			probs = append(probs, Problem{Line: n, Msg: fmt.Sprintf("%q: the service and namespace may not be empty", l)})
			continue
		}
		// The service names the forward: a name of Kubernetes' own
		// (never a "/", which the daemon's API paths could not route).
		if len(validation.IsDNS1035Label(svc)) > 0 || len(validation.IsDNS1123Label(ns)) > 0 {
			probs = append(probs, Problem{Line: n, Msg: fmt.Sprintf("%q: want a service and a namespace name (lower-case letters, digits and dashes), such as api:shop:8080:80", l)})
			continue
		}
		f.Forwards = append(f.Forwards, Forward{Name: svc, Namespace: ns, Target: "svc/" + svc, Ports: []portspec.Port{port}, Addresses: []string{"localhost"},
			Pos: Pos{Line: n, Index: len(f.Forwards), PortLines: []int{n}}})
	}
	// The same service in two namespaces: name them apart.
	count := map[string]int{}
	for _, fw := range f.Forwards {
		count[fw.Name]++
	}
	for i := range f.Forwards {
		if count[f.Forwards[i].Name] > 1 {
			f.Forwards[i].Name += "-" + f.Forwards[i].Namespace
		}
	}
	probs = append(probs, crossChecks(f.Forwards, false)...)
	return f, asError(path, probs)
}

func asError(path string, probs []Problem) error {
	if len(probs) == 0 {
		return nil
	}
	sort.SliceStable(probs, func(i, j int) bool { return probs[i].Line < probs[j].Line })
	return &Error{Path: path, Problems: probs}
}

// crossChecks finds duplicate names and local ports bound twice; a port
// bound twice is reported at its own entry.
// In kpf.yaml fields are named by their path (forwards[2].ports).
func crossChecks(fws []Forward, yamlPaths bool) []Problem {
	field := func(fw Forward, name string) string {
		if yamlPaths && fw.Proxy != nil {
			return fmt.Sprintf("proxies[%d].%s", fw.Pos.Index, name)
		}
		if yamlPaths && fw.Discover != nil {
			return fmt.Sprintf("discover[%d].%s", fw.Pos.Index, name)
		}
		if yamlPaths {
			return fmt.Sprintf("forwards[%d].%s", fw.Pos.Index, name)
		}
		return name
	}
	var probs []Problem
	names := map[string]int{}
	listens := map[string]int{}
	for i, fw := range fws {
		if fw.Proxy != nil {
			if prev, ok := listens[fw.Proxy.Listen]; ok {
				probs = append(probs, Problem{Line: fw.Pos.Line, Field: fmt.Sprintf("proxies[%d].listen", fw.Pos.Index), Msg: fmt.Sprintf("%s is also the address of the proxy on line %d", fw.Proxy.Listen, prev)})
			}
			listens[fw.Proxy.Listen] = fw.Pos.Line
		}
		if prev, ok := names[fw.Name]; ok {
			probs = append(probs, Problem{Line: fw.Pos.Line, Field: field(fw, "name"), Msg: fmt.Sprintf("%q is used twice (first on line %d)", fw.Name, prev)})
		} else {
			names[fw.Name] = fw.Pos.Line
		}
		for k, p := range fw.Ports {
			if j := slices.IndexFunc(fw.Ports[:k], func(q portspec.Port) bool { return p.Local != 0 && q.Local == p.Local && q.UDP == p.UDP }); j >= 0 {
				line := fw.Pos.Line
				if k < len(fw.Pos.PortLines) {
					line = fw.Pos.PortLines[k]
				}
				probs = append(probs, Problem{Line: line, Field: field(fw, "ports"),
					Msg: fmt.Sprintf("local port %d is given twice (%q and %q): give each its own local port, or :%s for a free one", p.Local, fw.Ports[j], p, p.Remote)})
				break
			}
		}
		for _, other := range fws[:i] {
			if other.Name == fw.Name {
				continue
			}
			if port, addr, k, ok := overlap(fw, other); ok {
				line := fw.Pos.Line
				if k < len(fw.Pos.PortLines) {
					line = fw.Pos.PortLines[k]
				}
				probs = append(probs, Problem{Line: line, Field: field(fw, "ports"),
					Msg: fmt.Sprintf("local port %d on %s is also used by forward %q (line %d)", port, addr, other.Name, other.Pos.Line)})
				break
			}
		}
	}
	return probs
}

// Overlap finds a local port that forwards a and b would both bind on the
// same address, if any. A free port (0) never overlaps.
func Overlap(a, b Forward) (port uint16, addr string, ok bool) {
	port, addr, _, ok = overlap(a, b)
	return
}

// overlap is Overlap, with the index of a's port entry.
func overlap(a, b Forward) (uint16, string, int, bool) {
	bAddrs := expandAddresses(b.Addresses)
	for k, p := range a.Ports {
		if p.Local == 0 || !slices.ContainsFunc(b.Ports, func(q portspec.Port) bool { return q.Local == p.Local && q.UDP == p.UDP }) {
			continue
		}
		for _, addr := range expandAddresses(a.Addresses) {
			if slices.Contains(bAddrs, addr) || isAny(addr) || slices.ContainsFunc(bAddrs, isAny) {
				return p.Local, addr, k, true
			}
		}
	}
	return 0, "", 0, false
}

// isAny: an unspecified address binds every address of its family.
func isAny(addr string) bool { return addr == "0.0.0.0" || addr == "::" }

func expandAddresses(as []string) []string {
	var out []string
	for _, a := range as {
		if a == "localhost" {
			out = append(out, "127.0.0.1", "::1")
		} else {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Names lists the forwards' names.
func (f *File) Names() []string {
	var n []string
	for _, fw := range f.Forwards {
		n = append(n, fw.Name)
	}
	return n
}

// Select returns the named forwards (all when names is empty).
func (f *File) Select(names []string) ([]Forward, error) {
	if len(names) == 0 {
		return f.Forwards, nil
	}
	var out []Forward
	for _, n := range names {
		i := slices.IndexFunc(f.Forwards, func(fw Forward) bool { return fw.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("no forward named %q in %s (it has: %s)", n, f.Path, strings.Join(f.Names(), ", "))
		}
		out = append(out, f.Forwards[i])
	}
	return out, nil
}

func parseStatusRange(s string) (int, int, error) {
	lo, hi, found := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b := a
	var err2 error
	if found {
		b, err2 = strconv.Atoi(strings.TrimSpace(hi))
	}
	if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
		return 0, 0, fmt.Errorf("%q: want a status or a range like 200-399", s)
	}
	return a, b, nil
}
