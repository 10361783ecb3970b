#!/usr/bin/env bash
# Checks what make release-snapshot built in DIST: an archive per platform
# whose binary reports the version, checksums that match, a krew manifest
# whose sha256s are the archives', and the linux/amd64 binary's size
# against the 50 MB target.
set -euo pipefail
dist=${1:-dist}
version=$(sed -n 's/.*"version":"\([^"]*\)".*/\1/p' "$dist/metadata.json")
fail=0
say() { echo "check-release: $*"; }
(cd "$dist" && sha256sum --quiet -c checksums.txt) && say "checksums.txt matches every artifact" || { say "checksums.txt does not match"; fail=1; }
for p in linux_amd64 linux_arm64 darwin_amd64 darwin_arm64 windows_amd64 windows_arm64; do
  a=$(ls "$dist"/kpf_"${version}"_"$p".* 2>/dev/null | grep -E '\.(tar\.gz|zip)$' || true)
  if [ -z "$a" ]; then say "no archive for $p"; fail=1; continue; fi
  [ -f "$dist/kpf_${version}_${p}.cdx.json" ] || { say "no SBOM for $p"; fail=1; }
  sum=$(sha256sum "$a" | cut -d' ' -f1)
  if ! grep -q "$sum" "$dist/krew/pf.yaml"; then say "the krew manifest lacks the sha256 of $(basename "$a")"; fail=1; fi
done
bin=$(ls "$dist"/kpf_linux_amd64*/kpf)
out=$("$bin" version)
case "$out" in "kpf $version"*) say "linux/amd64 reports: $(echo "$out" | head -2 | tr '\n' ' ')";; *) say "linux/amd64 reports '$out', want version $version"; fail=1;; esac
grep -q "name: pf" "$dist/krew/pf.yaml" && say "krew manifest: $dist/krew/pf.yaml" || { say "no krew manifest"; fail=1; }
ls "$dist"/homebrew/Casks/kpf.rb >/dev/null 2>&1 && say "Homebrew cask: $dist/homebrew/Casks/kpf.rb" || { say "no Homebrew cask"; fail=1; }
# The relay image: both linux platforms, the ref kpf relay image names,
# and the same digest when built again from the same binaries and date.
if [ -f "$dist/relay-image/index.json" ]; then
  ref=$("$bin" relay image)
  grep -q "\"org.opencontainers.image.ref.name\": \"$ref\"" "$dist/relay-image/index.json" && say "relay image: $ref in $dist/relay-image" || { say "the relay image is not tagged $ref"; fail=1; }
  again=$(mktemp -d)
  created=$(git -C "$(dirname "$0")/.." log -1 --format=%ct)
  d1=$(sed -n 's/.*"digest": "\(sha256:[0-9a-f]*\)".*/\1/p' "$dist/relay-image/index.json")
  d2=$(cd "$(dirname "$0")/.." && go run ./cmd/kpf-relay-image -out "$again/img" -ref "$ref" -created "$created" linux/amd64=$(ls "$dist"/kpf_linux_amd64*/kpf) linux/arm64=$(ls "$dist"/kpf_linux_arm64*/kpf) | cut -d' ' -f2)
  rm -rf "$again"
  [ -n "$d1" ] && [ "$d1" = "$d2" ] && say "relay image $d1, the same when built again" || { say "the relay image is not reproducible: $d1 then $d2"; fail=1; }
else
  say "no relay image ($dist/relay-image)"; fail=1
fi
size=$(stat -c %s "$bin")
say "linux/amd64 binary: $((size / 1000000)) MB (at most 50 MB)"
[ "$size" -le 50000000 ] || { say "the linux/amd64 binary is above 50 MB"; fail=1; }
exit $fail
