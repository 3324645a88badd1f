#!/usr/bin/env bash
# Installs what the demo and the e2e tests need, when it is missing:
#   - runc and a static busybox (Debian packages runc, busybox-static; needs
#     root and apt-get), and crun and criu for the tests of the BinaryName
#     option and of checkpoint and restore (Debian packages crun, criu), and
#     the CNI plugins of the CRI tests' pod network (Debian package
#     containernetworking-plugins, in /usr/lib/cni; without apt-get the CRI
#     tests use host-network pods instead);
#   - containerd, ctr and containerd-shim-runc-v2 of containerd
#     $CONTAINERD_VERSION, built with `go install` into $MINE_CACHE/bin;
#   - for the compatibility tests (test/compat), containerd and ctr of
#     containerd v2.2.9 in $MINE_CACHE/containerd-v2.2.9/bin and of containerd
#     v1.7.35 in $MINE_CACHE/containerd-v1.7.35/bin, and Debian 12's own
#     containerd 1.6.20 (containerd, ctr and its containerd-shim-runc-v2,
#     taken out of the package with `apt-get download` and `dpkg -x`, never
#     installed over the system) in $MINE_CACHE/containerd-v1.6.20/bin.
#     MINE_COMPAT_DEPS=0 skips them (test/compat then skips those releases).
#
# Idempotent and quiet: when everything is there it does nothing. Progress
# goes to stderr; stdout gets one line, the directory of the containerd
# binaries, so that
#
#   export MINE_CONTAINERD_BIN=$(hack/install-deps.sh)
#
# The directories of the older releases are fixed:
#
#   export MINE_CONTAINERD22_BIN=$MINE_CACHE/containerd-v2.2.9/bin
#   export MINE_CONTAINERD17_BIN=$MINE_CACHE/containerd-v1.7.35/bin
#   export MINE_CONTAINERD16_BIN=$MINE_CACHE/containerd-v1.6.20/bin
#
# Environment:
#   MINE_CACHE          cache directory (default ~/.cache/mine)
#   CONTAINERD_VERSION  containerd release to build (default v2.4.2)
#   MINE_COMPAT_DEPS    0: do not build containerd v2.2.9 and v1.7.35, nor
#                       fetch containerd 1.6.20
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
command -v crun >/dev/null 2>&1 || pkgs+=(crun)
command -v criu >/dev/null 2>&1 || [ -x /usr/sbin/criu ] || pkgs+=(criu)
if [ ! -x /usr/lib/cni/bridge ]; then
	if command -v apt-get >/dev/null 2>&1; then
		pkgs+=(containernetworking-plugins)
	else
		log "no CNI plugins in /usr/lib/cni: the CRI tests will use host-network pods"
	fi
fi
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

# have_release DIR VERSION: DIR holds containerd and ctr built from VERSION.
have_release() {
	[ -x "$1/containerd" ] && [ -x "$1/ctr" ] && [ "$(cat "$1/.containerd-version" 2>/dev/null)" = "$2" ]
}

if [ "${MINE_COMPAT_DEPS:-1}" != 0 ]; then
	command -v go >/dev/null 2>&1 || die "no go in PATH to build containerd v2.2.9 and v1.7.35 (MINE_COMPAT_DEPS=0 skips them)"

	v=v2.2.9
	dir=$MINE_CACHE/containerd-$v/bin
	if ! have_release "$dir" "$v"; then
		log "building containerd $v (containerd ctr) into $dir"
		mkdir -p "$dir"
		(cd / && GOFLAGS='' GOBIN=$dir go install -tags no_btrfs \
			"github.com/containerd/containerd/v2/cmd/containerd@$v" \
			"github.com/containerd/containerd/v2/cmd/ctr@$v")
		echo "$v" >"$dir/.containerd-version"
	fi

	# containerd 1.7's go.mod has exclude directives, which `go install
	# pkg@version` refuses: build in a writable copy of the module instead.
	v=v1.7.35
	dir=$MINE_CACHE/containerd-$v/bin
	if ! have_release "$dir" "$v"; then
		log "building containerd $v (containerd ctr) into $dir"
		moddir=$(cd / && GOFLAGS='' go mod download -json "github.com/containerd/containerd@$v" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -d "$moddir" ] || die "go mod download github.com/containerd/containerd@$v: no module directory"
		src=$(mktemp -d "${TMPDIR:-/tmp}/containerd-$v.XXXXXX")
		trap 'rm -rf "$src"' EXIT
		cp -R "$moddir/." "$src/"
		chmod -R u+w "$src"
		mkdir -p "$dir"
		(cd "$src" && GOFLAGS=-mod=mod GOWORK=off go build -tags no_btrfs -o "$dir/" ./cmd/containerd ./cmd/ctr) >&2
		rm -rf "$src"
		trap - EXIT
		echo "$v" >"$dir/.containerd-version"
	fi

	# containerd 1.6 is Debian 12's own package (1.6.20). Its binaries are
	# taken out of the .deb, never installed over the system's.
	v=v1.6.20
	dir=$MINE_CACHE/containerd-$v/bin
	if ! have_release "$dir" "$v" || [ ! -x "$dir/containerd-shim-runc-v2" ]; then
		command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 ||
			die "no apt-get and dpkg to fetch Debian's containerd ${v#v} (MINE_COMPAT_DEPS=0 skips it)"
		# deb_version prints the Debian version of containerd ${v#v} apt knows.
		deb_version() {
			apt-cache madison containerd 2>/dev/null | awk -v want="${v#v}" '
				{ split($3, a, "~"); if (a[1] == want) { print $3; exit } }'
		}
		deb=$(deb_version)
		if [ -z "$deb" ]; then
			sudo=()
			[ "$(id -u)" = 0 ] || sudo=(sudo)
			log "apt-get update (no containerd ${v#v} in the package lists)"
			"${sudo[@]}" apt-get update -qq >&2
			deb=$(deb_version)
		fi
		[ -n "$deb" ] || die "apt knows no containerd ${v#v} (Debian 12 ships it)"
		log "extracting Debian's containerd $deb (containerd ctr containerd-shim-runc-v2) into $dir"
		work=$(mktemp -d "${TMPDIR:-/tmp}/containerd-$v.XXXXXX")
		trap 'rm -rf "$work"' EXIT
		# apt fetches as its own user when it can write there.
		if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
		(cd "$work" && apt-get download -qq "containerd=$deb") >&2
		dpkg -x "$work"/containerd_*.deb "$work/root"
		mkdir -p "$dir"
		for c in containerd ctr containerd-shim-runc-v2; do
			[ -x "$work/root/usr/bin/$c" ] || die "the containerd $deb package has no usr/bin/$c"
			cp "$work/root/usr/bin/$c" "$dir/$c"
		done
		rm -rf "$work"
		trap - EXIT
		echo "$v" >"$dir/.containerd-version"
	fi
fi

echo "$bin"
