#!/usr/bin/env bash
# Runs one container through the mine shim on a fresh machine (`make demo`):
# installs what is missing (hack/install-deps.sh), builds the shim, starts a
# private containerd in a temporary directory, imports a busybox image built
# locally (hack/mkimage, no registry), runs
#
#   ctr -n demo run --rm --runtime io.containerd.mine.v2 docker.io/library/busybox:mine ID \
#       sh -c 'echo hello from mine; uname -a; exit 0'
#
# shows its output, and on exit stops containerd and removes the directory.
# Exits with the container's exit code.
#
# Needs root. Environment:
#   MINE_CACHE         cache of built binaries (default ~/.cache/mine)
#   MINE_DEMO_RUNTIME  runtime to run the container with (default
#                      io.containerd.mine.v2; the shim is built only for it)
set -euo pipefail

cd "$(dirname "$0")/.."

MINE_CACHE=${MINE_CACHE:-$HOME/.cache/mine}
RUNTIME=${MINE_DEMO_RUNTIME:-io.containerd.mine.v2}
IMAGE=docker.io/library/busybox:mine
NS=demo

log() { echo "demo: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root: it runs containerd and runc"; exit 1; }

bin=$(hack/install-deps.sh)

if [ "$RUNTIME" = io.containerd.mine.v2 ]; then
	log "building containerd-shim-mine-v2 into $bin"
	go build -o "$bin/containerd-shim-mine-v2" ./cmd/containerd-shim-mine-v2
fi

# Short path: the containerd sockets live here (unix socket paths < 108 bytes).
work=$(mktemp -d /run/mine-demo.XXXXXX)
sock=$work/c.sock
containerd_pid=

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "$rc" != 0 ] && [ -f "$work/containerd.log" ]; then
		log "exit code $rc; last lines of the containerd log:"
		tail -n 30 "$work/containerd.log" >&2
	fi
	if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
		kill -TERM "$containerd_pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$containerd_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$containerd_pid" 2>/dev/null; then
			log "containerd ignored SIGTERM for 10s, killing it"
			kill -KILL "$containerd_pid" 2>/dev/null || true
		fi
		wait "$containerd_pid" 2>/dev/null || true
	fi
	# Unmount whatever is left below $work (deepest first) before removing
	# it, so rm never deletes through a mount point.
	local mp left=
	while read -r mp; do
		umount -l "$mp" 2>/dev/null || left=yes
	done < <(awk -v dir="$work" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	if [ -z "$left" ]; then
		rm -rf "$work"
	else
		log "mounts left below $work, not removing it"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# overlayfs when an overlay mount works here, else native.
snapshotter=native
probe=$work/overlay-probe
mkdir -p "$probe"/{lower,upper,work,merged}
if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
	umount "$probe/merged"
	snapshotter=overlayfs
fi
rm -rf "$probe"

mkdir -p "$work/root" "$work/state" "$work/tmp"
cat >"$work/config.toml" <<EOF
version = 3
root = "$work/root"
state = "$work/state"
temp = "$work/tmp"

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$work/opt"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "$snapshotter"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.mine]
  runtime_type = "io.containerd.mine.v2"
EOF

log "starting containerd in $work (snapshotter $snapshotter)"
(
	# Only stdio for containerd: descriptors this shell inherited (a make
	# jobserver, a CI runner's pipes) would leak on into every shim.
	for fd in "/proc/$BASHPID/fd/"*; do
		fd=${fd##*/}
		if [ "$fd" -gt 2 ]; then
			eval "exec $fd>&-" 2>/dev/null || true
		fi
	done
	PATH="$bin:$PATH" exec "$bin/containerd" --config "$work/config.toml"
) </dev/null >"$work/containerd.log" 2>&1 &
containerd_pid=$!

ctr() { CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 "$bin/ctr" --address "$sock" "$@"; }

for _ in $(seq 200); do
	kill -0 "$containerd_pid" 2>/dev/null || { log "containerd exited"; exit 1; }
	ctr version >/dev/null 2>&1 && break
	sleep 0.1
done
ctr version >/dev/null 2>&1 || { log "containerd did not answer on $sock within 20s"; exit 1; }

log "building and importing $IMAGE"
go run ./hack/mkimage -o "$work/busybox.tar" >/dev/null
ctr -n "$NS" images import --snapshotter "$snapshotter" "$work/busybox.tar" >/dev/null

id=demo-$$
run=(-n "$NS" run --rm --runtime "$RUNTIME")
[ "$snapshotter" = overlayfs ] || run+=(--snapshotter "$snapshotter")
echo "+ ctr -n $NS run --rm --runtime $RUNTIME $IMAGE $id sh -c 'echo hello from mine; uname -a; exit 0'"
rc=0
ctr "${run[@]}" "$IMAGE" "$id" sh -c 'echo hello from mine; uname -a; exit 0' || rc=$?
log "container exited with code $rc"
exit "$rc"
