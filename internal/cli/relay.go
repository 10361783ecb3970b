package cli

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/kpf-dev/kpf/internal/relay"
	"github.com/spf13/cobra"
)

func newRelayCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "The UDP relay kpf runs in the cluster (kpf relay serve)",
		Long: `The port-forward subresource carries streams only. For UDP, kpf runs this
same binary next to the UDP server as a relay: kpf frames each local peer's
datagrams over one stream through the tunnel, and the relay sends them from
a socket of the flow's own and frames the replies back
(docs/relay-protocol.md).`,
	}
	cmd.AddCommand(newRelayServeCommand(g))
	return cmd
}

func newRelayServeCommand(g *globals) *cobra.Command {
	s := &relay.Server{}
	listen := ":4090"
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR]",
		Short: "Serve relay streams (what runs in the relay pod or ephemeral container)",
		Long: `Serve relay streams on --listen. The relay exits by itself once no kpf
has talked to it for --client-timeout and no stream was open for
--idle-exit, so that a relay whose kpf was killed does not stay.`,
		Example: `  # as a relay pod's command (kpf makes that pod itself)
  kpf relay serve --listen :4090`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if s.ClientTimeout <= 0 || s.IdleExit == 0 || s.FlowIdle <= 0 {
				return usagef("--client-timeout and --flow-idle must be above 0, --idle-exit above 0 (or below 0: never)")
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			s.Log = g.logger()
			s.Log.Info("relay listening", "addr", ln.Addr().String(), "version", relay.Version)
			err = s.Serve(cmd.Context(), ln)
			if errors.Is(err, relay.ErrIdleExit) {
				s.Log.Info("no client: exiting", "after", s.IdleExit)
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", listen, "TCP address for kpf's streams")
	f.DurationVar(&s.ClientTimeout, "client-timeout", 30*time.Second, "drop a stream that sent nothing (not even a keep-alive) for this long")
	f.DurationVar(&s.IdleExit, "idle-exit", 30*time.Second, "exit once no stream was open for this long (negative: never)")
	f.DurationVar(&s.FlowIdle, "flow-idle", 5*time.Minute, "close a flow with no datagram either way for this long")
	return cmd
}
