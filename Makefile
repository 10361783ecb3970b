# kpf: see README.md. `make help` lists the targets.
SHELL := /bin/bash
BIN   := $(CURDIR)/bin
GO    ?= go
# Modules of this repository (the upstream build modules are built by
# kpf-sandbox, not tested here).
MODULES := . sandbox

export KPF_SANDBOX_BIN := $(BIN)/kpf-sandbox

# staticcheck, pinned, run through the Go module proxy (cached after the
# first run).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Where kpf runs besides linux/amd64: each one builds and vets in make vet.
PLATFORMS := darwin/amd64 darwin/arm64 windows/amd64 windows/arm64 linux/arm64
# The data path's packages, tested again with the portable build (what
# macOS and Windows run: no raw system calls, no read pacing).
PORTABLE_PKGS := ./internal/sysio/... ./internal/spdy/... ./internal/fastconn/... ./internal/tunnel/... ./internal/tunnelpool/... ./internal/wsconn/... ./internal/follow/... ./internal/forward/... ./internal/manager/...
# e2e tests that run again against a kpf built with the portable data path.
PORTABLE_E2E := TestTargetsMatchKubectl|TestPortSpecsMatchKubectl|TestTransports|TestOneBadConnection|TestHalfClose|TestUpstreamScenarios|TestConcurrentConnections|TestSlowReaderStallsNobody
# e2e tests that run again on a legacy node (kpf-sandbox --node-topology
# legacy: no declared feature, so the API server translates WebSockets; the
# kubelet handler serves the streams), as clusters before 1.36 are.
LEGACY_E2E := TestTargetsMatchKubectl|TestPortSpecsMatchKubectl|TestTransports|TestUpstreamScenarios|TestHalfClose|TestWebSocketsReachTheNodeAsTheyAre

.PHONY: help build plugin release-snapshot sandbox sandbox-down demo test unit fuzz e2e e2e-legacy faults verify fmt vet bench soak clean

help:
	@echo "make demo      start the sandbox (if no cluster is configured) and run the demo"
	@echo "make test      unit tests, fuzzing (make fuzz), then end-to-end tests on the sandbox (what CI runs)"
	@echo "make sandbox   build and start the local sandbox cluster"
	@echo "make sandbox-down  stop it"
	@echo "make bench     kpf against kubectl on the sandbox (docs/benchmarks.md)"
	@echo "make faults    the fault matrix on the sandbox; its table goes into docs/reliability.md"
	@echo "make soak      the daemon under churn and faults for SOAK (2h; docs/soak.md)"
	@echo "make release-snapshot  the release, built locally and not published (dist/)"
	@echo "make unit | fuzz | e2e | verify | build | plugin"

build:
	@mkdir -p $(BIN)
	cd sandbox && $(GO) build -o $(BIN)/kpf-sandbox ./cmd/kpf-sandbox
	@if [ -d cmd/kpf ]; then $(GO) build -o $(BIN)/kpf ./cmd/kpf; fi

# kpf as a kubectl plugin: bin/kubectl-pf (the same binary) and its
# completion helper; put bin/ on the PATH and run kubectl pf.
plugin: build
	ln -sf kpf $(BIN)/kubectl-pf
	cp scripts/kubectl_complete-pf $(BIN)/kubectl_complete-pf

sandbox: build
	$(BIN)/kpf-sandbox up

sandbox-down: build
	$(BIN)/kpf-sandbox down

demo: build
	./scripts/demo.sh

# Unit tests run under the race detector; the data path's run again with
# the portable build.
unit:
	@for m in $(MODULES); do (cd $$m && KPF_E2E=skip $(GO) test -race -count=1 ./...) || exit 1; done
	KPF_E2E=skip $(GO) test -race -count=1 -tags kpf_portable $(PORTABLE_PKGS)

