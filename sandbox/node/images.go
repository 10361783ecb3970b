package node

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The sandbox's registry beyond its built-in kpf.test/* images: images
// loaded with kpf-sandbox image add, each a reference and the program that
// is its entrypoint (a release's relay image is the kpf binary, FROM
// scratch). A container of such an image runs the entrypoint with the
// container's args (its command, if set, replaces the entrypoint), as a
// container runtime runs an image.

// ImagesFile is the registry's file in the node's folder: "REF PROGRAM"
// lines.
const ImagesFile = "images"

// entrypoint is the program of a loaded image, or "".
func (a *Agent) entrypoint(ref string) string {
	f, err := os.Open(filepath.Join(a.cfg.StateDir, ImagesFile))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if r, prog, ok := strings.Cut(sc.Text(), " "); ok && r == ref {
			return prog
		}
	}
	return ""
}

// AddImage loads an image into the registry of the node whose folder is
// dir: ref runs program. A reference loaded again takes the new program.
func AddImage(dir, ref, program string) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	abs, err := filepath.Abs(program)
	if err != nil {
		return err
	}
	if st, err := os.Stat(abs); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: not an executable program", program)
	}
	path := filepath.Join(dir, ImagesFile)
	var lines []string
	if b, err := os.ReadFile(path); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if r, _, _ := strings.Cut(l, " "); r != ref && l != "" {
				lines = append(lines, l)
			}
		}
	}
	lines = append(lines, ref+" "+abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkRef refuses a reference that cannot be loaded: not one word, or of
// the built-in kpf.test/ images, which the node runs itself and never
// looks up in its registry (such an image was loaded, and never ran).
func checkRef(ref string) error {
	if strings.ContainsAny(ref, " \n") || ref == "" {
		return fmt.Errorf("image reference %q: want one word, like ghcr.io/kpf-dev/kpf:v1.2.3", ref)
	}
	if strings.HasPrefix(ref, BuiltinPrefix) {
		return fmt.Errorf("image reference %q: %s is the prefix of the sandbox's built-in images (http, echo, bulk, udp-echo), which are never looked up among loaded ones: load it under another name, like example.test/%s", ref, BuiltinPrefix, strings.TrimPrefix(ref, BuiltinPrefix))
	}
	return nil
}
