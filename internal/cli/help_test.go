package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Help reads like kubectl's: examples on every command, a command's own
// flags only (the connection flags are under kpf options), booleans as
// --flag.
func TestHelpReadsLikeKubectls(t *testing.T) {
	root := NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() {
				continue
			}
			path := strings.Fields(strings.TrimPrefix(sub.CommandPath(), "kpf "))
			var out bytes.Buffer
			if code := Run(context.Background(), append(path, "--help"), &out, &out); code != 0 {
				t.Errorf("kpf %s --help: exit %d", strings.Join(path, " "), code)
			}
			help := out.String()
			if sub.Runnable() && !strings.Contains(help, "\nExamples:\n") {
				t.Errorf("kpf %s --help has no examples", strings.Join(path, " "))
			}
			if strings.Contains(help, "[=true|false]") || strings.Contains(help, "--kubeconfig string") {
				t.Errorf("kpf %s --help lists a boolean as --flag[=true|false] or the connection flags:\n%s", strings.Join(path, " "), help)
			}
			walk(sub)
		}
	}
	walk(root)
	var out bytes.Buffer
	Run(context.Background(), []string{"options"}, &out, &out)
	for _, want := range []string{"--kubeconfig string", "-n, --namespace string", "--insecure-skip-tls-verify ", "-v, --v int"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("kpf options lacks %q:\n%s", want, out.String())
		}
	}
}
