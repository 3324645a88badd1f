#!/usr/bin/env bash
# run.sh DIR CMD [ARGS...]
#
# Runs CMD as root inside a throwaway QEMU virtual machine whose only cgroup
# hierarchy is cgroup v2: the kernel boots with cgroup_no_v1=all, cgroup2 is
# mounted at /sys/fs/cgroup, and every available controller is enabled in
# the root's cgroup.subtree_control. DIR is shared into the VM read-write
# over virtio-9p at the same absolute path and is CMD's working directory.
# CMD's stdout and stderr are streamed to ours while it runs; its stdin is
# /dev/null.
#
# The guest: a Debian kernel, busybox (static) for every tool, runc with its
# libraries on PATH; tmpfs on /, /tmp and /run; no network but lo. Binaries
# that run inside a memory-limited cgroup should be copied from DIR to /tmp
# first: pages of files on 9p count against the cgroup and are read back over
# 9p each time they are reclaimed, which makes an OOM kill take minutes.
#
# The image (kernel and initramfs, see image.sh) is built from Debian
# packages on first use and cached in $MINE_CACHE/cgv2. qemu-system-x86 is
# installed with apt-get when missing. Without KVM the VM runs in software
# emulation: it boots in a few seconds, but CPU-bound work is about ten
# times slower than on the host.
#
# Exit status: CMD's (128+N when signal N ended it); 124 when the run did not
# end within MINE_CGV2_TIMEOUT seconds; 125 when this script or the VM failed
# before CMD's status came back (bad usage included).
#
# Environment:
#   MINE_CACHE         cache root (default ~/.cache/mine)
#   MINE_CGV2_TIMEOUT  seconds for the whole run, image build included
#                      (default 900; 0 means no limit)
#   MINE_CGV2_BOOT_TIMEOUT  seconds for the guest to start CMD (default 300;
#                      0 means no limit); a guest that has not is stopped
#                      and booted once more (no CMD ran in it)
#   MINE_CGV2_ENV      names of environment variables passed on to CMD
#   MINE_CGV2_MEM      guest memory in MiB (default 2048)
#   MINE_CGV2_CPUS     guest CPUs (default: the host's, at most 4)
#   MINE_CGV2_ACCEL    kvm, tcg or auto (default: kvm when /dev/kvm is usable
#                      and the CPU has VMX or SVM, tcg otherwise)
#   MINE_CGV2_CPU      QEMU CPU model (default: host with kvm, Nehalem,+rdrand
#                      with tcg)
#   MINE_CGV2_DEBUG=1  trace the guest's boot and show its console on stderr
#   MINE_CGV2_SYSTEMD=1  boot systemd as PID 1, which runs CMD as a service
#   MINE_CGV2_CONSOLE  file to keep the guest's serial console in
#   MINE_CGV2_DMESG    file to copy the guest's kernel log to after CMD
# and those of image.sh: MINE_CGV2_KERNEL_PKG, MINE_CGV2_MODULES,
# MINE_CGV2_REBUILD.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { echo "cgv2: $*" >&2; }
die() { say "$*"; exit 125; }

if [ $# -lt 2 ]; then
	sed -n '2,/^set -euo pipefail$/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 125
fi

dir=$(realpath -e -- "$1" 2>/dev/null) || die "no such directory: $1"
[ -d "$dir" ] || die "not a directory: $dir"
# The share is mounted over the guest's own tree at the same path: it must
# not hide what the guest needs.
case $dir in
/ | /bin | /sbin | /lib | /lib64 | /usr | /usr/bin | /usr/sbin | /usr/lib | /etc | /tmp | /run | /mnt | /root | /var | \
	/mnt/ctl | /mnt/ctl/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*)
	die "cannot share $dir: the guest needs that path for itself"
	;;
esac
shift

timeout_s=${MINE_CGV2_TIMEOUT:-900}
case $timeout_s in
'' | *[!0-9]*) die "MINE_CGV2_TIMEOUT must be a number of seconds" ;;
esac
# left: seconds remaining of the run's budget ("" when unbounded)
left() {
	[ "$timeout_s" != 0 ] || return 0
	local n=$((timeout_s - SECONDS))
	[ "$n" -gt 0 ] || n=0
	echo "$n"
}
bounded() { # bounded CMD...: runs CMD within the remaining budget
	local n
	n=$(left)
	if [ -z "$n" ]; then
		"$@"
	else
		[ "$n" -gt 0 ] || return 124
		timeout -k 5 "$n" "$@"
	fi
}
timed_out() {
	say "no result within ${timeout_s}s (MINE_CGV2_TIMEOUT)"
	exit 124
}

