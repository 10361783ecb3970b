package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadGood(t *testing.T) {
	f, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names(), " "); got != "api web db cache metrics" {
		t.Fatalf("names %q", got)
	}
	api, web, db, cache, metrics := f.Forwards[0], f.Forwards[1], f.Forwards[2], f.Forwards[3], f.Forwards[4]
	if api.Namespace != "shop" || api.Health.Type != "http" || api.Health.Path != "/healthz" || api.Health.StatusMax != 299 || api.Health.Interval != 5*time.Second {
		t.Errorf("api = %+v %+v", api, api.Health)
	}
	if !web.Balance || len(web.Ports) != 2 || web.Ports[1].Local != 0 {
		t.Errorf("web = %+v", web)
	}
	if db.Namespace != "data" || db.Health.Type != "tcp" || db.Health.FailureThreshold != 2 || db.Health.Interval != 5*time.Second {
		t.Errorf("db = %+v %+v", db, db.Health)
	}
	if cache.Addresses[0] != "127.0.0.1" || cache.Ports[0].Remote != "6379" {
		t.Errorf("cache = %+v", cache)
	}
	if metrics.Context != "other" || metrics.Addresses[0] != "localhost" {
		t.Errorf("metrics = %+v", metrics)
	}
}

// TestLoadBadReportsEverything: every problem, at once, with its line.
func TestLoadBadReportsEverything(t *testing.T) {
	_, err := Load("testdata/bad.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		"line 3: defaults.colour: unknown key (known here: address, context, health, namespace)",
		`line 8: forwards[1].name: "api" is used twice (first on line 5)`,
		`line 12: forwards[2].target: unknown target kind "ingress" in "ingress/web"`,
		`line 13: forwards[2].ports: invalid port "99999:80": the local port "99999" is not a number`,
		`line 16: forwards[3].ports: local port 8080 on 127.0.0.1 is also used by forward "api" (line 5)`,
		`line 17: forwards[4].name: "Bad_Name": use lower-case letters`,
		`line 19: forwards[4].prots: unknown key`,
		`line 20: forwards[4].health.type: "udp": want tcp or http`,
		`line 20: forwards[4].health.interval: "soon": want a duration`,
		`forwards[4].ports: missing`,
		// One forward cannot listen twice on a port (TCP and UDP are apart).
		`line 23: forwards[5].ports: local port 9090 is given twice ("9090:80" and "9090:81"): give each its own local port, or :81 for a free one`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("missing %q in:\n%s", w, msg)
		}
	}
}

func TestLineFormat(t *testing.T) {
	f, err := Load("testdata/team.conf")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fw := range f.Forwards {
		got = append(got, fw.Name+" "+fw.Namespace+" "+fw.Target+" "+fw.Ports[0].String())
	}
	want := "api-shop shop svc/api 8080:80|web shop svc/web 3000:8080|postgres data svc/postgres 5432:5432|api-staging staging svc/api 18080:80"
	if strings.Join(got, "|") != want {
		t.Errorf("got  %s\nwant %s", strings.Join(got, "|"), want)
	}
	_, err = Parse("x.conf", []byte("api:shop:8080\nweb:shop:80:80\nweb2:shop:80:81\n"))
	if err == nil || !strings.Contains(err.Error(), "line 1: \"api:shop:8080\": want SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT") ||
		!strings.Contains(err.Error(), "line 3: ports: local port 80 on 127.0.0.1 is also used by forward \"web\"") {
		t.Errorf("err = %v", err)
	}
	// A forward's name is never one the daemon's API paths cannot route.
	_, err = Parse("x.conf", []byte("svc/api:shop:8080:80\n"))
	if err == nil || !strings.Contains(err.Error(), `line 1: "svc/api:shop:8080:80": want a service and a namespace name (lower-case letters, digits and dashes), such as api:shop:8080:80`) {
		t.Errorf("a / in a name: err = %v", err)
	}
}

func TestConvertRoundTrips(t *testing.T) {
	f, err := Load("testdata/team.conf")
	if err != nil {
		t.Fatal(err)
	}
	y := ToYAML(f)
	g, err := Parse("converted.yaml", y)
	if err != nil {
		t.Fatalf("converted YAML does not load: %v\n%s", err, y)
	}
	if strings.Join(g.Names(), " ") != strings.Join(f.Names(), " ") {
		t.Errorf("names %v != %v", g.Names(), f.Names())
	}
	for i := range f.Forwards {
		a, b := f.Forwards[i], g.Forwards[i]
		if a.Target != b.Target || a.Namespace != b.Namespace || a.Ports[0] != b.Ports[0] {
			t.Errorf("forward %d: %+v became %+v", i, a, b)
		}
	}
}

