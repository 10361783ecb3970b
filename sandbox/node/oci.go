package node

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// LoadImage loads an image from an OCI image layout (what kpf's release
// builds for its relay, and what registries take), as a container runtime
// pulls one: the manifest for this node's platform, its single layer
// unpacked, its entrypoint the program of ref. Only images of one layer
// whose entrypoint is a file in it are supported: kpf's relay image is
// one (FROM scratch, the binary alone). It returns the entrypoint's path.
func LoadImage(dir, ref, layout string) (string, error) {
	if err := checkRef(ref); err != nil {
		return "", err // before anything is unpacked
	}
	var outer ociIndex
	if err := readLayoutJSON(layout, "index.json", "", &outer); err != nil {
		return "", err
	}
	if len(outer.Manifests) != 1 {
		return "", fmt.Errorf("%s/index.json: want one image, has %d", layout, len(outer.Manifests))
	}
	var idx ociIndex
	if err := readLayoutJSON(layout, "", outer.Manifests[0].Digest, &idx); err != nil {
		return "", err
	}
	digest := ""
	var have []string
	for _, m := range idx.Manifests {
		have = append(have, m.Platform.OS+"/"+m.Platform.Architecture)
		if m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
			digest = m.Digest
		}
	}
	if digest == "" {
		return "", fmt.Errorf("%s: no image for linux/%s (it has %s)", layout, runtime.GOARCH, strings.Join(have, ", "))
	}
	var man struct {
		Config ociDesc   `json:"config"`
		Layers []ociDesc `json:"layers"`
	}
	if err := readLayoutJSON(layout, "", digest, &man); err != nil {
		return "", err
	}
	var cfg struct {
		Config struct{ Entrypoint []string } `json:"config"`
	}
	if err := readLayoutJSON(layout, "", man.Config.Digest, &cfg); err != nil {
		return "", err
	}
	if len(man.Layers) != 1 || len(cfg.Config.Entrypoint) != 1 {
		return "", fmt.Errorf("%s: want one layer and an entrypoint of one file", layout)
	}
	layer, err := readBlob(layout, man.Layers[0].Digest)
	if err != nil {
		return "", err
	}
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return "", fmt.Errorf("%s: layer: %w", layout, err)
	}
	want := strings.TrimPrefix(cfg.Config.Entrypoint[0], "/")
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: the layer has no %s", layout, cfg.Config.Entrypoint[0])
		}
		if err != nil {
			return "", fmt.Errorf("%s: layer: %w", layout, err)
		}
		if h.Name != want || h.Typeflag != tar.TypeReg {
			continue
		}
		// Unpacked once per image, under its digest.
		root := filepath.Join(dir, "image-store", strings.TrimPrefix(digest, "sha256:")[:16])
		prog := filepath.Join(root, filepath.Base(want))
		if err := os.MkdirAll(root, 0o755); err != nil {
			return "", err
		}
		f, err := os.OpenFile(prog+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(f, io.LimitReader(tr, 1<<30))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(prog+".tmp", prog)
		}
		if err != nil {
			return "", err
		}
		if err := AddImage(dir, ref, prog); err != nil {
			return "", err
		}
		pruneImageStore(dir)
		return prog, nil
	}
}

// pruneImageStore removes the unpacked images no reference names any
// more (a ref loaded again with another build), so that repeated loads do
// not pile up; a container still running one keeps its open file.
func pruneImageStore(dir string) {
	b, _ := os.ReadFile(filepath.Join(dir, ImagesFile))
	used := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if _, prog, ok := strings.Cut(l, " "); ok {
			used[filepath.Dir(prog)] = true
		}
	}
	store := filepath.Join(dir, "image-store")
	ents, _ := os.ReadDir(store)
	for _, e := range ents {
		if p := filepath.Join(store, e.Name()); !used[p] {
			os.RemoveAll(p)
		}
	}
}

type ociDesc struct {
	Digest   string `json:"digest"`
	Platform struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

type ociIndex struct {
	Manifests []ociDesc `json:"manifests"`
}

// readLayoutJSON reads a layout's file name, or its blob digest.
func readLayoutJSON(layout, name, digest string, v any) error {
	var b []byte
	var err error
	if name != "" {
		b, err = os.ReadFile(filepath.Join(layout, name))
	} else {
		b, err = readBlob(layout, digest)
	}
	if err != nil {
		return fmt.Errorf("%s: not an OCI image layout: %w", layout, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s %s%s: %w", layout, name, digest, err)
	}
	return nil
}

// readBlob reads a blob, checking it against its digest.
func readBlob(layout, digest string) ([]byte, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("digest %q: want sha256:<64 hex>", digest)
	}
	b, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", h))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != h {
		return nil, fmt.Errorf("blob %s: its content does not match its digest", digest)
	}
	return b, nil
}