# --- QEMU
if ! command -v qemu-system-x86_64 >/dev/null; then
	[ "$(id -u)" = 0 ] || die "qemu-system-x86_64 is missing: apt-get install qemu-system-x86"
	say "installing qemu-system-x86"
	{
		bounded env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 ||
			{ bounded apt-get update -qq &&
				bounded env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86; }
	} >&2 || {
		rc=$?
		[ "$rc" != 124 ] || timed_out
		die "cannot install qemu-system-x86"
	}
fi

# --- image
set +e
image=$(bounded "$here/image.sh")
rc=$?
set -e
[ "$rc" != 124 ] || timed_out
if [ "$rc" != 0 ] || [ -z "$image" ]; then
	die "no VM image (image.sh exited with status $rc)"
fi

accel=${MINE_CGV2_ACCEL:-auto}
if [ "$accel" = auto ]; then
	accel=tcg
	# /dev/kvm alone is not enough: some nested hosts offer one that cannot
	# run a stock kernel; they do not show VMX or SVM.
	if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
		accel=kvm
	fi
fi
# Under emulation a CPU without AVX runs the guest faster (Go's runtime
# picks AVX2 code paths when offered, and they emulate slowly); RDRAND lets
# the guest kernel seed its RNG at once.
tcg_cpu="Nehalem,+rdrand"
case $accel in
kvm) machine=(-accel kvm -cpu "${MINE_CGV2_CPU:-host}") ;;
tcg) machine=(-accel "tcg,thread=multi" -cpu "${MINE_CGV2_CPU:-$tcg_cpu}") ;;
*) die "MINE_CGV2_ACCEL must be kvm, tcg or auto, not $accel" ;;
esac
cpus=${MINE_CGV2_CPUS:-$(nproc)}
[ "${MINE_CGV2_CPUS:-}" ] || [ "$cpus" -le 4 ] || cpus=4
mem=${MINE_CGV2_MEM:-2048}
debug=${MINE_CGV2_DEBUG:-0}

ctl=$(mktemp -d "${TMPDIR:-/tmp}/mine-cgv2.XXXXXX")
qemu_pid="" tails=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	if [ -n "$qemu_pid" ]; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	for p in "${tails[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$ctl"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The guest runs cmd with busybox sh: every word single-quoted.
quote() {
	local s=${1//\'/\'\\\'\'}
	printf "'%s'" "$s"
}
{
	echo "cd $(quote "$dir") || exit 125"
	for name in ${MINE_CGV2_ENV:-}; do
		[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "MINE_CGV2_ENV: bad variable name $name"
		if [ -n "${!name+set}" ]; then
			echo "export $name=$(quote "${!name}")"
		fi
	done
	printf exec
	for arg in "$@"; do
		printf ' %s' "$(quote "$arg")"
	done
	echo
} >"$ctl/cmd"
printf '%s' "$dir" >"$ctl/workdir"
if [ "${MINE_CGV2_SYSTEMD:-0}" = 1 ]; then
	: >"$ctl/systemd"
fi
console=${MINE_CGV2_CONSOLE:-$ctl/console}
boot_s=${MINE_CGV2_BOOT_TIMEOUT:-300}
case $boot_s in
'' | *[!0-9]*) die "MINE_CGV2_BOOT_TIMEOUT must be a number of seconds" ;;
esac

# QEMU option values take a comma doubled.
q() { echo "${1//,/,,}"; }
cmdline="console=ttyS0 panic=-1 quiet loglevel=3 cgroup_no_v1=all rdinit=/init mitigations=off"
[ "$debug" = 0 ] || cmdline="${cmdline/loglevel=3/loglevel=6} mine.debug=1"
qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
	-machine pc "${machine[@]}" -smp "$cpus" -m "$mem"
	-kernel "$image/kernel" -initrd "$image/initrd" -append "$cmdline"
	-chardev "file,id=console,path=$(q "$console")" -serial chardev:console
	-device virtio-rng-pci
	-device virtio-serial-pci
	-chardev "file,id=stdout,path=$(q "$ctl/stdout")" -device "virtserialport,chardev=stdout,name=mine.stdout"
	-chardev "file,id=stderr,path=$(q "$ctl/stderr")" -device "virtserialport,chardev=stderr,name=mine.stderr"
	-fsdev "local,id=ctl,path=$(q "$ctl"),security_model=none"
	-device "virtio-9p-pci,fsdev=ctl,mount_tag=mine.ctl"
	-fsdev "local,id=work,path=$(q "$dir"),security_model=none,multidevs=remap"
	-device "virtio-9p-pci,fsdev=work,mount_tag=mine.work")
