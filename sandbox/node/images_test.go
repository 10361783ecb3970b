package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An image loaded as kpf.test/NAME could never run (the node runs the
// built-in kpf.test/ images itself, and never looks that prefix up among
// loaded ones): image add and image load refuse it, and load nothing.
func TestBuiltinPrefixIsRefused(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want := `image reference "kpf.test/mine": kpf.test/ is the prefix of the sandbox's built-in images`
	if err := AddImage(dir, "kpf.test/mine", exe); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("image add: %v, want %q", err, want)
	}
	if _, err := LoadImage(dir, "kpf.test/mine", t.TempDir()); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("image load: %v, want %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, ImagesFile)); !os.IsNotExist(err) {
		t.Errorf("something was loaded: %v", err)
	}
	// Another name loads.
	if err := AddImage(dir, "example.test/mine", exe); err != nil {
		t.Errorf("image add example.test/mine: %v", err)
	}
}
