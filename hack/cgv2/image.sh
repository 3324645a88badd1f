#!/usr/bin/env bash
# Prints the directory of the cgroup v2 test VM image (a kernel and an
# initramfs), after building it if the cache has none for the current inputs.
# run.sh calls it; running it alone fills the cache ahead of time.
#
# Everything in the image comes from Debian packages fetched with
# `apt-get download` and unpacked with dpkg-deb; nothing is installed on the
# host:
#
#   linux-image-*-amd64     the kernel, and the modules the guest loads from
#                           the initramfs: virtio PCI transport, virtio-serial
#                           ports, 9p over virtio, virtio-rng, plus
#                           $MINE_CGV2_MODULES (with their dependencies)
#   busybox-static          every tool of the guest (applets linked at boot)
#   runc libseccomp2 libc6  runc and the shared libraries it links against
#   crun and its libraries  crun (libcap2 libsystemd0 libyajl2 libgcrypt20
#                           liblzma5 libzstd1 liblz4-1 libgpg-error0), for
#                           the BinaryName=crun test
#   systemd and its         /lib/systemd/systemd, PID 1 of the VM when run.sh
#   libraries               is asked for it (MINE_CGV2_SYSTEMD=1): the tests
#                           of the systemd cgroup driver
#
# The guest's PID 1 is init.sh of this directory.
#
# Environment:
#   MINE_CACHE            cache root (default ~/.cache/mine); the image lives
#                         in $MINE_CACHE/cgv2/image
#   MINE_CGV2_KERNEL_PKG  kernel package (default: the one linux-image-amd64
#                         depends on in the apt lists)
#   MINE_CGV2_MODULES     extra kernel modules for the guest (space separated)
#   MINE_CGV2_REBUILD=1   build again even when the cached image is current
#
# The cached image is reused as long as this script, init.sh and the two
# settings above are unchanged.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${MINE_CACHE:-${HOME:-/root}/.cache/mine}/cgv2
image=$cache/image
base_modules="virtio_pci virtio_console 9pnet_virtio 9p virtio_rng"
modules="$base_modules ${MINE_CGV2_MODULES:-}"

say() { echo "cgv2 image: $*" >&2; }
die() { say "$*"; exit 1; }

key=$(cat "$here/image.sh" "$here/init.sh" |
	{ sha256sum; echo "kernel=${MINE_CGV2_KERNEL_PKG:-} modules=${MINE_CGV2_MODULES:-}"; } |
	sha256sum | cut -c1-32)

current() {
	[ "${MINE_CGV2_REBUILD:-0}" != 1 ] &&
		[ "$(cat "$image/key" 2>/dev/null)" = "$key" ] &&
		[ -s "$image/kernel" ] && [ -s "$image/initrd" ]
}

if current; then
	echo "$image"
	exit 0
fi

mkdir -p "$cache"
# One builder at a time; whoever waited finds the image built.
exec 8>"$cache/lock"
flock 8
if current; then
	echo "$image"
	exit 0
fi

for tool in apt-get apt-cache dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || die "$tool not found: building the image needs a Debian host"
done

# Builds hold the lock: any build directory left is from one that was killed.
rm -rf "$cache"/build.*
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# apt_retry CMD...: runs CMD; when it fails, refreshes the apt lists (root
# only) and runs it once more.
apt_retry() {
	"$@" && return 0
	[ "$(id -u)" = 0 ] || return 1
	say "refreshing the apt lists"
	apt-get update -qq >&2 || return 1
	"$@"
}

kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1 | grep .
}

