# mine: containerd shim v2 runtime.  `make demo` runs a container through it;
# `make test` runs every test (as root: real runc, real containerd).

GO        ?= go
PREFIX    ?= /usr/local
BINDIR    ?= bin
MINE_CACHE ?= $(HOME)/.cache/mine
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.Version=$(VERSION)

# Where hack/install-deps.sh puts containerd's binaries; the e2e tests read it.
export MINE_CACHE
export MINE_CONTAINERD_BIN ?= $(MINE_CACHE)/bin
# The older releases of the compatibility tests (test/compat).
export MINE_CONTAINERD22_BIN ?= $(MINE_CACHE)/containerd-v2.2.9/bin
export MINE_CONTAINERD17_BIN ?= $(MINE_CACHE)/containerd-v1.7.35/bin
export MINE_CONTAINERD16_BIN ?= $(MINE_CACHE)/containerd-v1.6.20/bin
# The kubelet of the kubelet tests (test/kubelet), from hack/install-kubelet.sh.
KUBERNETES_VERSION ?= v1.35.4
export KUBERNETES_VERSION
export MINE_KUBELET_BIN ?= $(MINE_CACHE)/kubelet-$(KUBERNETES_VERSION)/bin

COMMANDS := containerd-shim-mine-v2 minimgr

.PHONY: all build install deps demo demo-containerd demo-minimgr test test-unit test-unit-stress test-e2e test-stress test-fuzz test-cgroupv2 test-compat test-kubelet lint bench bench-pkg clean

all: build

build:
	@mkdir -p $(BINDIR)
	@for c in $(COMMANDS); do \
		if [ -d cmd/$$c ]; then \
			CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINDIR)/$$c ./cmd/$$c || exit 1; \
		fi; \
	done

install: build
	@for c in $(COMMANDS); do \
		if [ -f $(BINDIR)/$$c ]; then install -m 0755 $(BINDIR)/$$c $(PREFIX)/bin/$$c; fi; \
	done

# Debian packages (runc, busybox-static), containerd's binaries and the
# kubelet, installed once and cached in $(MINE_CACHE). The kubelet (the
# longest build) and containerd build side by side.
deps:
	@nice -n 10 hack/install-kubelet.sh >/dev/null & k=$$!; \
	hack/install-deps.sh >/dev/null; d=$$?; \
	wait $$k || exit 1; exit $$d

# The main job: a busybox container through containerd and the shim, then
# the same bundle through minimgr, without containerd.
demo: demo-containerd demo-minimgr

# The demo needs only containerd v2.4.2, not the older releases of test/compat.
demo-containerd:
	@MINE_COMPAT_DEPS=0 hack/demo.sh

DEMO_DIR ?= /tmp/mine-demo-bundle
demo-minimgr: build
	@MINE_COMPAT_DEPS=0 hack/install-deps.sh >/dev/null
	@rm -rf $(DEMO_DIR)
	@$(BINDIR)/minimgr bundle init $(DEMO_DIR)
	@echo "demo: minimgr run --rm $(DEMO_DIR) demo-minimgr sh -c 'echo hello from minimgr; uname -a'"
	@$(BINDIR)/minimgr --runtime-binary $(BINDIR)/containerd-shim-mine-v2 run --rm $(DEMO_DIR) demo-minimgr sh -c 'echo hello from minimgr; uname -a'
	@rm -rf $(DEMO_DIR)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# The end-to-end tests (test/...: e2e, compat, kubelet, each with its own
# containerd) run beside the unit tests (race detector) and then the stress
# test: they share no state. The cgroup v2 VMs (CPU-bound software
# emulation) and the fuzzers (whose workers time out on a starved machine)
# come after, alone.
test: deps lint
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-e2e test-unit-stress
	@$(MAKE) --no-print-directory test-fuzz
	@$(MAKE) --no-print-directory test-cgroupv2

test-unit-stress:
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-stress

test-unit:
	$(GO) test -race -count=1 -timeout 15m ./cmd/... ./pkg/... ./internal/...

test-e2e:
	$(GO) test -count=1 -timeout 30m ./test/...

# 500 mixed exec cycles (unread stdin, background children, resizes,
# kills) against a shim built with the race detector; a race report fails
# the test.
test-stress:
	@d=$$(mktemp -d /tmp/mine-stress.XXXXXX) && \
	CGO_ENABLED=1 $(GO) build -race -o $$d/containerd-shim-mine-v2 ./cmd/containerd-shim-mine-v2 && \
	GORACE="log_path=$$d/race halt_on_error=0" MINE_SHIM=$$d/containerd-shim-mine-v2 MINE_E2E_STRESS_CYCLES=500 \
		$(GO) test -count=1 -timeout 20m -run '^TestExecStressMixed$$' -v ./test/e2e/; \
	rc=$$?; rm -rf $$d; exit $$rc

# The lifecycle and a CRI pod against containerd v2.4.2, v2.2.9, v1.7.35 and
# Debian's 1.6.20 (also part of test-e2e).
test-compat: deps
	$(GO) test -count=1 -timeout 10m ./test/compat/

# A standalone kubelet (v1.35) with static pods through containerd v2.4's
# CRI and the shim (also part of test-e2e).
test-kubelet: deps
	$(GO) test -count=1 -timeout 15m ./test/kubelet/

# A short run of each fuzz target, counted in inputs (a duration ends in a
# context deadline that the fuzzer can report as a failure); the seed corpus
# always runs in test-unit.
FUZZTIME ?= 30000x
test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseStart$$' -fuzztime $(FUZZTIME) ./cmd/containerd-shim-mine-v2
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/task
	$(GO) test -run '^$$' -fuzz '^FuzzHandlers$$' -fuzztime $(FUZZTIME) ./pkg/task

# cgroup v2 tests (pkg/oom, a shim-level OOM test with runc and crun, and
# containerd v2.4 with the shim and CRI) in a throwaway QEMU VM with a
# cgroup-v2-only Debian kernel (software emulation), then a CRI pod with
# SystemdCgroup in a second VM whose PID 1 is systemd.
test-cgroupv2:
	GO=$(GO) hack/cgv2/test.sh

# Every figure beside containerd's own runc shim of the same containerd, in
# the same run, interleaved; writes docs/bench.json and docs/bench-rss.svg
# (docs/BENCHMARKS.md explains them).
bench:
	@hack/bench.sh

# The package benchmarks (pkg/oom: 500 watched cgroups).
bench-pkg:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pkg/...

clean:
	rm -rf $(BINDIR)
