// Command kpf-relay-image builds the relay's image from kpf binaries:
// an OCI image layout (see internal/ociimage), reproducibly. make
// release-snapshot runs it on the release's linux binaries:
//
//	kpf-relay-image -out dist/relay-image -ref ghcr.io/kpf-dev/kpf:1.2.3 \
//	    -created 2026-12-01T00:00:00Z linux/amd64=dist/.../kpf linux/arm64=dist/.../kpf
//
// and prints the image's digest. Push it with crane push or skopeo copy.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kpf-dev/kpf/internal/ociimage"
)

func main() {
	out := flag.String("out", "", "the image layout's folder (made; must not hold another image)")
	ref := flag.String("ref", "", "the image's reference, like ghcr.io/kpf-dev/kpf:1.2.3")
	created := flag.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "the image's date: RFC 3339 or seconds since 1970 (default $SOURCE_DATE_EPOCH); the same binaries and date make the same image")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kpf-relay-image -out DIR -ref REF -created TIME OS/ARCH=BINARY...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*out, *ref, *created, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "kpf-relay-image:", err)
		os.Exit(1)
	}
}

func run(out, ref, created string, args []string) error {
	if out == "" || ref == "" || len(args) == 0 {
		return fmt.Errorf("-out, -ref and at least one OS/ARCH=BINARY are needed")
	}
	t, err := parseTime(created)
	if err != nil {
		return err
	}
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return fmt.Errorf("-out %s: not empty (remove it first)", out)
	}
	var ps []ociimage.Platform
	for _, a := range args {
		plat, bin, ok := strings.Cut(a, "=")
		goos, arch, ok2 := strings.Cut(plat, "/")
		if !ok || !ok2 || bin == "" {
			return fmt.Errorf("%q: want OS/ARCH=BINARY, like linux/amd64=dist/kpf_linux_amd64_v1/kpf", a)
		}
		ps = append(ps, ociimage.Platform{OS: goos, Arch: arch, Binary: bin})
	}
	digest, err := ociimage.Write(out, ref, t, map[string]string{"org.opencontainers.image.source": "https://github.com/kpf-dev/kpf"}, ps)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s\n", ref, digest)
	return nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("-created (or SOURCE_DATE_EPOCH) is needed: the image's date, so that it is the same each time")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("-created %q: want RFC 3339 or seconds since 1970", s)
	}
	return t, nil
}
