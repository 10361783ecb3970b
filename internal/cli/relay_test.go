package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// kpf relay gc handles every relay pod kpf makes, and its help says so.
func TestRelayGCHelpNamesEveryRelay(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"relay", "gc", "--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if s := out.String(); !strings.Contains(s, "of /udp ports, and of host/ and ip/\ntargets") || strings.Contains(s, "UDP relay pods") {
		t.Errorf("kpf relay gc --help:\n%s", s)
	}
}
