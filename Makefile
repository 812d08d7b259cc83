# poolplane build. Every tool is pinned in tools/go.mod and run with `go tool`,
# so a fresh machine needs nothing but Go and the module proxy.

GO       ?= go
TOOL     := $(GO) tool -modfile=$(CURDIR)/tools/go.mod
PKGS     := ./...
DATA_DIR ?= ./data
FUZZTIME ?= 10s
BENCHOUT ?= bench.txt
# VERSION is what poold --version, poolctl version and poolplane_build_info
# report for binaries that make builds: git describe of the checkout (a tag,
# or the abbreviated commit, -dirty with uncommitted changes). Without git
# (a source archive) nothing is stamped and the binaries fall back to what the
# go command recorded (internal/version). `make build VERSION=v1.2.3` sets it.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
VERSION_PKG := github.com/poolplane/poolplane/internal/version
LDFLAGS  := $(if $(VERSION),-X $(VERSION_PKG).Version=$(VERSION)) $(if $(COMMIT),-X $(VERSION_PKG).Commit=$(COMMIT))
# POOLBENCH is the directory of the poolbench module, the benchmark and soak
# harness: kept apart so that its plotting dependencies stay out of the root
# go.mod and out of poolctl.
POOLBENCH := cmd/poolbench

# The Go modules of the repository (docs/modules.md): the generated API, the
# lease wire layout, the SDK, a module that consumes only the SDK, the SDK's
# OpenTelemetry tracer (its own module, so the SDK requires no
# OpenTelemetry), the root
# (server, CLI), the benchmark harness, the deployment kit (the image
# builder and the tests of the manifests and the systemd unit, whose
# container and Kubernetes requirements stay out of every other go.mod) and
# the alert rules' check (it pins promtool). Leaves first: tidy reads the
# go.mod of each replaced module. Every target that runs the go command runs
# it in each of them, with PKGS as the package pattern; `make test
# MODULES=client` narrows it down.
MODULES  := internal/testkit gen internal/leasewire client client/internal/consumertest client/examples/otel . $(POOLBENCH) deploy deploy/prometheus
GOMODS   := $(foreach m,$(MODULES),$(m)/go.mod $(m)/go.sum)

# The modules find each other through replace directives, never a go.work:
# what make and CI build is what a fresh clone builds.
export GOWORK ?= off

# foreach_module runs $(1) in each module, going on after a failure and
# failing at the end, so that one run reports every module.
define foreach_module
@status=0; for m in $(MODULES); do \
	echo "== $$m"; (cd $$m && $(1)) || status=1; \
done; exit $$status
endef

# IMAGE is the name `make image` gives the container image; its tag is
# VERSION (latest when there is none).
IMAGE    ?= ghcr.io/poolplane/poold

.PHONY: all generate check-generated lint test bench fuzz build image tools run clean

all: check-generated lint test build

## generate: regenerate gen/ from proto/ (buf + protoc-gen-go + protoc-gen-go-grpc), then tidy every module.
generate:
	$(TOOL) buf generate
	@set -e; for m in $(MODULES); do echo "go mod tidy: $$m"; (cd $$m && $(GO) mod tidy); done

## check-generated: fail if gen/ or any module's go.mod or go.sum differ from what generate produces.
check-generated: generate
	git diff --exit-code -- gen $(GOMODS)
	@test -z "$$(git status --porcelain -- gen $(GOMODS))" || { git status --porcelain -- gen $(GOMODS); echo "untracked generated files or go.sum: run make generate and commit"; exit 1; }

## lint: buf lint, buf breaking against main, then go vet and golangci-lint in every module (depguard enforces the import direction).
lint:
	$(TOOL) buf lint
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		$(TOOL) buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with buf.yaml to compare against, skipped"; fi
	$(call foreach_module,$(GO) vet $(PKGS) && $(TOOL) golangci-lint run --allow-serial-runners --config $(CURDIR)/.golangci.yml $(PKGS))

## test: every test of every module, with the race detector. The server
## package takes about 5 minutes on 2 CPUs: a package may take 20, not
## go test's default 10, on a slower or busier machine.
test:
	$(call foreach_module,$(GO) test -race -count=1 -shuffle=on -timeout=20m $(PKGS))

## bench: engine benchmarks, saved for benchstat.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=10 ./poolmgr/... ./store/... | tee $(BENCHOUT)

## fuzz: each Fuzz target of every module for $(FUZZTIME).
fuzz:
	@set -e; for m in $(MODULES); do (cd $$m && \
		for pkg in $$($(GO) list $(PKGS)); do \
			for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
				echo "fuzz $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg; \
			done; \
		done); \
	done

## build: bin/poold, bin/poolctl and bin/poolbench, stamped with VERSION.
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...
	cd $(POOLBENCH) && $(GO) build -trimpath -o ../../bin/ .

## image: the container image, built without a container engine or a registry (deploy/image):
## bin/poolplane-image (an OCI image layout, for skopeo/crane/podman) and bin/poolplane-image.tar (docker load),
## its time the last commit's, so the same checkout gives the same digest.
image:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/static/ ./cmd/poold ./cmd/poolctl
	cd deploy && SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || echo 0)} \
		$(GO) run ./image -bin ../bin/static -version '$(VERSION)' -revision '$(COMMIT)' -ref '$(IMAGE):$(or $(VERSION),latest)' \
		-o ../bin/poolplane-image -tar ../bin/poolplane-image.tar

## tools: bin/grpcurl, pinned in tools/go.mod, for the README's tour.
tools:
	$(GO) build -modfile=tools/go.mod -trimpath -o bin/ github.com/fullstorydev/grpcurl/cmd/grpcurl

## run: build and start poold on 127.0.0.1:7700 with its data under ./data.
run: build
	./bin/poold --data-dir $(DATA_DIR)

clean:
	rm -rf bin $(BENCHOUT)
