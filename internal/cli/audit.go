package cli

import (
	"context"
	"time"

	"github.com/kpf-dev/kpf/internal/proxy"

	"github.com/kpf-dev/kpf/internal/audit"
	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/identity"
)

const auditLogUsage = "append a JSON line per connection (who, pod, ports, client, bytes, result) and per forward start, stop and pod switch to this file (created 0600, rotated at 10 MB, 3 kept)"

// openAudit opens the audit log at path; "" is none.
func openAudit(path string) (*audit.Log, error) {
	if path == "" {
		return nil, nil
	}
	return audit.Open(path, audit.DefaultMaxBytes, audit.DefaultKeep)
}

// auditWho is who c connects as, for the audit log: the kubeconfig's
// context, cluster and user, with the user the API server says (asked once
// per connection) where it can say.
func auditWho(ctx context.Context, c *cluster.Conn) audit.Who {
	var w audit.Who
	if c.Flags() != nil {
		w.Context, w.Cluster, w.User = identity.Describe(c.Flags())
	}
	if u := c.WhoAmI(ctx); u != "" {
		w.User = u
	}
	return w
}

// proxyAudit writes an audit record for each connection a proxy carried.
func proxyAudit(l *audit.Log, who audit.Who, name string) func(proxy.Ended) {
	return func(e proxy.Ended) {
		c := audit.Connection{
			Forward: audit.Forward{Who: who, Namespace: e.Route.Namespace, Name: name, Target: e.Route.Ref},
			Pod:     e.Pod, RemotePort: e.Route.Port, Local: e.Local, Peer: e.Peer, Dest: e.Dest,
			Start: e.Start.UTC().Format(time.RFC3339Nano), Seconds: time.Since(e.Start).Seconds(),
			BytesIn: e.In, BytesOut: e.Out, Result: "ok",
		}
		if c.Target == "" {
			c.Target = "direct"
		}
		if e.Err != nil {
			c.Result, c.Error = "error", e.Err.Error()
		}
		l.Connection(c)
	}
}
