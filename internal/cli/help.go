package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Help reads like kubectl's: a command lists its own flags; kubectl's
// connection flags, which every command takes, are listed once, under
// kpf options (as kubectl options does); a boolean flag shows as --flag.

func (g *globals) setHelp(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		examples := map[string]string{
			"bash":       "  source <(kpf completion bash)",
			"zsh":        "  autoload -U compinit; compinit\n  source <(kpf completion zsh)",
			"fish":       "  kpf completion fish | source",
			"powershell": "  kpf completion powershell | Out-String | Invoke-Expression",
		}
		for _, sh := range c.Commands() {
			sh.Example = examples[sh.Name()]
			c.Example += examples[sh.Name()] + "\n"
		}
		c.Example = strings.TrimSuffix(c.Example, "\n")
	}
	global := func(name string) bool { return root.PersistentFlags().Lookup(name) != nil }
	root.SetUsageFunc(func(c *cobra.Command) error {
		w := c.OutOrStderr()
		fmt.Fprint(w, "Usage:")
		if c.Runnable() {
			fmt.Fprintf(w, "\n  %s", c.UseLine())
		}
		if c.HasAvailableSubCommands() {
			fmt.Fprintf(w, "\n  %s [command]", c.CommandPath())
		}
		if len(c.Aliases) > 0 {
			fmt.Fprintf(w, "\n\nAliases:\n  %s", strings.Join(append([]string{c.Name()}, c.Aliases...), ", "))
		}
		if c.HasExample() {
			fmt.Fprintf(w, "\n\nExamples:\n%s", c.Example)
		}
		if c.HasAvailableSubCommands() {
			fmt.Fprint(w, "\n\nAvailable Commands:")
			for _, sub := range c.Commands() {
				if sub.IsAvailableCommand() || sub.Name() == "help" {
					fmt.Fprintf(w, "\n  %-*s %s", sub.NamePadding(), sub.Name(), sub.Short)
				}
			}
		}
		if own := flagUsages(c.LocalFlags(), global); own != "" {
			fmt.Fprintf(w, "\n\nFlags:\n%s", own)
		}
		fmt.Fprintf(w, "\n\nUse \"%s options\" for the flags every command takes (kubectl's --kubeconfig, --context, -n, --as, ... and -v).", c.Root().CommandPath())
		if c.HasAvailableSubCommands() {
			fmt.Fprintf(w, "\nUse \"%s [command] --help\" for more information about a command.", c.CommandPath())
		}
		fmt.Fprintln(w)
		return nil
	})
}

func newOptionsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "options",
		Short:   "Print the flags every command takes: kubectl's connection flags and -v",
		Example: "  kpf options",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(g.out, "The following options can be passed to any command:\n\n%s\n", flagUsages(cmd.Root().PersistentFlags(), nil))
			return nil
		},
	}
}

// flagUsages lists flags as pflag does, but a boolean as --flag (not
// --flag[=true|false]), skipping hidden ones and those skip names.
func flagUsages(fs *pflag.FlagSet, skip func(string) bool) string {
	type line struct{ name, usage string }
	var lines []line
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || (skip != nil && skip(f.Name)) {
			return
		}
		name := "      --" + f.Name
		if f.Shorthand != "" {
			name = "  -" + f.Shorthand + ", --" + f.Name
		}
		varname, usage := pflag.UnquoteUsage(f)
		if f.Value.Type() != "bool" && varname != "" {
			name += " " + varname
		}
		if d := defaultText(f); d != "" {
			usage += " (default " + d + ")"
		}
		lines = append(lines, line{name, usage})
	})
	width := 0
	for _, l := range lines {
		width = max(width, len(l.name))
	}
	var b strings.Builder
	for i, l := range lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%-*s   %s", width, l.name, l.usage)
	}
	return b.String()
}

// defaultText is a flag's default as help shows it, "" for a zero one.
func defaultText(f *pflag.Flag) string {
	if slices.Contains([]string{"", "0", "0s", "false", "[]", "<nil>"}, f.DefValue) {
		return ""
	}
	if f.Value.Type() == "string" {
		return fmt.Sprintf("%q", f.DefValue)
	}
	return f.DefValue
}
