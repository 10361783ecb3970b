package cli

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestREADMEFlagsTable keeps the README's flag table true: every flag of
// kpf forward is in it, and every flag in it exists.
func TestREADMEFlagsTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	root := NewRoot(io.Discard, io.Discard)
	fwd, _, err := root.Find([]string{"forward"})
	if err != nil {
		t.Fatal(err)
	}
	fwd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		if !strings.Contains(string(readme), "`--"+f.Name+"`") && !strings.Contains(string(readme), "`-"+f.Shorthand+"`") {
			t.Errorf("README does not document --%s", f.Name)
		}
	})
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "v" && !strings.Contains(string(readme), "| `-v` |") {
			t.Errorf("README does not document -v")
		}
	})
	for _, line := range strings.Split(string(readme), "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		name := strings.TrimPrefix(strings.Split(line, "`")[1], "--")
		if fwd.Flags().Lookup(name) == nil && root.PersistentFlags().Lookup(name) == nil {
			t.Errorf("README documents --%s, which kpf forward does not have", name)
		}
	}
}

func TestSimilarNames(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"api-547777df77-9qglg", "api", true},
		{"solo", "sol", true},
		{"web", "wbe", true},
		{"postgres", "redis", false},
	} {
		if got := similar(c.a, c.b); got != c.want {
			t.Errorf("similar(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
