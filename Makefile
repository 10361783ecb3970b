# kpf: see README.md. `make help` lists the targets.
SHELL := /bin/bash
BIN   := $(CURDIR)/bin
GO    ?= go
# Modules of this repository (the upstream build modules are built by
# kpf-sandbox, not tested here).
MODULES := . sandbox

export KPF_SANDBOX_BIN := $(BIN)/kpf-sandbox

.PHONY: help build sandbox sandbox-down demo test unit e2e verify fmt vet bench clean

help:
	@echo "make demo      start the sandbox (if no cluster is configured) and run the demo"
	@echo "make test      unit tests, then end-to-end tests on the sandbox (what CI runs)"
	@echo "make sandbox   build and start the local sandbox cluster"
	@echo "make sandbox-down  stop it"
	@echo "make bench     kpf against kubectl on the sandbox (docs/benchmarks.md)"
	@echo "make unit | e2e | verify | build"

build:
	@mkdir -p $(BIN)
	cd sandbox && $(GO) build -o $(BIN)/kpf-sandbox ./cmd/kpf-sandbox
	@if [ -d cmd/kpf ]; then $(GO) build -o $(BIN)/kpf ./cmd/kpf; fi

sandbox: build
	$(BIN)/kpf-sandbox up

sandbox-down: build
	$(BIN)/kpf-sandbox down

demo: build
	./scripts/demo.sh

unit:
	@for m in $(MODULES); do (cd $$m && KPF_E2E=skip $(GO) test -count=1 ./...) || exit 1; done

# The e2e tests start the sandbox themselves (or reuse a running one). Test
# packages run one at a time: some exercise sandbox faults that would
# disturb others.
e2e: build
	$(BIN)/kpf-sandbox build >/dev/null
	cd sandbox && $(GO) test -count=1 -p 1 -timeout 20m ./e2e/...
	@if [ -d e2e ]; then cd e2e && $(GO) test -count=1 -p 1 -timeout 30m ./...; fi

test: verify-fmt vet unit e2e

verify: test

verify-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	@for m in $(MODULES) e2e bench; do (cd $$m && $(GO) vet ./...) || exit 1; done

# The benchmark: kpf against kubectl on the sandbox (docs/benchmarks.md).
# BENCH_ARGS=-rounds=1 -size=268435456 for a quick look.
bench: build
	cd bench && $(GO) run . -kpf $(BIN)/kpf -json $(CURDIR)/bench-results.jsonl $(BENCH_ARGS)

clean:
	rm -rf $(BIN)