// TestSchemaIsJSON: the schema parses as JSON and is a JSON Schema
// (2020-12) document that holds together: every $ref names a definition,
// every pattern compiles, every required key is a property, every type is
// one of JSON Schema's, and it has the shape of kpf.yaml: the top-level
// keys the parser takes, forwards as an array of objects that require
// name, target and ports, and no key the parser would refuse.
func TestSchemaIsJSON(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(Schema, &doc); err != nil {
		t.Fatalf("the schema is not JSON: %v", err)
	}
	if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" || doc["type"] != "object" {
		t.Fatalf("$schema %v, type %v: want a JSON Schema 2020-12 document of an object", doc["$schema"], doc["type"])
	}
	defs, _ := doc["$defs"].(map[string]any)
	types := []string{"null", "boolean", "object", "array", "number", "string", "integer"}
	// walk checks a schema and the schemas in it.
	var walk func(path string, v any)
	walk = func(path string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: %v is not a schema (an object)", path, v)
			return
		}
		if ref, ok := m["$ref"].(string); ok {
			name, found := strings.CutPrefix(ref, "#/$defs/")
			if _, ok := defs[name]; !found || !ok {
				t.Errorf("%s: $ref %q names no definition", path, ref)
			}
		}
		if p, ok := m["pattern"].(string); ok {
			if _, err := regexp.Compile(p); err != nil {
				t.Errorf("%s: pattern %q: %v", path, p, err)
			}
		}
		if typ, ok := m["type"]; ok && !slices.Contains(types, fmt.Sprint(typ)) {
			t.Errorf("%s: type %v is not a JSON Schema type", path, typ)
		}
		props, hasProps := m["properties"].(map[string]any)
		if req, ok := m["required"].([]any); ok && hasProps {
			for _, r := range req {
				if _, ok := props[fmt.Sprint(r)]; !ok {
					t.Errorf("%s: required %v is not a property", path, r)
				}
			}
		}
		for _, k := range []string{"properties", "$defs"} {
			named, _ := m[k].(map[string]any)
			for name, sub := range named {
				walk(path+"/"+k+"/"+name, sub)
			}
		}
		for _, k := range []string{"anyOf", "oneOf", "allOf"} {
			list, _ := m[k].([]any)
			for i, sub := range list {
				walk(fmt.Sprintf("%s/%s/%d", path, k, i), sub)
			}
		}
		for _, k := range []string{"items", "additionalProperties"} {
			if sub, ok := m[k].(map[string]any); ok {
				walk(path+"/"+k, sub)
			}
		}
	}
	walk("", doc)

	keys := func(path string, v any) []string {
		m, _ := v.(map[string]any)
		props, _ := m["properties"].(map[string]any)
		var out []string
		for k := range props {
			out = append(out, k)
		}
		slices.Sort(out)
		if m["additionalProperties"] != false {
			t.Errorf("%s: allows other properties; an editor would not flag a typo", path)
		}
		return out
	}
	if got := keys("top level", doc); !slices.Equal(got, []string{"defaults", "discover", "forwards", "metrics", "proxies", "version"}) {
		t.Errorf("top-level properties %v", got)
	}
	fwds, _ := doc["properties"].(map[string]any)["forwards"].(map[string]any)
	if fwds["type"] != "array" {
		t.Fatalf("forwards: type %v, want array", fwds["type"])
	}
	item := fwds["items"].(map[string]any)
	if req := fmt.Sprint(item["required"]); req != "[name target ports]" {
		t.Errorf("a forward requires %s, want [name target ports]", req)
	}
	// Every key of a forward in the schema is one the parser takes: a file
	// with all of them has no "unknown key" problem.
	var yaml strings.Builder
	yaml.WriteString("forwards:\n  - name: a\n    target: svc/api\n    ports: [\"80\"]\n")
	for _, k := range keys("a forward", item) {
		if k != "name" && k != "target" && k != "ports" {
			fmt.Fprintf(&yaml, "    %s: null\n", k)
		}
	}
	// And one the schema does not have, which the parser must refuse: the
	// check above sees the parser's verdict on keys.
	yaml.WriteString("    notInTheSchema: 1\n")
	_, err := Parse("kpf.yaml", []byte(yaml.String()))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("a forward with a key the schema lacks: %v, want problems", err)
	}
	control := false
	for _, p := range cerr.Problems {
		switch {
		case strings.Contains(p.String(), "notInTheSchema"):
			control = true
		case strings.Contains(p.Msg, "unknown key"):
			t.Errorf("the schema allows a key the parser refuses: %s", p)
		}
	}
	if !control {
		t.Errorf("the parser took a key the schema lacks: %v", cerr.Problems)
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/good.yaml", "testdata/bad.yaml", "testdata/team.conf"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(name, b)
	}
	f.Add("x.yaml", []byte("forwards: [{name: a, target: svc/a, ports: 80}]"))
	f.Add("x.conf", []byte("a:b:1:2"))
	f.Add("x.yaml", []byte("discover: [{namespace: shop, selector: 'a in (b)', kinds: [services], address: auto}]"))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		file, err := Parse(name, b)
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) || len(cerr.Problems) == 0 {
				t.Fatalf("error %v is not a config.Error with problems", err)
			}
			return
		}
		for _, fw := range file.Forwards {
			if fw.Discover != nil {
				// A discover entry has no ports: it makes forwards of them.
				if fw.Name == "" || len(fw.Discover.Kinds) == 0 || (len(fw.Addresses) == 0) != fw.AutoAddress {
					t.Fatalf("valid file with an incomplete discover entry: %+v %+v", fw, fw.Discover)
				}
				continue
			}
			if fw.Name == "" || fw.Target == "" || (len(fw.Ports) == 0 && fw.Proxy == nil) {
				t.Fatalf("valid file with an incomplete forward: %+v", fw)
			}
		}
	})
}

