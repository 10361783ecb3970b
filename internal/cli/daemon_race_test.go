package cli

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
)

// kpf up -d that reaches a daemon in the instant it exits (kpf down, from
// another shell, stopped its last forward) applies the file to the next
// daemon, started for it, instead of failing with "no kpf daemon is
// running" while one runs.
func TestUpDetachedOutlivesAnExitingDaemon(t *testing.T) {
	home, err := os.MkdirTemp("", "kpfcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	t.Setenv("KPF_HOME", home)
	h := daemon.Home(home)

	// The exiting daemon: it answers the status, and is gone by the apply.
	ln, err := net.Listen("unix", h.Socket())
	if err != nil {
		t.Fatal(err)
	}
	var closeOnce sync.Once
	exiting := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"schemaVersion":2}`)
			return
		}
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
		closeOnce.Do(func() { ln.Close() })
	})}
	go exiting.Serve(ln)
	t.Cleanup(func() { exiting.Close() })

	started := 0
	var serving sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); serving.Wait() })
	start := func(daemon.Home, io.Writer, ...string) error {
		started++
		s := &daemon.Server{Home: h, Log: slog.New(slog.DiscardHandler),
			Opener: func(string, identity.Identity, *slog.Logger) manager.Opener {
				return func(ctx context.Context, _ config.Forward, _ session.Spec) (*session.Session, error) {
					<-ctx.Done()
					return nil, ctx.Err()
				}
			}}
		serving.Go(func() { s.Serve(ctx) })
		return nil
	}

	file := filepath.Join(t.TempDir(), "kpf.yaml")
	os.WriteFile(file, []byte("forwards:\n  - {name: api, target: svc/api, ports: [\"18080:80\"]}\n"), 0o600)
	f, _, err := loadForwards(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut strings.Builder
	o := &UpOptions{g: &globals{kube: identity.NewFlags(), out: &out, errOut: &errOut}, Settings: spec.Defaults(), Detach: true,
		file: f, startDaemon: start}
	if err := o.upDetached(context.Background()); err != nil {
		t.Fatalf("kpf up -d: %v\n%s", err, errOut.String())
	}
	if started != 1 || !strings.Contains(out.String(), "started: api") {
		t.Fatalf("daemons started: %d; output:\n%s", started, out.String())
	}
	st, err := daemon.NewClient(h).Status(context.Background(), "")
	if err != nil || len(st.Forwards) != 1 {
		t.Fatalf("the new daemon: %+v, %v", st, err)
	}
}

// kpf down --all with nothing running says so, not "stopped: " and nothing.
func TestPickedTextOfNothing(t *testing.T) {
	if got := pickedText(nil); got != "none (no forward was running)" {
		t.Fatalf("pickedText(nil) = %q", got)
	}
}
