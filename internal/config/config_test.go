package config

import (
	"errors"
	"os"
	"path/filepath"
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

func TestSchemaIsJSON(t *testing.T) {
	if !strings.Contains(string(Schema), `"forwards"`) {
		t.Fatal("schema lacks forwards")
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
			if fw.Name == "" || fw.Target == "" || len(fw.Ports) == 0 {
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
