package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kpf-dev/kpf/internal/ui"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A container's ports as kpf ui lists them: TCP (also when the protocol
// is left out) and UDP; SCTP cannot be forwarded and is left out.
func TestUIPorts(t *testing.T) {
	spec := corev1.PodSpec{Containers: []corev1.Container{
		{Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}, {ContainerPort: 53, Name: "dns", Protocol: corev1.ProtocolUDP}}},
		{Ports: []corev1.ContainerPort{{ContainerPort: 9999, Protocol: corev1.ProtocolSCTP}, {ContainerPort: 5432, Protocol: corev1.ProtocolTCP}}},
	}}
	want := []ui.Port{{Port: 8080, Name: "http", Protocol: "TCP"}, {Port: 53, Name: "dns", Protocol: "UDP"}, {Port: 5432, Protocol: "TCP"}}
	if got := uiPorts(spec); !slices.Equal(got, want) {
		t.Fatalf("uiPorts = %+v, want %+v", got, want)
	}
}

// Without a terminal kpf ui says so and what to do, and starts nothing.
func TestUINeedsATerminal(t *testing.T) {
	home := t.TempDir()
	t.Setenv("KPF_HOME", home)
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"ui"}, &out, &errOut); code != ExitError {
		t.Fatalf("exit %d", code)
	}
	want := "error: kpf ui needs a terminal (its input and output are not one): run it in one, or kpf ui --print for its first screen as text\n"
	if got := errOut.String(); got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Fatalf("kpf ui without a terminal left %v in its home (it started a daemon?)", entries)
	}
}

// kpf status --save refuses a file that exists, naming --force, and
// leaves it as it was (it asks nothing of the daemon first).
func TestStatusSaveRefusesAnExistingFile(t *testing.T) {
	t.Setenv("KPF_HOME", t.TempDir())
	path := filepath.Join(t.TempDir(), "kpf.yaml")
	mine := "# my own kpf.yaml\n"
	if err := os.WriteFile(path, []byte(mine), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"status", "--save", path}, &out, &errOut); code != ExitError {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want := "error: --save " + path + ": the file exists: name a new file, or add --force to replace it\n"
	if got := errOut.String(); got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
	if b, _ := os.ReadFile(path); string(b) != mine {
		t.Fatalf("the file was replaced: %q", b)
	}
}

// What the identity may not list is left out and named; the rest is
// listed. An empty namespace that does not exist says so.
func TestUIListTargets(t *testing.T) {
	ctx := context.Background()
	cl := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "empty"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}}},
	)
	got, err := listTargets(ctx, cl, "shop")
	if err != nil || len(got) != 2 || got[0].Ref() != "svc/web" || got[1].Ref() != "pod/web-1" {
		t.Fatalf("shop: %+v, %v", got, err)
	}
	if got, err := listTargets(ctx, cl, "empty"); err != nil || len(got) != 0 {
		t.Fatalf("an empty namespace: %+v, %v", got, err)
	}
	_, err = listTargets(ctx, cl, "nosuchns")
	if want := `namespace "nosuchns" does not exist (kubectl get namespaces lists them; choose one with -n NAMESPACE or n in the UI)`; err == nil || err.Error() != want {
		t.Fatalf("a namespace that does not exist: %v, want %s", err, want)
	}
	_, err = listTargets(ctx, cl, "bad ns!")
	if want := `namespace "bad ns!" is not a valid name (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit): choose one with -n NAMESPACE or n in the UI`; err == nil || err.Error() != want {
		t.Fatalf("an invalid name: %v", err)
	}
	cl.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New("no"))
	})
	got, err = listTargets(ctx, cl, "shop")
	if len(got) != 1 || got[0].Ref() != "pod/web-1" || !errors.Is(err, errPartial) || err.Error() != `you may not list services in namespace "shop": listed only what you may list` {
		t.Fatalf("services forbidden: %+v, %v", got, err)
	}
}

// kpf ui --print starts no daemon: it says none runs.
func TestUIPrintStartsNothing(t *testing.T) {
	home := t.TempDir()
	t.Setenv("KPF_HOME", home)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"ui", "--print", "--width", "120"}, &out, &errOut); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "no kpf daemon runs: kpf ui (without --print) or kpf daemon starts one") || !strings.Contains(out.String(), "daemon not answering") {
		t.Fatalf("kpf ui --print:\n%s", out.String())
	}
	if entries, _ := os.ReadDir(home); len(entries) != 0 {
		t.Fatalf("kpf ui --print left %v in its home (it started a daemon?)", entries)
	}
}
