package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set by release builds: -ldflags "-X github.com/kpf-dev/kpf/internal/cli.buildVersion=v1.2.3 ...".
var (
	buildVersion string
	buildCommit  string
	buildDate    string
)

// versionInfo is what kpf version prints.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Date      string `json:"date,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// currentVersion is the release's version, commit and date, else what the
// module's build info says (go install ...@v1.2.3, or a checkout's VCS
// stamp).
func currentVersion() versionInfo {
	v := versionInfo{Version: buildVersion, Commit: buildCommit, Date: buildDate, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && v.Commit == "":
				v.Commit = s.Value
			case s.Key == "vcs.time" && v.Date == "":
				v.Date = s.Value
			}
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	return v
}

func version() string { return currentVersion().Version }

func newVersionCommand(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print kpf's version, commit, build date and Go version",
		Example: "  kpf version\n  kpf version -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			switch output {
			case "":
				fmt.Fprintf(g.out, "kpf %s\n", v.Version)
				if v.Commit != "" {
					fmt.Fprintf(g.out, "  commit: %s\n", v.Commit)
				}
				if v.Date != "" {
					fmt.Fprintf(g.out, "  built:  %s\n", v.Date)
				}
				fmt.Fprintf(g.out, "  go:     %s %s\n", v.GoVersion, v.Platform)
			case "json":
				return printJSON(g.out, v)
			default:
				return usagef("--output %q: want json (or nothing, for text)", output)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json for scripts")
	return cmd
}
