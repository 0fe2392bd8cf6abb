# Keel build, test and demo entry points. Everything builds into build/
# (git-ignored); slow downloads and kernel builds are cached outside the
# checkout under $(KEEL_CACHE).

GO         ?= go
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
KEEL_CACHE ?= /var/cache/keel
export KEEL_CACHE

# The guest agent: static (no libc in a minimal guest), cgo on because
# libcontainer's nsenter is C, stripped.
AGENT_TAGS    := netgo,osusergo,seccomp
# AGENT_LINKFLAGS: all but the version, shared with tests/bench/steps.sh.
AGENT_LINKFLAGS := -s -w -linkmode external -extldflags -static
AGENT_LDFLAGS := $(AGENT_LINKFLAGS) -X github.com/keelvm/keel/agent/version.Version=$(VERSION)
HOST_LDFLAGS  := -s -w -X github.com/keelvm/keel/agent/version.Version=$(VERSION)

TEST_TIMEOUT ?= 18m

.PHONY: demo host-demo all agent host proto proto-check lint test test-slow bench bench-vm bench-steps vm-demo vm-shell kernel clean

all: agent host

agent:
	CGO_ENABLED=1 $(GO) build -trimpath -tags $(AGENT_TAGS) -ldflags '$(AGENT_LDFLAGS)' -o build/keel-agent ./cmd/keel-agent

# Host tools: every cmd/ but the agent (keelctl, keel-rootfs, keel-kernel, ...).
HOST_CMDS := $(addprefix ./,$(filter-out cmd/keel-agent/,$(dir $(wildcard cmd/*/main.go))))
host:
	$(GO) build -trimpath -ldflags '$(HOST_LDFLAGS)' -o build/ $(HOST_CMDS)

proto:
	./protocol/generate.sh

# CI: the committed generated code must be what `make proto` produces.
proto-check: proto
	git diff --exit-code -- protocol/
	@test -z "$$(git status --porcelain -- protocol/)" || { git status --porcelain -- protocol/; echo "untracked generated files"; exit 1; }

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# The default test run: unit, host-mode and VM tests (root needed). It
# builds (or reuses, cached under $(KEEL_CACHE)/kernel/<digest>) Keel's
# guest kernel first, so the own-kernel tests run as in CI, and ends with
# the list of skipped tests and why (tests/testsummary).
TEST_ENV = KEEL_AGENT_BIN=$(CURDIR)/build/keel-agent KEELCTL_BIN=$(CURDIR)/build/keelctl GO=$(GO)

build/testsummary: tests/testsummary/main.go
	$(GO) build -o $@ ./tests/testsummary

test: all kernel build/testsummary
	$(TEST_ENV) ./build/testsummary -timeout $(TEST_TIMEOUT) -count=1 ./...

# The slow tier too (KEEL_SLOW_TESTS=1: erofs DAX, Debian container, ...).
test-slow: all kernel build/testsummary
	KEEL_SLOW_TESTS=1 $(TEST_ENV) ./build/testsummary -timeout 60m -count=1 ./...

bench: all
	./tests/bench/run.sh

# The VM tier of make bench only (KEEL_BENCH_VM=1 make bench runs both):
# Keel as PID 1 in guests under QEMU TCG, ratios against baselines timed
# in the same guest (tests/bench/guestbench, tests/bench/vmbench).
bench-vm: all kernel
	KEEL_BENCH_VM=1 BENCH_HOST=0 ./tests/bench/run.sh

# Before/after of each optimisation step of issue 16 (tests/bench/steps.txt):
# keel-agent built at each step and its parent (cached in
# $(KEEL_CACHE)/agent-steps), compared with the paired wire benchmarks.
bench-steps:
	GO=$(GO) AGENT_TAGS='$(AGENT_TAGS)' AGENT_LINKFLAGS='$(AGENT_LINKFLAGS)' ./tests/bench/steps.sh

# The main job: boot a guest under QEMU, reach the agent over AF_VSOCK, run
# a container, power off.
vm-demo: all
	KEEL_AGENT_BIN=$(CURDIR)/build/keel-agent KEELCTL_BIN=$(CURDIR)/build/keelctl $(GO) run ./tests/demo

demo: vm-demo

# The same DAX guest, and a shell in a container over AF_VSOCK (keelctl run
# --tty); ^D ends it and powers the guest off.
vm-shell: all
	KEEL_AGENT_BIN=$(CURDIR)/build/keel-agent KEELCTL_BIN=$(CURDIR)/build/keelctl $(GO) run ./tests/demo -shell

# The agent as a plain process on a Unix socket, queried with keelctl.
host-demo: all
	./scripts/host-demo.sh

kernel:
	$(GO) run ./cmd/keel-kernel build

clean:
	rm -rf build
