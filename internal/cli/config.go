package cli

import (
	"fmt"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/spf13/cobra"
)

func newConfigCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "config",
		Short:   "Check, convert and describe forwards files",
		Example: "  kpf config validate -f shop.yaml\n  kpf config schema > kpf.schema.json\n  kpf config convert -f forwards.conf > kpf.yaml",
	}
	var file string
	validate := &cobra.Command{
		Use:     "validate [-f FILE]",
		Short:   "Report every problem of a forwards file at once, with line numbers",
		Example: "  kpf config validate\n  kpf config validate -f shop.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := config.Find(file)
			if err != nil {
				return usageError{err}
			}
			f, err := config.Load(path)
			if err != nil {
				return err
			}
			proxies := 0
			for _, fw := range f.Forwards {
				if fw.Proxy != nil {
					proxies++
				}
			}
			if proxies > 0 {
				fmt.Fprintf(g.out, "%s: %d forwards and %d proxies, no problems\n", path, len(f.Forwards)-proxies, proxies)
				return nil
			}
			fmt.Fprintf(g.out, "%s: %d forwards, no problems\n", path, len(f.Forwards))
			return nil
		},
	}
	validate.Flags().StringVarP(&file, "file", "f", "", "forwards file (default kpf.yaml in this folder)")
	schema := &cobra.Command{
		Use:     "schema",
		Short:   "Print the JSON Schema of kpf.yaml, for editors",
		Example: "  kpf config schema > kpf.schema.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := g.out.Write(config.Schema)
			return err
		},
	}
	var convertFile string
	convert := &cobra.Command{
		Use:     "convert -f FILE",
		Short:   "Turn a SERVICE:NAMESPACE:LOCAL_PORT:REMOTE_PORT file into kpf.yaml (on stdout)",
		Example: "  kpf config convert -f forwards.conf > kpf.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if convertFile == "" {
				return usagef("give the file to convert with -f FILE")
			}
			f, err := config.Load(convertFile)
			if err != nil {
				return err
			}
			_, err = g.out.Write(config.ToYAML(f))
			return err
		},
	}
	convert.Flags().StringVarP(&convertFile, "file", "f", "", "the line-format file")
	cmd.AddCommand(validate, schema, convert)
	return cmd
}

// loadForwards loads the forwards file (kpf.yaml here when file is "")
// and picks the named forwards (all when none are named). A file that
// cannot be found and unknown names are usage errors.
func loadForwards(file string, names []string) (*config.File, []config.Forward, error) {
	path, err := config.Find(file)
	if err != nil {
		return nil, nil, usageError{err}
	}
	f, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	fws, err := f.Select(names)
	if err != nil {
		return nil, nil, usageError{err}
	}
	return f, fws, nil
}
