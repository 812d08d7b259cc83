# poolplane build. Every tool is pinned in tools/go.mod and run with `go tool`,
# so a fresh machine needs nothing but Go and the module proxy.
#
# Two modules: the main one at the root, and cmd/poolbench (the benchmark and
# soak harness, kept apart so that its plotting dependencies stay out of the
# main go.mod and out of poolctl). Every target below covers both; none needs
# a go.work.

GO       ?= go
TOOL     := $(GO) tool -modfile=tools/go.mod
PKGS     := ./...
DATA_DIR ?= ./data
FUZZTIME ?= 10s
BENCHOUT ?= bench.txt
# POOLBENCH is the directory of the poolbench module; TOOL_IN_POOLBENCH runs
# the pinned tools from there.
POOLBENCH         := cmd/poolbench
TOOL_IN_POOLBENCH := $(GO) tool -modfile=../../tools/go.mod

.PHONY: all generate check-generated lint test bench fuzz build tools run clean

all: check-generated lint test build

## generate: regenerate gen/ from proto/ (buf + protoc-gen-go + protoc-gen-go-grpc), then tidy both modules.
generate:
	$(TOOL) buf generate
	$(GO) mod tidy
	cd $(POOLBENCH) && $(GO) mod tidy

## check-generated: fail if gen/ or either module's go.mod or go.sum differ from what generate produces.
check-generated: generate
	git diff --exit-code -- gen go.mod go.sum $(POOLBENCH)/go.mod $(POOLBENCH)/go.sum
	@test -z "$$(git status --porcelain -- gen)" || { git status --porcelain -- gen; echo "gen/ has untracked files: run make generate and commit"; exit 1; }

## lint: buf lint, buf breaking against main, go vet and golangci-lint (depguard enforces the import direction).
lint:
	$(TOOL) buf lint
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		$(TOOL) buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with buf.yaml to compare against, skipped"; fi
	$(GO) vet $(PKGS)
	$(TOOL) golangci-lint run $(PKGS)
	cd $(POOLBENCH) && $(GO) vet ./...
	cd $(POOLBENCH) && $(TOOL_IN_POOLBENCH) golangci-lint run --config ../../.golangci.yml ./...

## test: every test of both modules, with the race detector.
test:
	$(GO) test -race -count=1 -shuffle=on $(PKGS)
	cd $(POOLBENCH) && $(GO) test -race -count=1 -shuffle=on ./...

## bench: engine benchmarks, saved for benchstat.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=10 ./poolmgr/... ./store/... | tee $(BENCHOUT)

## fuzz: each Fuzz target for $(FUZZTIME).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg; \
		done; \
	done

## build: bin/poold, bin/poolctl and bin/poolbench.
build:
	$(GO) build -trimpath -o bin/ ./cmd/...
	cd $(POOLBENCH) && $(GO) build -trimpath -o ../../bin/ .

## tools: bin/grpcurl, pinned in tools/go.mod, for the README's tour.
tools:
	$(GO) build -modfile=tools/go.mod -trimpath -o bin/ github.com/fullstorydev/grpcurl/cmd/grpcurl

## run: build and start poold on 127.0.0.1:7700 with its data under ./data.
run: build
	./bin/poold --data-dir $(DATA_DIR)

clean:
	rm -rf bin $(BENCHOUT)
