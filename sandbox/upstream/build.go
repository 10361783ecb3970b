// Package upstream builds the sandbox's control plane (etcd, kube-apiserver,
// kube-controller-manager and kubectl) from their upstream Go modules, once,
// into a cache folder keyed by version and by the build modules' go.sum, so
// that a second build never happens.
//
// The build modules live beside this file, in ./kubernetes and ./etcd, each
// with a go.mod of its own: the kpf module and the sandbox module must never
// link k8s.io/kubernetes.
package upstream

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Versions built. They must match the build modules' go.mod files.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.6.16"
)

// A Component is one binary of the control plane.
type Component struct {
	Name    string // the binary's file name
	Module  string // the build module folder below upstream/
	Package string
}

// Components lists what the sandbox builds.
var Components = []Component{
	{"etcd", "etcd", "go.etcd.io/etcd/server/v3"},
	{"kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver"},
	{"kube-controller-manager", "kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager"},
	{"kubectl", "kubernetes", "k8s.io/kubernetes/cmd/kubectl"},
}

// Bin is a folder of built binaries.
type Bin string

// Path returns the path of the named binary.
func (b Bin) Path(name string) string { return filepath.Join(string(b), name) }

// FindSource returns the folder holding the build modules: $KPF_SANDBOX_SRC,
// or sandbox/upstream found by walking up from the working directory and from
// the running executable.
func FindSource() (string, error) {
	if dir := os.Getenv("KPF_SANDBOX_SRC"); dir != "" {
		return dir, checkSource(dir)
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			for _, cand := range []string{filepath.Join(dir, "sandbox", "upstream"), filepath.Join(dir, "upstream")} {
				if checkSource(cand) == nil {
					return cand, nil
				}
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", errors.New("cannot find the sandbox build modules (sandbox/upstream/kubernetes/go.mod): run kpf-sandbox from inside the kpf repository or set KPF_SANDBOX_SRC to its sandbox/upstream folder")
}

func checkSource(dir string) error {
	for _, m := range []string{"kubernetes", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, m, "go.sum")); err != nil {
			return fmt.Errorf("KPF_SANDBOX_SRC=%s: %w", dir, err)
		}
	}
	return nil
}

// Key names the cache folder: the versions, and a hash of the build modules'
// go.mod and go.sum, so that changing a dependency builds anew.
func Key(src string) (string, error) {
	h := sha256.New()
	for _, m := range []string{"kubernetes", "etcd"} {
		for _, f := range []string{"go.mod", "go.sum"} {
			b, err := os.ReadFile(filepath.Join(src, m, f))
			if err != nil {
				return "", err
			}
			h.Write(b)
		}
	}
	return fmt.Sprintf("k8s-%s_etcd-%s_%s", KubernetesVersion, EtcdVersion, hex.EncodeToString(h.Sum(nil))[:12]), nil
}

// Ensure returns the folder of built binaries below cacheDir, building what is
// missing. Progress goes to w. Concurrent callers wait on a lock file.
func Ensure(ctx context.Context, src, cacheDir string, w io.Writer) (Bin, error) {
	key, err := Key(src)
	if err != nil {
		return "", err
	}
	bin := Bin(filepath.Join(cacheDir, key))
	if complete(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if complete(bin) { // another process built it while we waited
		return bin, nil
	}
	tmp := string(bin) + ".partial"
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(w, "building the sandbox control plane (Kubernetes %s, etcd %s) into %s\n", KubernetesVersion, EtcdVersion, bin)
	fmt.Fprintf(w, "this happens once per version; a cold build takes about 10 minutes on 2 cores\n")
	for _, mod := range []string{"etcd", "kubernetes"} {
		var pkgs []string
		for _, c := range Components {
			if c.Module == mod && !exists(filepath.Join(tmp, c.Name)) && !(c.Name == "etcd" && exists(filepath.Join(tmp, "server"))) {
				pkgs = append(pkgs, c.Package)
			}
		}
		if len(pkgs) == 0 {
			continue
		}
		if err := build(ctx, filepath.Join(src, mod), tmp, pkgs, w); err != nil {
			return "", err
		}
	}
	// go build names the etcd binary after its module, go.etcd.io/etcd/server/v3.
	if exists(filepath.Join(tmp, "server")) {
		if err := os.Rename(filepath.Join(tmp, "server"), filepath.Join(tmp, "etcd")); err != nil {
			return "", err
		}
	}
	if !complete(Bin(tmp)) {
		return "", fmt.Errorf("build in %s did not produce every binary (%v)", tmp, Components)
	}
	if err := os.Rename(tmp, string(bin)); err != nil {
		return "", err
	}
	return bin, nil
}

func complete(bin Bin) bool {
	for _, c := range Components {
		if !exists(bin.Path(c.Name)) {
			return false
		}
	}
	return true
}

// ldflags stamps the versions that `kubectl version` and /version report;
// without them the binaries say v0.0.0.
func ldflags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var b strings.Builder
	b.WriteString("-s -w")
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		for k, v := range map[string]string{
			"gitVersion":   KubernetesVersion,
			"gitMajor":     major,
			"gitMinor":     minor,
			"gitCommit":    "kpf-sandbox",
			"gitTreeState": "clean",
			"buildDate":    "1970-01-01T00:00:00Z",
		} {
			fmt.Fprintf(&b, " -X %s.%s=%s", pkg, k, v)
		}
	}
	fmt.Fprintf(&b, " -X go.etcd.io/etcd/api/v3/version.GitSHA=kpf-sandbox")
	return b.String()
}

// build runs go build -v and turns its package lines into a progress count.
func build(ctx context.Context, modDir, out string, pkgs []string, w io.Writer) error {
	total := countDeps(ctx, modDir, pkgs)
	args := append([]string{"build", "-v", "-trimpath", "-ldflags", ldflags(), "-o", out + string(os.PathSeparator)}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("go build in %s: %w", modDir, err)
	}
	var tail []string
	done, last := 0, time.Time{}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "go: downloading") || strings.Contains(line, " ") {
			tail = append(tail, line)
			if len(tail) > 40 {
				tail = tail[1:]
			}
			continue
		}
		done++
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			fmt.Fprintf(w, "  [%s] %s (%s)\n", filepath.Base(modDir), progress(done, total), time.Since(start).Round(time.Second))
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("go build %s failed: %w\n%s", strings.Join(pkgs, " "), err, strings.Join(tail, "\n"))
	}
	fmt.Fprintf(w, "  [%s] built %s in %s\n", filepath.Base(modDir), strings.Join(pkgs, ", "), time.Since(start).Round(time.Second))
	return nil
}

// progress is the count of compiled packages. go build -v prints the
// standard library's too when it compiles them (a cold cache, other
// build flags): the total counts them, and the count never passes it.
func progress(done, total int) string {
	if total <= 0 || done > total {
		return fmt.Sprintf("compiled %d packages", done)
	}
	return fmt.Sprintf("compiled %d/%d packages", done, total)
}

// countDeps is how many packages go build -v may print (every package the
// build needs, the standard library's included); 0 if unknown.
func countDeps(ctx context.Context, modDir string, pkgs []string) int {
	cmd := exec.CommandContext(ctx, "go", append([]string{"list", "-deps", "-f", "x"}, pkgs...)...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "x")
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
