// Package ociimage writes and reads the relay's image: an OCI image layout
// (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
// holding, for each platform, one layer with the kpf binary as /kpf, the
// entrypoint, run as 65532 — what a Dockerfile FROM scratch with COPY kpf
// / would make, built without a container runtime and byte for byte the
// same from the same binaries and time (no file times but the one given,
// no owners, gzip without a name or a time). A registry takes it with
// `crane push DIR REF` or `skopeo copy oci:DIR docker://REF`; the sandbox
// loads it with kpf-sandbox image load.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Media types of the OCI image spec.
const (
	MediaIndex    = "application/vnd.oci.image.index.v1+json"
	MediaManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaConfig   = "application/vnd.oci.image.config.v1+json"
	MediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Entrypoint is where the binary is in the image.
const Entrypoint = "/kpf"

// User is who the image runs as: not root.
const User = "65532:65532"

// Platform is one binary of the image.
type Platform struct {
	OS, Arch string
	Binary   string // its path here
}

// Descriptor points to a blob.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *PlatformSpec     `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// PlatformSpec is a descriptor's platform.
type PlatformSpec struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

type config struct {
	Created      string `json:"created"`
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string          `json:"Entrypoint"`
		User       string            `json:"User"`
		Labels     map[string]string `json:"Labels,omitempty"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// Write makes the image layout in dir (which must not exist or be empty)
// for the platforms, tagged ref (index.json's ref.name), its files dated
// created. It returns the digest of the image index: what a registry
// will call the image.
func Write(dir, ref string, created time.Time, labels map[string]string, platforms []Platform) (string, error) {
	if len(platforms) == 0 {
		return "", errors.New("no platforms")
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return "", err
	}
	created = created.UTC().Truncate(time.Second)
	var manifests []Descriptor
	for _, p := range platforms {
		bin, err := os.ReadFile(p.Binary)
		if err != nil {
			return "", err
		}
		layer, diffID, err := layerOf(bin, created)
		if err != nil {
			return "", err
		}
		ld, err := putBlob(dir, MediaLayer, layer)
		if err != nil {
			return "", err
		}
		var c config
		c.Created = created.Format(time.RFC3339)
		c.Architecture, c.OS = p.Arch, p.OS
		c.Config.Entrypoint = []string{Entrypoint}
		c.Config.User = User
		c.Config.Labels = labels
		c.RootFS.Type = "layers"
		c.RootFS.DiffIDs = []string{diffID}
		cd, err := putJSON(dir, MediaConfig, c)
		if err != nil {
			return "", err
		}
		md, err := putJSON(dir, MediaManifest, manifest{SchemaVersion: 2, MediaType: MediaManifest, Config: cd, Layers: []Descriptor{ld}})
		if err != nil {
			return "", err
		}
		md.Platform = &PlatformSpec{Architecture: p.Arch, OS: p.OS}
		manifests = append(manifests, md)
	}
	id, err := putJSON(dir, MediaIndex, index{SchemaVersion: 2, MediaType: MediaIndex, Manifests: manifests})
	if err != nil {
		return "", err
	}
	id.Annotations = map[string]string{"org.opencontainers.image.ref.name": ref}
	top, err := json.MarshalIndent(index{SchemaVersion: 2, MediaType: MediaIndex, Manifests: []Descriptor{id}}, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), append(top, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`+"\n"), 0o644); err != nil {
		return "", err
	}
	return id.Digest, nil
}

// layerOf is a gzipped tar of bin as /kpf, and the digest of the tar.
func layerOf(bin []byte, created time.Time) ([]byte, string, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	hdr := &tar.Header{Name: strings.TrimPrefix(Entrypoint, "/"), Mode: 0o755, Size: int64(len(bin)), ModTime: created, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, "", err
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	diff := sha256.Sum256(raw.Bytes())
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), "sha256:" + hex.EncodeToString(diff[:]), nil
}

func putJSON(dir, media string, v any) (Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Descriptor{}, err
	}
	return putBlob(dir, media, b)
}

func putBlob(dir, media string, b []byte) (Descriptor, error) {
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644); err != nil {
		return Descriptor{}, err
	}
	return Descriptor{MediaType: media, Digest: "sha256:" + h, Size: int64(len(b))}, nil
}

// Entry is one platform's image read back from a layout.
type Entry struct {
	Ref        string
	OS, Arch   string
	Entrypoint []string
	User       string
	Binary     []byte // the file at the entrypoint
}

// Read reads the image of a layout for os/arch, checking every digest
// and size on the way.
func Read(dir, os_, arch string) (*Entry, error) {
	top, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("%s: not an OCI image layout: %w", dir, err)
	}
	var outer index
	if err := json.Unmarshal(top, &outer); err != nil || len(outer.Manifests) != 1 {
		return nil, fmt.Errorf("%s/index.json: want one image index (%v)", dir, err)
	}
	e := &Entry{Ref: outer.Manifests[0].Annotations["org.opencontainers.image.ref.name"], OS: os_, Arch: arch}
	var idx index
	if err := readJSON(dir, outer.Manifests[0], &idx); err != nil {
		return nil, err
	}
	var found *Descriptor
	var have []string
	for i, m := range idx.Manifests {
		if m.Platform == nil {
			continue
		}
		have = append(have, m.Platform.OS+"/"+m.Platform.Architecture)
		if m.Platform.OS == os_ && m.Platform.Architecture == arch {
			found = &idx.Manifests[i]
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%s: no image for %s/%s (it has %s)", dir, os_, arch, strings.Join(have, ", "))
	}
	var m manifest
	if err := readJSON(dir, *found, &m); err != nil {
		return nil, err
	}
	var c config
	if err := readJSON(dir, m.Config, &c); err != nil {
		return nil, err
	}
	e.Entrypoint, e.User = c.Config.Entrypoint, c.Config.User
	if len(e.Entrypoint) == 0 || len(m.Layers) != 1 {
		return nil, fmt.Errorf("%s: want one layer and an entrypoint", dir)
	}
	layer, err := readBlob(dir, m.Layers[0])
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	want := strings.TrimPrefix(e.Entrypoint[0], "/")
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%s: the layer has no %s", dir, e.Entrypoint[0])
		}
		if err != nil {
			return nil, err
		}
		if h.Name == want {
			if e.Binary, err = io.ReadAll(io.LimitReader(tr, 1<<30)); err != nil {
				return nil, err
			}
			return e, nil
		}
	}
}

func readJSON(dir string, d Descriptor, v any) error {
	b, err := readBlob(dir, d)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func readBlob(dir string, d Descriptor) ([]byte, error) {
	h, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok || len(h) != 64 || strings.ContainsAny(h, "/\\.") {
		return nil, fmt.Errorf("digest %q: want sha256:<64 hex>", d.Digest)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", h))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != h || int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s: its content does not match its digest or size", d.Digest)
	}
	return b, nil
}
