package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/cluster"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/fakeapi"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/manager"
	"github.com/kpf-dev/kpf/internal/session"
	"github.com/kpf-dev/kpf/internal/spec"
	"github.com/kpf-dev/kpf/internal/tunnel"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
)

// podObjects finds pod/NAME targets in the fake clientset.
type podObjects struct{ c kubernetes.Interface }

func (g podObjects) Get(ctx context.Context, namespace, typeName string) (runtime.Object, error) {
	return g.c.CoreV1().Pods(namespace).Get(ctx, strings.TrimPrefix(typeName, "pod/"), metav1.GetOptions{})
}

// The daemon survives status and watch-style polling while files of two
// contexts are applied, partly and wholly, re-applied as other identities
// and stopped, over and over, with real sessions through the fake API
// server. Run under -race: every piece of daemon state read by status
// must be read under the daemon's discipline (a file's description of who
// it connects as used to be written by a re-apply while status read it,
// and a Go map read and written at once ends the process).
func TestStatusWhileFilesChurn(t *testing.T) {
	fa := fakeapi.New(t)
	client := fa.Client
	const ns = "stress"
	fa.Pod(t, ns, "web-a", nil, true, fakeapi.Echo(t, "web-a"))
	fa.Pod(t, ns, "web-b", nil, true, fakeapi.Echo(t, "web-b"))

	conn, err := cluster.New(fa.Config, client, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	var opened atomic.Int64
	s := &Server{Log: discard,
		Opener: func(_ string, _ identity.Identity, log *slog.Logger) manager.Opener {
			return func(ctx context.Context, fw config.Forward, sp session.Spec) (*session.Session, error) {
				opened.Add(1)
				sp.Transport = tunnel.SPDY // the fake API server has no WebSocket
				return session.Open(ctx, sp, session.Deps{Cluster: conn, Objects: podObjects{fa.Client},
					Out: io.Discard, ErrOut: io.Discard, Log: log})
			}
		},
		Describe: describeByContext,
	}
	c := serve(t, s)
	ctx := context.Background()

	// Each file has a forward of the identity's context and one of its
	// own: two contexts per file.
	dir := t.TempDir()
	var files []string
	for i := range 2 {
		files = append(files, writeFile(t, dir, fmt.Sprintf("f%d.yaml", i), fmt.Sprintf(`forwards:
  - {name: a, namespace: %s, target: pod/web-a, ports: [":80"]}
  - {name: b, namespace: %s, context: other-%d, target: pod/web-b, ports: [":80"]}
`, ns, ns, i)))
	}

	// A file that stays applied throughout: the daemon exits when its
	// last forward stops.
	anchor := writeFile(t, dir, "anchor.yaml", "forwards:\n  - {name: anchor, namespace: "+ns+", target: pod/web-a, ports: [\":80\"]}\n")
	if _, err := c.Apply(ctx, api.ApplyRequest{File: anchor, Identity: as("ctx", "anchor"), Settings: spec.Defaults()}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var pollers sync.WaitGroup
	var polls atomic.Int64
	poll := func(get func() (*api.Status, error)) {
		defer pollers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := get()
			if err != nil {
				t.Errorf("status: %v", err)
				return
			}
			for _, f := range st.Forwards {
				if f.File == "" || f.Context == "" {
					t.Errorf("a row without its file or context: %+v", f)
					return
				}
			}
			polls.Add(1)
		}
	}
	for range 2 {
		pollers.Add(1)
		go poll(func() (*api.Status, error) { return c.Status(ctx, "") })
	}
	pollers.Add(1)
	go poll(func() (*api.Status, error) { return c.Status(ctx, files[0]) })

	var churn sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	for i, f := range files {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for round := 0; time.Now().Before(deadline); round++ {
				id := as("ctx", fmt.Sprint("user-", round%2))
				// Part of the file, then all of it (a context it has not
				// seen), then as another identity, then down.
				steps := []func() error{
					func() error {
						_, err := c.Apply(ctx, api.ApplyRequest{File: f, Names: []string{"a"}, Identity: id, Settings: spec.Defaults()})
						return err
					},
					func() error {
						_, err := c.Apply(ctx, api.ApplyRequest{File: f, Identity: id, Settings: spec.Defaults()})
						return err
					},
					func() error {
						_, err := c.Apply(ctx, api.ApplyRequest{File: f, Identity: as("ctx", "someone-else"), Settings: spec.Defaults()})
						return err
					},
					func() error {
						_, _, err := c.Down(ctx, api.NamesRequest{File: f})
						return err
					},
				}
				for j, step := range steps {
					if err := step(); err != nil {
						t.Errorf("file %d round %d step %d: %v", i, round, j, err)
						return
					}
				}
			}
		}()
	}
	churn.Wait()
	close(stop)
	pollers.Wait()
	if polls.Load() < 10 || opened.Load() < 4 {
		t.Fatalf("%d status answers and %d sessions opened: the test did not churn", polls.Load(), opened.Load())
	}
	// The daemon still answers, and runs only the anchor: the last down
	// of each file stopped it.
	if st, err := c.Status(ctx, ""); err != nil {
		t.Fatalf("status after the churn: %v", err)
	} else if len(st.Forwards) != 1 || st.Forwards[0].Name != "anchor" {
		t.Fatalf("after every file's down: %+v", st.Forwards)
	}
}
