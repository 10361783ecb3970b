package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kpf-dev/kpf/internal/ui"
	corev1 "k8s.io/api/core/v1"
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