[ "$debug" = 0 ] || say "accel $accel, $cpus CPUs, $mem MiB, image $image"

# Stream the guest's output while the VM runs; each tail stops once QEMU is
# gone and the file is read to its end.
follow() { tail -c +1 -s 0.2 -f --pid="$qemu_pid" "$1"; }

# show_console shows the end of the guest's serial console.
show_console() {
	if [ -s "$console" ]; then
		say "end of its console:"
		tail -n 30 "$console" | tr -d '\r' >&2 || true
	else
		say "its console is empty: MINE_CGV2_DEBUG=1 shows the boot"
	fi
}

# watch_boot stops QEMU when the guest has not started CMD within boot_s
# seconds, and leaves $ctl/noboot behind: a boot that hung, with no test
# run in it.
watch_boot() {
	local i
	for ((i = 0; i < boot_s * 5; i++)); do
		[ ! -e "$ctl/started" ] || return 0
		kill -0 "$qemu_pid" 2>/dev/null || return 0
		sleep 0.2
	done
	[ ! -e "$ctl/started" ] || return 0
	: >"$ctl/noboot"
	kill "$qemu_pid" 2>/dev/null || true
}

for attempt in 1 2; do
	rm -f "$ctl/started" "$ctl/noboot" "$ctl/status" "$ctl/dmesg"
	: >"$ctl/stdout"
	: >"$ctl/stderr"
	: >"$console"
	n=$(left)
	if [ -z "$n" ]; then
		"${qemu[@]}" </dev/null >&2 &
	elif [ "$n" -gt 0 ]; then
		timeout -k 5 "$n" "${qemu[@]}" </dev/null >&2 &
	else
		timed_out
	fi
	qemu_pid=$!
	follow "$ctl/stdout" &
	tails+=($!)
	follow "$ctl/stderr" >&2 &
	tails+=($!)
	if [ "$debug" != 0 ]; then
		follow "$console" | tr -d '\r' >&2 &
		tails+=($!)
	fi
	watcher=""
	if [ "$boot_s" != 0 ]; then
		watch_boot &
		watcher=$!
	fi

	set +e
	wait "$qemu_pid"
	qemu_rc=$?
	set -e
	qemu_pid=""
	if [ -n "$watcher" ]; then
		kill "$watcher" 2>/dev/null || true
		wait "$watcher" 2>/dev/null || true
	fi
	for p in "${tails[@]}"; do
		wait "$p" || true
	done
	tails=()
	[ -e "$ctl/noboot" ] || break
	say "the guest did not start CMD within ${boot_s}s (MINE_CGV2_BOOT_TIMEOUT)"
	show_console
	[ "$attempt" = 1 ] || break
	say "booting it once more"
done

if [ -n "${MINE_CGV2_DMESG:-}" ] && [ -f "$ctl/dmesg" ]; then
	cp "$ctl/dmesg" "$MINE_CGV2_DMESG"
fi
if [ -s "$ctl/status" ]; then
	status=$(cat "$ctl/status")
	case $status in
	'' | *[!0-9]*) die "the guest reported a bad status: $status" ;;
	esac
	exit "$status"
fi
if [ "$qemu_rc" = 124 ] && [ -n "$(left)" ]; then
	timed_out
fi
if [ -e "$ctl/started" ]; then
	say "the VM stopped without reporting CMD's status; CMD had started (qemu exit status $qemu_rc)"
else
	say "the VM stopped before it started CMD (qemu exit status $qemu_rc)"
fi
[ -e "$ctl/noboot" ] || show_console
exit 125
