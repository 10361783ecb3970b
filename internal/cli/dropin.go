package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// cobra's own commands, made when the root runs: never a target.
var builtinCommands = []string{"help", "completion", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd}

// dropIn makes kpf a drop-in for kubectl port-forward (and for the
// alias kpf='kubectl port-forward' that many shells carry): when the first
// word that is not a flag is none of kpf's commands, the words are kpf
// forward's, so "kpf svc/api 8080:80" is "kpf forward svc/api 8080:80". A
// pod named like a command is reached with kpf forward or pod/NAME.
func dropIn(root *cobra.Command, args []string) []string {
	fwd, _, err := root.Find([]string{"forward"})
	if err != nil {
		return args
	}
	lookup := func(name string, short bool) *pflag.Flag {
		for _, fs := range []*pflag.FlagSet{fwd.Flags(), root.PersistentFlags()} {
			if short {
				if f := fs.ShorthandLookup(name); f != nil {
					return f
				}
			} else if f := fs.Lookup(name); f != nil {
				return f
			}
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return args
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			if strings.Contains(a, "=") {
				continue
			}
			var f *pflag.Flag
			switch {
			case strings.HasPrefix(a, "--"):
				f = lookup(a[2:], false)
			case len(a) == 2:
				f = lookup(a[1:], true)
			default:
				continue // -nshop: the value is attached
			}
			if f != nil && f.NoOptDefVal == "" {
				i++ // the flag's value
			}
			continue
		}
		for _, c := range root.Commands() {
			if c.Name() == a || c.HasAlias(a) {
				return args
			}
		}
		for _, b := range builtinCommands {
			if a == b {
				return args
			}
		}
		return append([]string{"forward"}, args...)
	}
	return args
}
