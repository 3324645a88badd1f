#!/usr/bin/env bash
# Measures the mine shim against containerd's runc shim (containerd-shim-runc-v2
# of the same containerd release), interleaved run by run (`make bench`):
# `start` alone as containerd >= 2.3 runs it, lifecycle latency of `ctr run
# --rm` and the raw `runc run` floor, idle RSS/PSS per shim for 1, 10 and 50
# containers, RSS/PSS under containerd's 1 Hz Stats polling (10 and 50
# containers), memory after 1000 exec probes (-probes 1000,10000 for more:
# about 20 minutes longer), a group shim of 1, 10 and 50 containers, 50
# parallel execs, 50 concurrent starts, OOM and exec exit event latency,
# and a perf trace of the lifecycle. Prints the ratio table (mine/runc-v2)
# and the goal table (met/missed) at the end and writes
#
#   $BENCH_OUT/bench.json     every sample, versions, host, load
#   $BENCH_OUT/bench-rss.svg  idle RSS and PSS against container count
#
# Setup: hack/install-deps.sh (runc, busybox, containerd, ctr), then both
# shims are built alike: mine with the flags of `make build`, and
# containerd-shim-runc-v2 of the same containerd release the way containerd's
# own Makefile builds its shims (CGO_ENABLED=0, -s -w; cached). Measuring
# takes about 20 minutes on two busy cores (-quick: about a minute; -only
# runs chosen steps). Before it, the runner waits (3 minutes
# at most) for the 1-minute load average to drop to BENCH_LOAD_MAX, since the
# figures mean little on a busy machine.
#
# Needs root. Arguments are passed to the runner (go run ./test/bench/minebench
# -h lists them; -quick checks the harness in a few seconds). Environment:
#   MINE_CACHE          cache of built binaries (default ~/.cache/mine)
#   CONTAINERD_VERSION  containerd release (default v2.4.2, as install-deps)
#   BENCH_OUT           output directory (default docs)
#   BENCH_LOAD_MAX      load average to wait for (default 1.0)
#   BENCH_RUNC_SHIM     a containerd-shim-runc-v2 to compare with instead (for
#                       example "$MINE_CACHE/bin/containerd-shim-runc-v2", the
#                       cgo build of install-deps)
set -euo pipefail

cd "$(dirname "$0")/.."

export MINE_CACHE=${MINE_CACHE:-$HOME/.cache/mine}
export CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
out=${BENCH_OUT:-docs}
load_max=${BENCH_LOAD_MAX:-1.0}

log() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root: it runs containerd and runc"; exit 1; }

bin=$(hack/install-deps.sh)

work=$(mktemp -d)
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# The flags of `make build`.
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
log "building containerd-shim-mine-v2 $version"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=$version" \
	-o "$work/containerd-shim-mine-v2" ./cmd/containerd-shim-mine-v2
go build -o "$work/minebench" ./test/bench/minebench

runc_shim=${BENCH_RUNC_SHIM:-}
if [ -z "$runc_shim" ]; then
	shim_dir=$MINE_CACHE/bench-bin
	runc_shim=$shim_dir/containerd-shim-runc-v2
	stamp=$shim_dir/.containerd-version
	if [ ! -x "$runc_shim" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$CONTAINERD_VERSION" ]; then
		log "building containerd-shim-runc-v2 $CONTAINERD_VERSION as containerd's Makefile does (static, -s -w)"
		mkdir -p "$shim_dir"
		# Outside this module, so its go.mod does not decide the build.
		(cd / && GOFLAGS='' CGO_ENABLED=0 GOBIN=$shim_dir go install -trimpath -ldflags '-s -w' \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")
		echo "$CONTAINERD_VERSION" >"$stamp"
	fi
fi

if ! command -v perf >/dev/null 2>&1; then
	log "no perf (Debian package linux-perf): the lifecycle trace is skipped"
fi

mkdir -p "$out"
"$work/minebench" \
	-shim "$work/containerd-shim-mine-v2" \
	-runc-shim "$runc_shim" \
	-containerd-bin "$bin" \
	-load-max "$load_max" \
	-json "$out/bench.json" \
	-svg "$out/bench-rss.svg" \
	"$@"
