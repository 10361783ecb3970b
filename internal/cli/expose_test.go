package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseExposePorts(t *testing.T) {
	got, err := parseExposePorts([]string{"80:8080", "9000", "443:8443/tcp"})
	if err != nil {
		t.Fatal(err)
	}
	want := []exposePort{{80, 8080}, {9000, 9000}, {443, 8443}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("port %d: got %v, want %v", i, got[i], want[i])
		}
	}
	for arg, says := range map[string]string{
		"9053:53/udp": "/udp is not supported yet",
		"80:":         "want [REMOTE:]LOCAL",
		"0:80":        "want [REMOTE:]LOCAL",
		"70000":       "want [REMOTE:]LOCAL",
		"a:b":         "want [REMOTE:]LOCAL",
	} {
		if _, err := parseExposePorts([]string{arg}); err == nil || !strings.Contains(err.Error(), says) || !strings.Contains(err.Error(), arg) {
			t.Errorf("%q: %v, want an error naming it and saying %q", arg, err, says)
		}
	}
	if _, err := parseExposePorts([]string{"80:1", "80:2"}); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("a Service port twice: %v", err)
	}
}

func FuzzParseExposePorts(f *testing.F) {
	for _, s := range []string{"80:8080", "9000", "1:2/udp", ":", "65536:1", "80:8080/tcp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := parseExposePorts([]string{s})
		if err == nil && (len(ps) != 1 || ps[0].Remote == 0 || ps[0].Local == 0) {
			t.Fatalf("%q: %v without an error", s, ps)
		}
	})
}

// kpf expose's usage errors name the argument and the fix, before any
// connection.
func TestExposeUsageErrors(t *testing.T) {
	for args, says := range map[string]string{
		"pod/web 80:8080":                     `"pod/web": kpf expose makes a Service: give svc/NAME`,
		"svc/web 53:5353/udp":                 "/udp is not supported yet",
		"svc/web 80:8080 --address nowhere":   `--address "nowhere": give the IP address`,
		"svc/web 80:8080 --transport carrier": "--transport",
	} {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), append([]string{"--kubeconfig", "/nonexistent", "expose"}, strings.Fields(args)...), &out, &errOut)
		if code == 0 || !strings.Contains(errOut.String(), says) {
			t.Errorf("kpf expose %s: exit %d, want %q in\n%s", args, code, says, errOut.String())
		}
	}
}

// The Service selects no pods, and its EndpointSlice names the relay pod
// it is given only, on the port each Service port targets (by the port's
// name, as a service proxy matches them), or no endpoint at all.
func TestExposeServiceAndSlice(t *testing.T) {
	x := &exposure{ns: "team", name: "laptop", ports: []exposePort{{80, 8080}, {443, 8443}}}
	x.pod.Forward = "abc"
	relay := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kpf-relay-x", Namespace: "team", UID: "u1"}, Status: corev1.PodStatus{PodIP: "10.1.2.3"}}
	svc := x.service(relay)
	if len(svc.Spec.Selector) != 0 {
		t.Errorf("the Service selects pods by label: %v", svc.Spec.Selector)
	}
	es := x.slice(relay, svc.OwnerReferences)
	if es.Labels[discoveryv1.LabelServiceName] != "laptop" || es.Labels[discoveryv1.LabelManagedBy] == "endpointslice-controller.k8s.io" || es.Labels["kpf.dev/expose"] != "abc" {
		t.Errorf("the slice's labels: %v", es.Labels)
	}
	if len(es.OwnerReferences) != 1 || es.OwnerReferences[0].UID != "u1" {
		t.Errorf("the slice's owners: %+v, want the relay pod's, like the Service's", es.OwnerReferences)
	}
	if len(es.Endpoints) != 1 || len(es.Endpoints[0].Addresses) != 1 || es.Endpoints[0].Addresses[0] != "10.1.2.3" || es.Endpoints[0].TargetRef.UID != "u1" || es.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("the slice's endpoints: %+v (%s), want the relay pod's IP only", es.Endpoints, es.AddressType)
	}
	for _, sp := range svc.Spec.Ports {
		found := false
		for _, p := range es.Ports {
			if *p.Name == sp.Name && *p.Protocol == sp.Protocol && *p.Port == sp.TargetPort.IntVal {
				found = true
			}
		}
		if !found {
			t.Errorf("the Service port %+v has no slice port of its name and target port in %+v", sp, es.Ports)
		}
	}
	if none := x.slice(nil, svc.OwnerReferences); len(none.Endpoints) != 0 || none.Endpoints == nil {
		t.Errorf("the slice with no relay: %+v, want an empty list of endpoints", none.Endpoints)
	}
}
