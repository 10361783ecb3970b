package hosts

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	pg    = Service(netip.MustParseAddr("127.20.1.2"), "db", "postgres", "cluster.local")
	redis = Service(netip.MustParseAddr("127.20.3.4"), "cache", "redis", "cluster.local")
)

func TestUpdateKeepsTheRestOfTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	orig := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# a comment\n10.0.0.1 printer"
	if err := os.WriteFile(path, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := Update(path, Shorten([]Entry{pg, redis})); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want := orig + "\n" + Begin + "\n127.20.1.2\tpostgres.db postgres.db.svc postgres.db.svc.cluster.local postgres\n127.20.3.4\tredis.cache redis.cache.svc redis.cache.svc.cluster.local redis\n" + End + "\n"
	if string(got) != want {
		t.Fatalf("after the first write:\n%s\nwant:\n%s", got, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's own 0640", st.Mode().Perm())
	}
	// Lines after the block stay after it; a new block replaces the old.
	os.WriteFile(path, append(got, "10.0.0.2 scanner\n"...), 0o640)
	if err := Update(path, []Entry{redis}); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	if strings.Contains(string(got), "postgres") || !strings.Contains(string(got), "redis.cache.svc\t") && !strings.Contains(string(got), "redis.cache ") || !strings.HasSuffix(string(got), End+"\n10.0.0.2 scanner\n") {
		t.Fatalf("after the second write:\n%s", got)
	}
	// Nothing forwarded: the block goes, the file is as it was.
	if err := Update(path, nil); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	if want := orig + "\n10.0.0.2 scanner\n"; string(got) != want {
		t.Fatalf("after removing the block:\n%q\nwant\n%q", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".hosts.kpf-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestShortNamesOnlyWhereUnique(t *testing.T) {
	api1 := Service(netip.MustParseAddr("127.20.0.1"), "shop", "api", "cluster.local")
	api2 := Service(netip.MustParseAddr("127.20.0.2"), "blog", "api", "cluster.local")
	for _, e := range Shorten([]Entry{api1, api2, pg}) {
		hasShort := e.Names[len(e.Names)-1] == strings.SplitN(e.Names[0], ".", 2)[0]
		if hasShort != (e.Addr == pg.Addr) {
			t.Errorf("%s: short name %v", e, hasShort)
		}
	}
}

func TestBrokenBlocksAreNotGuessed(t *testing.T) {
	if _, err := Replace([]byte(Begin+"\n1.2.3.4 x\n"), nil); err == nil || !strings.Contains(err.Error(), "no \"# END kpf\" line") {
		t.Errorf("unterminated block: %v", err)
	}
	if _, err := Replace([]byte(Begin+"\n"+End+"\n"+Begin+"\n"+End+"\n"), nil); err == nil || !strings.Contains(err.Error(), "second kpf block") {
		t.Errorf("two blocks: %v", err)
	}
}

func FuzzReplace(f *testing.F) {
	f.Add("127.0.0.1 localhost\n", true)
	f.Add(Begin+"\n1.2.3.4 a\n"+End+"\nrest", false)
	f.Add("no newline", true)
	f.Fuzz(func(t *testing.T, content string, add bool) {
		var es []Entry
		if add {
			es = []Entry{pg}
		}
		out, err := Replace([]byte(content), es)
		if err != nil {
			return
		}
		// Removing the block again gives a file with no kpf lines, and
		// every line of the original outside its block.
		back, err := Replace(out, nil)
		if err != nil {
			t.Fatalf("cannot remove the block just written: %v\n%q", err, out)
		}
		if strings.Contains("\n"+string(back), "\n"+Begin+"\n") {
			t.Fatalf("block left: %q", back)
		}
		if add && !strings.Contains(string(out), pg.String()) {
			t.Fatalf("entry missing: %q", out)
		}
		// A file that had no block and ended in a newline is as it was.
		if !strings.Contains(content, Begin) && strings.HasSuffix(content, "\n") && string(back) != content {
			t.Fatalf("adding and removing the block changed the file:\n%q\n%q", content, back)
		}
	})
}
