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

// A headless service's pods forwarded by kpf up --all are named as the
// cluster's DNS names them (db-0.db.shop), with no bare name; a pod
// forward of a file, or one whose name does not match its pod, is not.
func TestHostEntriesOfHeadlessPods(t *testing.T) {
	rows := []api.Forward{
		{Name: "db-0.db.shop:5432", Target: "pod/db-0", Namespace: "shop", Addresses: []string{"127.20.0.5"}},
		{Name: "db-0.db.shop:9187", Target: "pod/db-0", Namespace: "shop", Addresses: []string{"127.20.0.5"}},
		{Name: "db-1.db.shop:53/udp", Target: "pod/db-1", Namespace: "shop", Addresses: []string{"127.20.0.6"}},
		{Name: "db", Target: "pod/db-2", Namespace: "shop", Addresses: []string{"127.20.0.7"}},
		{Name: "db-3.db.other:5432", Target: "pod/db-3", Namespace: "shop", Addresses: []string{"127.20.0.8"}},
		{Name: "api.shop:80", Target: "svc/api", Namespace: "shop", Addresses: []string{"127.20.0.2"}},
	}
	got := hosts.Block(hostEntries(rows, "cluster.local"))
	for _, want := range []string{
		"127.20.0.5\tdb-0.db.shop db-0.db.shop.svc db-0.db.shop.svc.cluster.local\n",
		"127.20.0.6\tdb-1.db.shop db-1.db.shop.svc db-1.db.shop.svc.cluster.local\n",
		"127.20.0.2\tapi.shop api.shop.svc api.shop.svc.cluster.local api\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no line %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "127.20.0.7") || strings.Contains(got, "127.20.0.8") || strings.Count(got, "127.20.0.5") != 1 {
		t.Errorf("block:\n%s", got)
	}
}
