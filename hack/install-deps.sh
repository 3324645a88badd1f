#!/usr/bin/env bash
# Installs what the demo and the e2e tests need, when it is missing:
#   - runc and a static busybox (Debian packages runc, busybox-static; needs
#     root and apt-get);
#   - containerd, ctr and containerd-shim-runc-v2 of containerd
#     $CONTAINERD_VERSION, built with `go install` into $MINE_CACHE/bin.
#
# Idempotent and quiet: when everything is there it does nothing. Progress
# goes to stderr; stdout gets one line, the directory of the containerd
# binaries, so that
#
#   export MINE_CONTAINERD_BIN=$(hack/install-deps.sh)
#
# Environment:
#   MINE_CACHE          cache directory (default ~/.cache/mine)
#   CONTAINERD_VERSION  containerd release to build (default v2.4.2)
set -euo pipefail

CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
MINE_CACHE=${MINE_CACHE:-$HOME/.cache/mine}
bin=$MINE_CACHE/bin
stamp=$bin/.containerd-version

log() { echo "install-deps: $*" >&2; }
die() { log "$*"; exit 1; }

# static_busybox succeeds when /bin/busybox is a statically linked busybox:
# the test image copies it and has no libc.
static_busybox() {
	[ -x /bin/busybox ] || return 1
	if command -v dpkg-query >/dev/null 2>&1; then
		dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
	else
		# ldd fails on a static binary ("not a dynamic executable").
		if ldd /bin/busybox >/dev/null 2>&1; then
			return 1
		fi
	fi
}

pkgs=()
command -v runc >/dev/null 2>&1 || pkgs+=(runc)
static_busybox || pkgs+=(busybox-static)
if [ ${#pkgs[@]} -gt 0 ]; then
	command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
	sudo=()
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "missing ${pkgs[*]}: run as root to install them"
		sudo=(sudo)
	fi
	log "installing ${pkgs[*]}"
	"${sudo[@]}" apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
fi

cmds=(containerd ctr containerd-shim-runc-v2)
have=yes
for c in "${cmds[@]}"; do
	[ -x "$bin/$c" ] || have=no
done
if [ "$have" != yes ] || [ "$(cat "$stamp" 2>/dev/null)" != "$CONTAINERD_VERSION" ]; then
	command -v go >/dev/null 2>&1 || die "no go in PATH to build containerd $CONTAINERD_VERSION"
	mkdir -p "$bin"
	log "building containerd $CONTAINERD_VERSION (${cmds[*]}) into $bin"
	mods=()
	for c in "${cmds[@]}"; do
		mods+=("github.com/containerd/containerd/v2/cmd/$c@$CONTAINERD_VERSION")
	done
	# Outside any module, with no GOFLAGS of the caller, so nothing of this
	# repository changes how containerd builds. no_btrfs: no btrfs headers.
	(cd / && GOFLAGS='' GOBIN=$bin go install -tags no_btrfs "${mods[@]}")
	echo "$CONTAINERD_VERSION" >"$stamp"
fi

echo "$bin"
