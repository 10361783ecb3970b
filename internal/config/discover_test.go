package config

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestDiscoverEntries: discover: as one entry or a list, with defaults,
// names and addresses; a file of only discover: entries is whole.
func TestDiscoverEntries(t *testing.T) {
	f, err := Parse("kpf.yaml", []byte(`
defaults: {context: staging}
discover:
  namespace: shop
  selector: tier in (api,db)
  address: auto
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Forwards) != 1 {
		t.Fatalf("forwards %+v", f.Forwards)
	}
	d := f.Forwards[0]
	if d.Name != "discover-shop" || d.Namespace != "shop" || d.Context != "staging" || d.Discover == nil || d.Discover.Selector != "tier in (api,db)" ||
		!slices.Equal(d.Discover.Kinds, []string{"services"}) || !d.AutoAddress || len(d.Addresses) != 0 || d.Target != "services -l tier in (api,db)" {
		t.Errorf("entry %+v %+v", d, d.Discover)
	}

	f, err = Parse("kpf.yaml", []byte(`
forwards:
  - {name: api, namespace: shop, target: svc/api, ports: ["8080:80"]}
discover:
  - {name: shop-all, namespace: shop, kinds: [services]}
  - {namespace: data, address: 127.0.0.2}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names(), " "); got != "api shop-all discover-data" {
		t.Errorf("names %q", got)
	}
	if a := f.Forwards[1].Addresses; !slices.Equal(a, []string{"localhost"}) {
		t.Errorf("shop-all addresses %v, want localhost", a)
	}
	if a := f.Forwards[2].Addresses; !slices.Equal(a, []string{"127.0.0.2"}) || f.Forwards[2].AutoAddress {
		t.Errorf("discover-data addresses %v", a)
	}
}

// TestDiscoverProblems: every problem of discover: entries, with its line
// and field; an unknown kind names the kinds there are.
func TestDiscoverProblems(t *testing.T) {
	_, err := Parse("kpf.yaml", []byte(`discover:
  - namespace: Shop_1
    selector: "tier in ("
    kinds: [services, pods]
    address: [auto, 127.0.0.1]
    colour: blue
  - {namespace: shop, kinds: []}
  - {namespace: shop}
  - just-a-string
`))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`line 2: discover[0].namespace: "Shop_1" is not a namespace name (lower-case letters, digits and '-')`,
		`line 3: discover[0].selector: "tier in (": not a label selector (like app=web or tier in (api,db))`,
		`line 4: discover[0].kinds: "pods": discover forwards services only`,
		`line 5: discover[0].address: "auto" gives the forward a loopback address of its own and goes alone, not with 127.0.0.1`,
		`line 6: discover[0].colour: unknown key (known here: address, context, kinds, name, namespace, selector)`,
		`line 7: discover[1].kinds: is empty (want [services])`,
		`line 8: discover[2].name: "discover-shop" is used twice (first on line 7)`,
		`line 9: discover[3]: must be a mapping`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("missing %q in:\n%s", w, msg)
		}
	}
	if len(cerr.Problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(cerr.Problems), len(want), msg)
	}
	_, err = Parse("kpf.yaml", []byte("discover: shop\n"))
	if err == nil || !strings.Contains(err.Error(), "line 1: discover: must be a mapping like {namespace: shop, address: auto}, or a list of them") {
		t.Errorf("discover: shop: %v", err)
	}
}

// TestDiscoverSchemaMatchesTheParser: every key of a discover entry in
// the JSON Schema is one the parser takes, and the other way round.
func TestDiscoverSchemaMatchesTheParser(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(Schema, &doc); err != nil {
		t.Fatal(err)
	}
	def := doc["$defs"].(map[string]any)["discover"].(map[string]any)
	if def["additionalProperties"] != false {
		t.Error("a discover entry in the schema allows other keys")
	}
	var keys []string
	for k := range def["properties"].(map[string]any) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	_, err := Parse("kpf.yaml", []byte("discover: {notAKey: 1}\n"))
	want := "unknown key (known here: " + strings.Join(keys, ", ") + ")"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("the parser's keys differ from the schema's %v: %v", keys, err)
	}
}
