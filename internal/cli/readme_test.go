package cli

import (
	"encoding/json"
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

// TestREADMEMCPConfigs keeps the README's MCP client configurations true:
// each JSON block of its kpf mcp section parses, and each server in it
// runs kpf mcp with flags kpf mcp has.
func TestREADMEMCPConfigs(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## For programs and AI agents")
	if !ok {
		t.Fatal("no MCP section in the README")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := strings.Split(section, "```json\n")[1:]
	if len(blocks) < 2 {
		t.Fatalf("%d JSON blocks in the MCP section, want the mcpServers and the VS Code forms", len(blocks))
	}
	for _, b := range blocks {
		b, _, _ = strings.Cut(b, "```")
		var cfg map[string]map[string]struct {
			Command string
			Args    []string
		}
		if err := json.Unmarshal([]byte(b), &cfg); err != nil {
			t.Fatalf("%v:\n%s", err, b)
		}
		for _, servers := range cfg {
			for name, s := range servers {
				if s.Command != "kpf" || len(s.Args) == 0 || s.Args[0] != "mcp" {
					t.Errorf("%s: runs %s %v, want kpf mcp", name, s.Command, s.Args)
					continue
				}
				root := NewRoot(io.Discard, io.Discard)
				cmd, rest, err := root.Find(s.Args)
				if err != nil || cmd.Name() != "mcp" {
					t.Fatalf("%s: %v", name, err)
				}
				if err := cmd.ParseFlags(rest); err != nil {
					t.Errorf("%s: kpf %v: %v", name, s.Args, err)
				}
			}
		}
	}
	if !strings.Contains(section, "claude mcp add kpf -- kpf mcp") {
		t.Error("the Claude Code command is gone")
	}
}
