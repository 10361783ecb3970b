package relay

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestProtocolDocVersion: docs/relay-protocol.md names the version this
// relay speaks, and the opening's version byte.
func TestProtocolDocVersion(t *testing.T) {
	doc, err := os.ReadFile("../../docs/relay-protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("# The kpf relay protocol, version %d\n", Version), fmt.Sprintf("a version byte (`0x%02x`)", Version)} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("docs/relay-protocol.md does not say %q", want)
		}
	}
}
