// Package e2e runs the real kpf binary against the sandbox cluster, side by
// side with kubectl where kpf claims parity.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/kpf-dev/kpf/sandbox/sandboxtest"
)

// kpfBin is the kpf binary under test.
var kpfBin string

func TestMain(m *testing.M) {
	if err := buildKpf(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	sandboxtest.Main(m)
}

// buildKpf uses $KPF_BIN, or builds ./cmd/kpf from this repository.
func buildKpf() error {
	if b := os.Getenv("KPF_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		kpfBin = abs
		return err
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	dir, err := os.MkdirTemp("", "kpf-e2e-")
	if err != nil {
		return err
	}
	kpfBin = filepath.Join(dir, "kpf")
	cmd := exec.Command("go", "build", "-o", kpfBin, "./cmd/kpf")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build kpf: %v\n%s", err, out)
	}
	return nil
}
