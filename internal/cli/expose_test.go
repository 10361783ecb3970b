package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