kpkg=${MINE_CGV2_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
	kpkg=$(apt_retry kernel_pkg) || die "cannot tell which kernel linux-image-amd64 depends on"
fi
# crun and its libraries: the BinaryName=crun test (crun refuses cgroup v1
# hybrid hosts, so it runs only here).
pkgs=("$kpkg" busybox-static runc libseccomp2 libc6
	crun libcap2 libsystemd0 libyajl2 libgcrypt20 liblzma5 libzstd1 liblz4-1 libgpg-error0
	systemd libsystemd-shared libacl1 libapparmor1 libaudit1 libcap-ng0 libblkid1 libcrypt1 libip4tc2
	libkmod2 libmount1 libpam0g libselinux1 libpcre2-8-0 libssl3)

say "downloading ${pkgs[*]}"
mkdir "$work/debs"
fetch() { (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}" >&2); }
apt_retry fetch || die "apt-get download ${pkgs[*]} failed"

x=$work/unpacked
mkdir "$x"
: >"$work/versions"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$x"
	# shellcheck disable=SC2016 # dpkg-deb's own ${field} syntax
	dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$work/versions"
done
# first PATH...: the first of the paths that exists (packages of newer
# Debian releases moved their files from / to /usr).
first() {
	local p
	for p in "$@"; do
		if [ -e "$p" ]; then
			echo "$p"
			return 0
		fi
	done
	return 1
}
bb=$(first "$x/bin/busybox" "$x/usr/bin/busybox") || die "busybox-static holds no busybox"
moddir=$(first "$x/lib/modules" "$x/usr/lib/modules") || die "$kpkg holds no modules"
kver=$(basename "$(find "$moddir" -mindepth 1 -maxdepth 1 -type d | head -n1)")
if [ -z "$kver" ] || [ ! -f "$x/boot/vmlinuz-$kver" ]; then
	die "$kpkg holds no kernel"
fi
for opt in CGROUPS MEMCG TMPFS DEVTMPFS BLK_DEV_INITRD; do
	grep -q "^CONFIG_$opt=y" "$x/boot/config-$kver" || die "kernel $kver lacks CONFIG_$opt=y"
done

r=$work/root
mkdir -p "$r"/{bin,sbin,dev,proc,sys,etc/cgv2,tmp,run,root,mnt,lib64,usr/bin,usr/sbin}

# --- userland: busybox, linked to its applets by init.sh at boot; /bin/sh
# is needed before that, as the interpreter of /init.
cp "$bb" "$r/bin/busybox"
ln -s busybox "$r/bin/sh"

# --- runc and crun, and what the dynamic loader of libc6 resolves for them.
loader=$(first "$x/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$x/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") ||
	die "libc6 holds no dynamic loader"
libpath=$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu:$x/lib/x86_64-linux-gnu/systemd:$x/usr/lib/x86_64-linux-gnu/systemd
# install_binary NAME: copy the binary NAME into /usr/sbin of the image with
# the shared libraries it links against.
install_binary() {
	local name=$1 bin lib rel
	bin=$(first "$x/usr/sbin/$name" "$x/usr/bin/$name" "$x/lib/systemd/$name" "$x/usr/lib/systemd/$name") ||
		die "no $name in the packages"
	cp "$bin" "$r/usr/sbin/$name"
	"$loader" --library-path "$libpath" --list "$bin" >"$work/$name-libs" ||
		die "cannot resolve the libraries of $name"
	sed -n 's/^.* => \(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p' "$work/$name-libs" | while read -r lib; do
		case $lib in
		"$x"/*) ;;
		*) die "$name needs $lib, which is not in ${pkgs[*]}" ;;
		esac
		rel=${lib#"$x"/}
		mkdir -p "$r/$(dirname "$rel")"
		cp -L "$lib" "$r/$rel"
	done
}
install_binary runc
install_binary crun
install_binary systemd
mkdir -p "$r/lib/x86_64-linux-gnu"
cp -L "$loader" "$r/lib/x86_64-linux-gnu/"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$r/lib64/ld-linux-x86-64.so.2"

# --- kernel modules: the wanted ones and their dependencies, found through
# modules.order (name -> file) and each module's depends= tag. The guest
# loads them with busybox modprobe, which reads the modules.dep that busybox
# depmod writes for this small tree.
mdir=$moddir/$kver
declare -A ko=() # module name -> file relative to $mdir
while read -r f; do
	n=${f##*/}
	n=${n%%.ko*}
	ko[${n//-/_}]=$f
done <"$mdir/modules.order"
module_file() { # module_file NAME: path relative to $mdir, "" if built in
	local want=${1//-/_}
	if [ -n "${ko[$want]:-}" ]; then
		echo "${ko[$want]}"
	elif ! grep -qE "/${want//_/[-_]}\.ko" "$mdir/modules.builtin" 2>/dev/null; then
		die "kernel $kver has no module $1"
	fi
}
unpack_ko() { # unpack_ko FILE: the module's ELF on stdout
	case $1 in
	*.xz) xz -dc "$1" ;;
	*.zst) zstd -qdc "$1" ;;
	*.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}
declare -A seen=()
add_module() {
	local name=${1//-/_} f dep
	[ -z "${seen[$name]:-}" ] || return 0
	seen[$name]=1
	f=$(module_file "$name")
	[ -n "$f" ] || return 0
	mkdir -p "$r/lib/modules/$kver/$(dirname "$f")"
	unpack_ko "$mdir/$f" >"$r/lib/modules/$kver/${f%.ko*}.ko"
	for dep in $(tr '\0' '\n' <"$r/lib/modules/$kver/${f%.ko*}.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
		add_module "$dep"
	done
}
for m in $modules; do
	add_module "$m"
done
"$bb" depmod -b "$r" "$kver" || die "depmod failed"
echo "$modules" >"$r/etc/cgv2/modules"

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$r/etc/hosts"
cp "$work/versions" "$r/etc/cgv2/packages"
cp "$here/init.sh" "$r/init"
chmod 0755 "$r/init"

out=$work/image
mkdir "$out"
cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz"
# Under software emulation, unpacking the kernel image takes seconds of
# every boot. A kernel with CONFIG_PVH can be booted by QEMU as the plain ELF
# instead: the compressed payload of the bzImage, found through its setup
# header (boot protocol 2.08+: payload_offset at 0x248, payload_length at
# 0x24c, relative to the protected-mode code after the setup sectors).
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
extract_elf() {
	local bz=$1 sects poff plen
	grep -q '^CONFIG_PVH=y' "$x/boot/config-$kver" || return 1
	[ "$(head -c 4 <(tail -c +$((0x202 + 1)) "$bz"))" = HdrS ] || return 1
	sects=$(u8 "$bz" $((0x1f1)))
	[ "$sects" != 0 ] || sects=4
	poff=$(($(u32 "$bz" $((0x248))) + (sects + 1) * 512))
	plen=$(u32 "$bz" $((0x24c)))
	[ "$plen" -gt 0 ] || return 1
	tail -c +$((poff + 1)) "$bz" | head -c "$plen" >"$work/payload"
	case $(od -An -tx1 -N6 "$work/payload" | tr -d ' ') in
	fd377a585a00) xz -dc --single-stream <"$work/payload" ;;
	1f8b*) gzip -dc <"$work/payload" ;;
	28b52ffd*) zstd -qdc <"$work/payload" ;;
	*) return 1 ;;
	esac >"$2" 2>/dev/null || return 1
	[ "$(od -An -tx1 -N4 "$2" | tr -d ' ')" = 7f454c46 ]
}
if extract_elf "$out/vmlinuz" "$out/vmlinux"; then
	ln -s vmlinux "$out/kernel"
else
	say "cannot unpack the kernel's ELF image; booting the bzImage (slower)"
	rm -f "$out/vmlinux"
	ln -s vmlinuz "$out/kernel"
fi
rm -f "$work/payload"
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) >"$out/initrd"
cp "$work/versions" "$out/packages"
echo "$kver" >"$out/kernel-version"
echo "$key" >"$out/key"

rm -rf "$image.old"
[ ! -e "$image" ] || mv "$image" "$image.old"
mv "$out" "$image"
rm -rf "$image.old"
say "built $image: kernel $kver, initramfs $(du -k "$image/initrd" | cut -f1) KiB"
echo "$image"
