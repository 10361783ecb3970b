package cli

import (
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/hosts"
)

// Only names a cluster could have become hosts lines: under sudo, root
// writes what the user's daemon reports, and a line break in a name would
// be a line of root's choosing in /etc/hosts.
func TestHostEntriesTakeOnlyClusterNames(t *testing.T) {
	rows := []api.Forward{
		{Target: "svc/api", Namespace: "shop", Addresses: []string{"127.20.0.2"}},
		{Target: "svc/evil", Namespace: "x\n10.0.0.1 bank.example", Addresses: []string{"127.20.0.3"}},
		{Target: "svc/a b", Namespace: "shop", Addresses: []string{"127.20.0.4"}},
	}
	got := hosts.Block(hostEntries(rows, "cluster.local"))
	if !strings.Contains(got, "127.20.0.2\tapi.shop ") || strings.Contains(got, "bank") || strings.Contains(got, "127.20.0.3") || strings.Contains(got, "127.20.0.4") {
		t.Fatalf("block:\n%s", got)
	}
}