# Every fuzzer (func FuzzX in a _test.go) of each module runs for
# FUZZTIME beyond its seeds (which unit runs every time), one at a time: go
# test takes one -fuzz pattern per package per run. FUZZFLAGS adds flags
# (-parallel=1 on a busy machine). A failing input is written under the
# package's testdata/fuzz/ and fails the run; commit it as a seed with the
# fix.
FUZZTIME ?= 10s
FUZZFLAGS ?=
fuzz:
	@for m in $(MODULES); do ( cd $$m && for d in $$($(GO) list -f '{{.Dir}}' ./...); do \
		for f in $$(cat $$d/*_test.go 2>/dev/null | sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p'); do \
			echo "fuzz $$m/$${d#$$PWD/} $$f for $(FUZZTIME)"; \
			KPF_E2E=skip $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) $$d || exit 1; \
		done; done ) || exit 1; done

# The e2e tests start the sandbox themselves (or reuse a running one). Test
# packages run one at a time: some exercise sandbox faults that would
# disturb others. kpf's own e2e tests run against a kpf built with the race
# detector (any race it reports fails the run; it waits 100 ms at exit for
# late reports, not its default 1 s), then the forward tests
# again against the portable build.
e2e: build
	$(BIN)/kpf-sandbox build >/dev/null
	cd sandbox && $(GO) test -count=1 -p 1 -timeout 20m ./e2e/...
	$(GO) build -race -o $(BIN)/kpf-race ./cmd/kpf
	$(GO) build -tags kpf_portable -o $(BIN)/kpf-portable ./cmd/kpf
	@rm -rf $(BIN)/races && mkdir -p $(BIN)/races
	cd e2e && KPF_BIN=$(BIN)/kpf-race GORACE="log_path=$(BIN)/races/kpf atexit_sleep_ms=100" $(GO) test -count=1 -p 1 -timeout 45m ./...
	@if ls $(BIN)/races/kpf.* >/dev/null 2>&1; then echo "the race detector found races in kpf:"; cat $(BIN)/races/kpf.*; exit 1; fi
	cd e2e && KPF_BIN=$(BIN)/kpf-portable $(GO) test -count=1 -p 1 -timeout 15m -run '$(PORTABLE_E2E)' ./...
	$(MAKE) --no-print-directory e2e-legacy

# The forward parity tests once more on a legacy node (~2 min), then the
# node back on the default topology; a sandbox this started is stopped.
e2e-legacy: build
	@was_up=$$($(BIN)/kpf-sandbox status >/dev/null 2>&1 && echo yes); \
	$(BIN)/kpf-sandbox up --node-topology legacy >/dev/null || exit 1; \
	(cd e2e && KPF_E2E_NODE_TOPOLOGY=legacy KPF_BIN=$(BIN)/kpf $(GO) test -count=1 -p 1 -timeout 10m -run '$(LEGACY_E2E)' ./...); s=$$?; \
	$(BIN)/kpf-sandbox up --node-topology cri >/dev/null || s=1; \
	if [ -z "$$was_up" ]; then $(BIN)/kpf-sandbox down >/dev/null; fi; exit $$s

test: verify-fmt vet unit fuzz e2e

verify: test

verify-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	@for m in $(MODULES) e2e bench; do (cd $$m && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...) || exit 1; done
	@for p in $(PLATFORMS); do echo "vet $$p"; GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) vet ./... || exit 1; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -o /dev/null ./cmd/kpf || exit 1; done
	$(GO) vet -tags kpf_portable ./...
	@mkdir -p $(BIN); CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/kpf-lean ./cmd/kpf; \
		s=$$(stat -c %s $(BIN)/kpf-lean); echo "kpf, built as released: $$((s / 1000000)) MB"; \
		[ $$s -le 50000000 ] || { echo "that is above 50 MB: see Binary in docs/benchmarks.md"; exit 1; }

# The fault matrix (docs/reliability.md): every fault x every way kpf
# carries connections, with the faults' full durations (~10 min on 2
# cores: the blackhole holds 60 s and kpf is stopped for 2 min); its table
# is written into docs/reliability.md between its markers. make e2e runs a
# short subset of it (KPF_FAULTS unset: five cells, ~1.5 min) and the
# blackhole check (~1 min).
faults: build
	$(BIN)/kpf-sandbox build >/dev/null
	set -o pipefail; cd e2e && KPF_BIN=$(BIN)/kpf KPF_FAULTS=full KPF_FAULTS_REPORT=$(CURDIR)/docs/reliability.md \
		$(GO) test -count=1 -p 1 -timeout 60m -run 'TestFaultMatrix|TestBlackholeUnderDaemonForward' -v ./... | grep -v '^=== [A-Z]'

# The benchmark: kpf against kubectl on the sandbox (docs/benchmarks.md).
# BENCH_ARGS=-rounds=1 -size=268435456 for a quick look.
bench: build
	./scripts/deps.sh bench
	cd bench && $(GO) run . -kpf $(BIN)/kpf -json $(CURDIR)/bench-results.jsonl $(BENCH_ARGS)

# The soak (not in CI): 100 forwards in the daemon for SOAK, under
# connection churn, rollouts and API server restarts (docs/soak.md).
SOAK ?= 2h
soak: build
	./scripts/deps.sh soak
	cd bench && $(GO) run ./soak -kpf $(BIN)/kpf -duration $(SOAK) -out $(CURDIR)/docs $(SOAK_ARGS)

# The release, built here and published nowhere (dist/): archives for
# linux, darwin and windows x amd64 and arm64, checksums, a CycloneDX SBOM
# of each binary, the krew manifest and the Homebrew cask, and the UDP
# relay's image (dist/relay-image, an OCI image layout for linux/amd64 and
# arm64: push it with crane push or skopeo copy); then
# scripts/check-release.sh checks them. The tools are pinned and built
# through the module proxy into bin/release-tools (~3 min the first time);
# the release itself takes ~10 min on 2 cores.
GORELEASER := github.com/goreleaser/goreleaser/v2@v2.15.1
CYCLONEDX := github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0
release-snapshot:
	@mkdir -p $(BIN)/release-tools
	GOBIN=$(BIN)/release-tools GOFLAGS= $(GO) install $(GORELEASER)
	GOBIN=$(BIN)/release-tools GOFLAGS= $(GO) install $(CYCLONEDX)
	PATH=$(BIN)/release-tools:$$PATH KPF_COMMIT=$$(git rev-parse HEAD) KPF_SHORT_COMMIT=$$(git rev-parse --short HEAD) \
		$(BIN)/release-tools/goreleaser release --snapshot --clean
	$(GO) run ./cmd/kpf-relay-image -out dist/relay-image -ref $$(dist/kpf_linux_amd64_v1/kpf relay image) \
		-created $$(git log -1 --format=%ct) linux/amd64=$$(ls dist/kpf_linux_amd64*/kpf) linux/arm64=$$(ls dist/kpf_linux_arm64*/kpf)
	./scripts/check-release.sh dist

clean:
	rm -rf $(BIN) dist