func TestAutoAddressIsStableAndOwnPerTarget(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kpf.yaml")
	os.WriteFile(path, []byte(`defaults: {namespace: shop, address: auto}
forwards:
- {name: db, target: svc/postgres, ports: ["5432"]}
- {name: db-again, target: service/postgres, ports: ["15432:5432"]}
- {name: cache, target: svc/redis, ports: ["6379"]}
- {name: web, target: svc/web, ports: ["8080"], address: localhost}
`), 0o644)
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	db, again, cache, web := f.Forwards[0], f.Forwards[1], f.Forwards[2], f.Forwards[3]
	if !db.AutoAddress || !strings.HasPrefix(db.Addresses[0], "127.20.") {
		t.Fatalf("db: %v auto=%v", db.Addresses, db.AutoAddress)
	}
	if again.Addresses[0] != db.Addresses[0] {
		t.Errorf("svc/postgres and service/postgres got %s and %s; one service, one address", db.Addresses[0], again.Addresses[0])
	}
	if cache.Addresses[0] == db.Addresses[0] {
		t.Errorf("two services share %s", db.Addresses[0])
	}
	if web.AutoAddress || web.Addresses[0] != "localhost" {
		t.Errorf("web: %v", web.Addresses)
	}
	f2, _ := Load(path)
	if f2.Forwards[0].Addresses[0] != db.Addresses[0] {
		t.Errorf("the address changed between loads: %s, %s", db.Addresses[0], f2.Forwards[0].Addresses[0])
	}
	// A hash collision within a file takes the next address.
	p := &yamlParser{}
	p.autoOwner = map[string]string{AutoAddress("", "shop", "svc/x", 0).String(): "someone else"}
	if got := p.autoAddress(Forward{Namespace: "shop", Target: "svc/x"}); got == AutoAddress("", "shop", "svc/x", 0).String() {
		t.Errorf("a taken address was given again: %s", got)
	}
	os.WriteFile(path, []byte("forwards:\n- {name: db, target: svc/db, ports: [\"5432\"], address: \"auto,127.0.0.1\"}\n"), 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), `"auto" gives the forward a loopback address of its own and goes alone, not with 127.0.0.1`) {
		t.Errorf("auto with another address: %v", err)
	}
}

func TestProxiesInTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpf.yaml")
	os.WriteFile(path, []byte(`defaults: {namespace: shop}
proxies:
- {name: shop}
- {name: other, listen: "127.0.0.1:1081", context: prod, clusterDomain: corp.local, direct: true}
`), 0o644)
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Forwards) != 2 || f.Forwards[0].Proxy == nil || f.Forwards[0].Proxy.Listen != DefaultProxyListen || f.Forwards[0].Namespace != "shop" {
		t.Fatalf("proxies: %+v", f.Forwards)
	}
	if p := f.Forwards[1]; p.Context != "prod" || *p.Proxy != (Proxy{Listen: "127.0.0.1:1081", ClusterDomain: "corp.local", Direct: true}) {
		t.Fatalf("second proxy: %+v %+v", p, p.Proxy)
	}
	os.WriteFile(path, []byte(`proxies:
- {name: a, listen: "0.0.0.0:1080"}
- {name: b, listen: "127.0.0.1:1080", auth: "x:y"}
- {name: c}
- {name: a, listen: "127.0.0.1:1082"}
`), 0o644)
	_, err = Load(path)
	for _, want := range []string{
		`line 2: proxies[0].listen: "0.0.0.0:1080": a proxy of a file listens on loopback only`,
		`line 3: proxies[1].auth: unknown key`,
		`line 4: proxies[2].listen: 127.0.0.1:1080 is also the address of the proxy on line 3`,
		`line 5: proxies[3].name: "a" is used twice`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in:\n%v", want, err)
		}
	}
}

// kpf.yaml takes host/NAME and ip/ADDR targets, and says what is wrong
// with a bad one, where.
func TestDestinationTargets(t *testing.T) {
	f, err := Parse("kpf.yaml", []byte("forwards:\n  - {name: db, target: host/orders.example, ports: [\"5432\"]}\n  - {name: web, target: ip/10.1.2.3, ports: [\"8080:80\"]}\n"))
	if err != nil || len(f.Forwards) != 2 || f.Forwards[0].Target != "host/orders.example" || f.Forwards[1].Target != "ip/10.1.2.3" {
		t.Fatalf("%+v, %v", f, err)
	}
	_, err = Parse("kpf.yaml", []byte("forwards:\n  - {name: db, target: ip/orders.example, ports: [\"5432\"]}\n"))
	if err == nil || !strings.Contains(err.Error(), `line 2: forwards[0].target: target "ip/orders.example": "orders.example" is not an IP address: for a name, write host/orders.example`) {
		t.Fatalf("a bad ip/ target: %v", err)
	}
}
