package rbac

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestKindOf(t *testing.T) {
	for in, want := range map[string]Kind{
		"web-0":                  Pods,
		"po/web-0":               Pods,
		"pods/web-0":             Pods,
		"svc/api":                {Resource: "services"},
		"deploy/web":             {Group: "apps", Resource: "deployments"},
		"deployments.apps/web":   {Group: "apps", Resource: "deployments"},
		"STS/db":                 {Group: "apps", Resource: "statefulsets"},
		"job/migrate":            {Group: "batch", Resource: "jobs"},
		"rc/old":                 {Resource: "replicationcontrollers"},
		"replicasets.apps/web-1": {Group: "apps", Resource: "replicasets"},
	} {
		got, err := KindOf(in)
		if err != nil || got != want {
			t.Errorf("KindOf(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := KindOf("cm/settings"); err == nil || !strings.Contains(err.Error(), `"cm"`) {
		t.Errorf("cm: %v", err)
	}
}

func TestForDeduplicatesAndOrders(t *testing.T) {
	rules := For([]Kind{{Group: "apps", Resource: "deployments"}, Pods, {Resource: "services"}, {Group: "apps", Resource: "deployments"}})
	var got []string
	for _, r := range rules {
		got = append(got, Name(strings.Join(r.Verbs, ","), r.Group, r.Resource))
	}
	want := "get,list,watch pods|get services|get deployments.apps|create,get pods/portforward"
	if strings.Join(got, "|") != want {
		t.Errorf("rules %q, want %q", strings.Join(got, "|"), want)
	}
}

func TestParseSubject(t *testing.T) {
	for in, want := range map[string]Subject{
		"user:alice":          {Kind: "User", Name: "alice"},
		"group:devs":          {Kind: "Group", Name: "devs"},
		"sa:ci/runner":        {Kind: "ServiceAccount", Name: "runner", Namespace: "ci"},
		"serviceaccount:ci/r": {Kind: "ServiceAccount", Name: "r", Namespace: "ci"},
	} {
		got, err := ParseSubject(in)
		if err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"alice", "user:", "sa:runner", "sa:/r", "sa:ci/", "sa:a/b/c", "robot:x"} {
		if _, err := ParseSubject(bad); err == nil || !strings.Contains(err.Error(), "--subject") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestManifestIsValidYAMLPerNamespace(t *testing.T) {
	out, err := Manifest("kpf", map[string][]Rule{
		"b": For([]Kind{{Resource: "services"}}),
		"a": For(nil),
	}, &Subject{Kind: "ServiceAccount", Name: "r", Namespace: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(out), "\n---\n")
	if len(docs) != 4 {
		t.Fatalf("%d documents, want a Role and a RoleBinding per namespace:\n%s", len(docs), out)
	}
	var kinds []string
	for _, d := range docs {
		var m struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
			Subjects []map[string]string
		}
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("%v:\n%s", err, d)
		}
		kinds = append(kinds, m.Kind+"/"+m.Metadata.Namespace)
		if m.Kind == "RoleBinding" && (m.Subjects[0]["namespace"] != "ci" || m.Subjects[0]["apiGroup"] != "") {
			t.Errorf("service account subject: %v", m.Subjects)
		}
	}
	if got := strings.Join(kinds, " "); got != "Role/a RoleBinding/a Role/b RoleBinding/b" {
		t.Errorf("documents %s", got)
	}
}
