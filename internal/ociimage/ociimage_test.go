package ociimage

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The same binaries and date make the same image, byte for byte; each
// platform reads back with its own binary as the entrypoint.
func TestWriteIsReproducibleAndReadsBack(t *testing.T) {
	tmp := t.TempDir()
	amd, arm := filepath.Join(tmp, "amd"), filepath.Join(tmp, "arm")
	os.WriteFile(amd, []byte("amd64 binary"), 0o755)
	os.WriteFile(arm, []byte("arm64 binary"), 0o755)
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ps := []Platform{{"linux", "amd64", amd}, {"linux", "arm64", arm}}
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	da, err := Write(a, "ghcr.io/kpf-dev/kpf:1.0.0", at, nil, ps)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Write(b, "ghcr.io/kpf-dev/kpf:1.0.0", at, nil, ps)
	if err != nil {
		t.Fatal(err)
	}
	if da != db || !strings.HasPrefix(da, "sha256:") {
		t.Fatalf("digests %s and %s", da, db)
	}
	for _, f := range []string{"index.json", "oci-layout"} {
		x, _ := os.ReadFile(filepath.Join(a, f))
		y, _ := os.ReadFile(filepath.Join(b, f))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds", f)
		}
	}
	for arch, want := range map[string]string{"amd64": "amd64 binary", "arm64": "arm64 binary"} {
		e, err := Read(a, "linux", arch)
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Binary) != want || e.Entrypoint[0] != "/kpf" || e.User != "65532:65532" || e.Ref != "ghcr.io/kpf-dev/kpf:1.0.0" {
			t.Errorf("%s: %+v", arch, e)
		}
	}
	if _, err := Read(a, "linux", "s390x"); err == nil || !strings.Contains(err.Error(), "linux/amd64, linux/arm64") {
		t.Errorf("a missing platform: %v", err)
	}
	// A blob changed after the fact is refused.
	blobs, _ := filepath.Glob(filepath.Join(a, "blobs", "sha256", "*"))
	for _, p := range blobs {
		bs, _ := os.ReadFile(p)
		if bytes.HasPrefix(bs, []byte{0x1f, 0x8b}) { // a layer
			bs[len(bs)-1] ^= 1
			os.WriteFile(p, bs, 0o644)
		}
	}
	if _, err := Read(a, "linux", "amd64"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("a changed layer: %v", err)
	}
	// A later date makes another image.
	if dc, _ := Write(filepath.Join(tmp, "c"), "ghcr.io/kpf-dev/kpf:1.0.0", at.Add(time.Hour), nil, ps); dc == da {
		t.Error("another date, the same digest")
	}
}

// FuzzRead: whatever index.json holds, Read answers with an image or an
// error, never a panic.
func FuzzRead(f *testing.F) {
	dir := f.TempDir()
	bin := filepath.Join(dir, "bin")
	os.WriteFile(bin, []byte("x"), 0o755)
	if _, err := Write(filepath.Join(dir, "img"), "r", time.Unix(0, 0), nil, []Platform{{"linux", "amd64", bin}}); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, "img", "index.json"))
	f.Add(good)
	f.Add([]byte(`{"manifests":[{"digest":"sha256:../../etc"}]}`))
	f.Fuzz(func(t *testing.T, index []byte) {
		os.WriteFile(filepath.Join(dir, "img", "index.json"), index, 0o644)
		Read(filepath.Join(dir, "img"), "linux", "amd64")
	})
}
