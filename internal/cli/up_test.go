package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"errors"
	"fmt"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/forward"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/portspec"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/spf13/pflag"
	"net"
)

// kpf up -d hands the daemon every kubectl connection flag it was given
// (enumerated from the command's own flags, so a new one cannot be
// forgotten), its environment and its settings, in canonical form.
func TestUpDetachedSendsEveryFlagToTheDaemon(t *testing.T) {
	home, err := os.MkdirTemp("", "kpfcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	t.Setenv("KPF_HOME", home)
	t.Setenv("AWS_PROFILE", "team-b")
	t.Setenv("OTHER_TOOL_TOKEN", "s3cret") // another tool's: it stays in the shell
	var mu sync.Mutex
	var gotID identity.Identity
	var gotSpec session.Spec
	opened := make(chan struct{}, 1)
	s := &daemon.Server{Home: daemon.Home(home), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Opener: func(_ string, id identity.Identity, _ *slog.Logger) manager.Opener {
			return func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
				mu.Lock()
				gotID, gotSpec = id, sp
				mu.Unlock()
				opened <- struct{}{}
				<-ctx.Done()
				return nil, ctx.Err()
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for !daemon.NewClient(daemon.Home(home)).Running() {
		time.Sleep(10 * time.Millisecond)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "kpf.yaml")
	os.WriteFile(file, []byte("forwards:\n  - {name: api, target: svc/api, ports: [\"18080:80\"]}\n"), 0o600)

	// Every connection flag, with a value of its own.
	kube := identity.NewFlags()
	fs := pflag.NewFlagSet("probe", pflag.ContinueOnError)
	kube.AddFlags(fs)
	args := []string{"up", "-d", "-f", file, "--transport", "WebSocket", "--reconnect-wait", "2s"}
	want := map[string][]string{}
	for _, name := range kube.Names() {
		fl := fs.Lookup(name)
		switch fl.Value.Type() {
		case "bool":
			args = append(args, "--"+name)
			want[name] = []string{"true"}
		case "stringArray":
			args = append(args, "--"+name, "x-"+name, "--"+name, "y-"+name)
			want[name] = []string{"x-" + name, "y-" + name}
		default:
			args = append(args, "--"+name, "/v-"+name)
			want[name] = []string{"/v-" + name}
		}
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "started: api") {
		t.Fatalf("output %q", out.String())
	}
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon never opened the forward")
	}
	mu.Lock()
	defer mu.Unlock()
	for name, w := range want {
		if got := gotID.Flags[name]; !slices.Equal(got, w) {
			t.Errorf("--%s reached the daemon as %q, want %q", name, got, w)
		}
	}
	if len(gotID.Flags) != len(want) {
		t.Errorf("the daemon got %d flags, want %d: %v", len(gotID.Flags), len(want), gotID.Flags)
	}
	if !slices.Contains(gotID.Env, "AWS_PROFILE=team-b") {
		t.Errorf("the command's environment did not reach the daemon")
	}
	for _, kv := range gotID.Env {
		if strings.Contains(kv, "s3cret") || strings.HasPrefix(kv, "PWD=") || strings.HasPrefix(kv, "TERM=") {
			t.Errorf("the daemon got %q, which is not one of the variables that decide how kpf connects", kv)
		}
	}
	if gotSpec.Transport != "websocket" || gotSpec.ReconnectWait != 2*time.Second {
		t.Errorf("settings reached the daemon as transport %q, reconnect wait %s", gotSpec.Transport, gotSpec.ReconnectWait)
	}
}

func TestTableShowsUDPOnlyWhenThereIsSome(t *testing.T) {
	tcp := api.Forward{Name: "api", Target: "svc/api", State: "ready", Health: "-", Local: []string{"127.0.0.1:8080"}}
	var b strings.Builder
	writeTable(&b, []api.Forward{tcp}, false)
	if strings.Contains(b.String(), "UDP") {
		t.Errorf("a table without UDP forwards has a UDP column:\n%s", b.String())
	}
	dns := api.Forward{Name: "dns", Target: "svc/dns", State: "ready", Health: "-", Local: []string{"127.0.0.1:5353/udp"}, Relay: "kpf-relay-x", UDPPeers: 2, DatagramsIn: 120, DatagramsOut: 118}
	b.Reset()
	writeTable(&b, []api.Forward{tcp, dns}, false)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if !strings.Contains(lines[0], "UDP PEERS DGRAMS IN/OUT") || !strings.Contains(lines[2], "2 120/118") || !strings.Contains(lines[1], "0  -  ") && !strings.Contains(lines[1], " - ") {
		t.Errorf("table:\n%s", b.String())
	}
}

// A ready forward whose check fails shows why in the table, not only
// "unhealthy"; a long reason is cut on a rune, not inside one.
func TestTableSaysWhyAForwardIsUnhealthy(t *testing.T) {
	rows := []api.Forward{
		{Name: "db", Target: "pod/db-0", State: "ready", Health: "unhealthy", HealthNote: "pod shop/db-0 refused the connection to port 5432: nothing listens there"},
		{Name: "api", Target: "svc/api", State: "ready", Health: "healthy"},
		{Name: "é", Target: "svc/é", State: "waiting", Health: "unknown", LastError: strings.Repeat("é", 80)},
	}
	var b strings.Builder
	writeTable(&b, rows, false)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if !strings.Contains(lines[1], "pod shop/db-0 refused the connection to port 5432: nothing …") {
		t.Errorf("the unhealthy forward's row does not say why:\n%s", b.String())
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[2]), " -") {
		t.Errorf("a healthy forward shows an error:\n%s", b.String())
	}
	if !utf8.ValidString(b.String()) || !strings.Contains(lines[3], strings.Repeat("é", 59)+"…") {
		t.Errorf("a long reason is not cut on a rune:\n%s", b.String())
	}
}

// A forward of kpf up or the daemon that cannot bind its port says why in
// its status (and so in --wait's summary): that another process holds
// the port, and the fix, not only that it could not listen.
func TestListenFailureSaysWhy(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := uint16(busy.Addr().(*net.TCPAddr).Port)
	addrs, err := portspec.ParseAddresses([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = forward.Listen(addrs, []portspec.Resolved{{Local: port, Remote: 8080}}, io.Discard, io.Discard)
	got := withListenReasons(&session.StageError{Stage: session.StageListen, Err: err})
	if !errors.Is(got, forward.ErrNoListener) || !strings.Contains(got.Error(), "address already in use") ||
		!strings.Contains(got.Error(), fmt.Sprintf("another process holds port %d", port)) || strings.Contains(got.Error(), "\n") {
		t.Fatalf("%q: want the reason, the holder and the fix on one line", got)
	}
}

// What kpf status and kpf up -d say of the files a restarted daemon
// found: each restored with its forwards and any note, or why not.
func TestRestoredSaysWhatCameBack(t *testing.T) {
	var b strings.Builder
	writeRestored(&b, []api.Restore{
		{File: "/a.yaml", Restored: true, Forwards: []string{"web", "dns"}, PreviousPID: 42},
		{File: "/b.yaml", Restored: true, Forwards: []string{"db"}, Note: "restored as applied at T: the file changed since", PreviousPID: 42},
		{File: "/c.yaml", Note: "not restored: its identity held --token, which kpf keeps in memory only", PreviousPID: 42},
	})
	want := `the daemon before this one (pid 42) stopped without kpf down; its files:
  /a.yaml: restored (web, dns)
  /b.yaml: restored (db); restored as applied at T: the file changed since
  /c.yaml: not restored: its identity held --token, which kpf keeps in memory only
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeRestored(&b, nil)
	if b.Len() != 0 {
		t.Errorf("nothing restored, yet %q", b.String())
	}
}

// kpf up -d --api-addr to a daemon that runs already says when the
// daemon serves its API elsewhere, or not at all, and how to apply it.
func TestAPIAddrNote(t *testing.T) {
	for _, tc := range []struct{ want, serving, note string }{
		{"127.0.0.1:7070", "127.0.0.1:7070", ""},
		{"localhost:7070", "127.0.0.1:7070", ""},
		{"127.0.0.1:0", "127.0.0.1:41234", ""}, // any port was asked for
		{"127.0.0.1:7070", "", "note: --api-addr 127.0.0.1:7070 is not applied: the kpf daemon was running already, without an API address; a daemon takes --api-addr when it starts (restart it: kpf down --all, then kpf up -d --api-addr 127.0.0.1:7070)"},
		{"127.0.0.1:7070", "127.0.0.1:7071", "note: --api-addr 127.0.0.1:7070 is not applied: the kpf daemon was running already, with its API on 127.0.0.1:7071; a daemon takes --api-addr when it starts (restart it: kpf down --all, then kpf up -d --api-addr 127.0.0.1:7070)"},
		{"[::1]:7070", "127.0.0.1:7070", "note: --api-addr [::1]:7070 is not applied: the kpf daemon was running already, with its API on 127.0.0.1:7070; a daemon takes --api-addr when it starts (restart it: kpf down --all, then kpf up -d --api-addr [::1]:7070)"},
	} {
		if got := apiAddrNote(tc.want, tc.serving); got != tc.note {
			t.Errorf("apiAddrNote(%q, %q) = %q\nwant %q", tc.want, tc.serving, got, tc.note)
		}
	}
}

// kpf up -d of a forward that fails as it is applied (its local port is
// another file's forward's) says so and exits non-zero: it said
// "started: other" and exited 0.
func TestUpDetachedSaysWhatFailedAtOnce(t *testing.T) {
	home, err := os.MkdirTemp("", "kpfcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	t.Setenv("KPF_HOME", home)
	s := &daemon.Server{Home: daemon.Home(home), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Opener: func(string, identity.Identity, *slog.Logger) manager.Opener {
			return func(ctx context.Context, _ config.Forward, _ session.Spec) (*session.Session, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for !daemon.NewClient(daemon.Home(home)).Running() {
		time.Sleep(10 * time.Millisecond)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	os.WriteFile(a, []byte("forwards:\n  - {name: db, target: svc/db, ports: [\"15433:5432\"]}\n"), 0o600)
	os.WriteFile(b, []byte("forwards:\n  - {name: other, target: svc/x, ports: [\"15433:5432\"]}\n"), 0o600)
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"up", "-d", "-f", a}, &out, &errOut); code != 0 {
		t.Fatalf("up -d a: exit %d: %s%s", code, out.String(), errOut.String())
	}
	out.Reset()
	errOut.Reset()
	code := Run(context.Background(), []string{"up", "-d", "-f", b}, &out, &errOut)
	if code == 0 || strings.Contains(out.String(), "started: other") ||
		!strings.Contains(errOut.String(), `failed: other: local port taken by another file's forward: local port 15433 on 127.0.0.1 is used by forward "db"`) {
		t.Fatalf("up -d b: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
}

// kpf status shows the daemon's warnings (a killed daemon's API address
// it could not serve was only in the daemon's log).
func TestStatusShowsWarnings(t *testing.T) {
	var b bytes.Buffer
	writeStatus(&b, &api.Status{Started: time.Now(), Warnings: []string{"the API address 127.0.0.1:7070 of the daemon before this one (which was killed) is not served: taken"}})
	if !strings.Contains(b.String(), "\nwarning: the API address 127.0.0.1:7070 of the daemon before this one (which was killed) is not served: taken\n") {
		t.Fatalf("status %q", b.String())
	}
}
