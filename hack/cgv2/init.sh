#!/bin/sh
# shellcheck shell=sh
#
# PID 1 of the cgroup v2 test VM: image.sh packs it into the initramfs as
# /init. It brings up a minimal system with cgroup v2 only, then runs the
# command run.sh handed over and reports its exit status.
#
# run.sh talks to it through the 9p share tagged mine.ctl:
#   workdir  absolute path where the share tagged mine.work is mounted
#   cmd      shell script run as root in workdir, stdin /dev/null
#   started  written by this script as cmd begins
#   status   written by this script: cmd's exit status
#   dmesg    written by this script: the kernel log after cmd
#   systemd  when present: systemd becomes PID 1 (after the setup below) and
#            runs cmd as the service mine.service
# cmd's stdout and stderr go to the virtio-serial ports named mine.stdout
# and mine.stderr. When something fails before cmd runs, the reason goes to
# the serial console and the VM powers off without a status.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME

# run WORKDIR OUT ERR: runs cmd, reports its status and powers off; the
# last step of stage 2, or mine.service under systemd.
if [ "$1" = run ]; then
	ctl=/mnt/ctl
	cd "$2" || exit 1
	# Tells run.sh that the boot is over: cmd runs.
	: >$ctl/started
	sh $ctl/cmd </dev/null >"$3" 2>"$4"
	status=$?
	cd /
	dmesg >$ctl/dmesg 2>/dev/null
	# 9p writes reach the host before they return: once the rename is done
	# the host has the status.
	echo $status >$ctl/status.new && mv $ctl/status.new $ctl/status
	sync
	poweroff -f
	exit 1
fi

if [ "$1" != stage2 ]; then
	# Stage 1 runs on the initramfs, which is the root mount itself:
	# pivot_root(2), as runc does for every container, cannot leave it. Copy
	# the tree into a tmpfs and make that the root.
	/bin/busybox mount -t devtmpfs devtmpfs /dev
	exec </dev/console >/dev/console 2>&1
	/bin/busybox mkdir -p /sysroot
	/bin/busybox mount -t tmpfs -o mode=0755 sysroot /sysroot
	for entry in /*; do
		case $entry in
		/sysroot | /dev | /proc | /sys) ;;
		*) /bin/busybox cp -a "$entry" /sysroot/ ;;
		esac
	done
	/bin/busybox mkdir -p /sysroot/dev /sysroot/proc /sysroot/sys
	/bin/busybox mount -o move /dev /sysroot/dev
	exec /bin/busybox switch_root /sysroot /init stage2
fi

# Stage 2: the tmpfs root.
/bin/busybox --install -s

debug=0
say() { echo "cgv2 init: $*" >/dev/console; }
trace() { [ "$debug" = 0 ] || say "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() {
	say "FAILED: $*"
	poweroff -f
	exit 1
}

mount -t proc proc /proc || fail "mount /proc"
grep -qw mine.debug=1 /proc/cmdline && debug=1
trace "stage 2 on $(uname -r)"
mount -t sysfs sysfs /sys || fail "mount /sys"
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
ln -sf /proc/self/fd /dev/fd
ln -sf fd/0 /dev/stdin
ln -sf fd/1 /dev/stdout
ln -sf fd/2 /dev/stderr
mount -t tmpfs -o mode=1777 tmp /tmp || fail "mount /tmp"
mount -t tmpfs -o mode=0755 run /run || fail "mount /run"
mkdir -p /var
ln -s /tmp /var/tmp
ln -s /run /var/run

# cgroup v2 alone (the kernel runs with cgroup_no_v1=all), with every
# controller handed down from the root.
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
cg=/sys/fs/cgroup
read -r controllers <$cg/cgroup.controllers
for c in $controllers; do
	echo "+$c" >$cg/cgroup.subtree_control || fail "enable the $c controller"
done
[ "$(cat $cg/cgroup.subtree_control)" = "$(cat $cg/cgroup.controllers)" ] ||
	fail "subtree_control is '$(cat $cg/cgroup.subtree_control)', want '$(cat $cg/cgroup.controllers)'"
trace "cgroup2 controllers: $(cat $cg/cgroup.subtree_control)"

# shellcheck disable=SC2046 # one word per module
modprobe -a $(cat /etc/cgv2/modules) || fail "modprobe $(cat /etc/cgv2/modules)"
trace "modules loaded"
hostname cgv2
ip link set lo up

ctl=/mnt/ctl
mkdir -p $ctl
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 mine.ctl $ctl ||
	fail "mount the mine.ctl share"
workdir=$(cat $ctl/workdir)
case $workdir in
/?*) ;;
*) fail "bad workdir '$workdir'" ;;
esac
mkdir -p "$workdir"
# cache=mmap: binaries on the share can be executed (mmap), and writes go
# straight to the host.
mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,access=client,msize=262144 mine.work "$workdir" ||
	fail "mount the mine.work share at $workdir"

# port NAME: the device of the virtio-serial port NAME, once it appeared.
port() {
	i=0
	while [ $i -lt 1000 ]; do
		for p in /sys/class/virtio-ports/*; do
			if [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${p##*/}" ]; then
				echo "/dev/${p##*/}"
				return 0
			fi
		done
		sleep 0.01
		i=$((i + 1))
	done
	return 1
}
out=$(port mine.stdout) || fail "no virtio-serial port mine.stdout"
err=$(port mine.stderr) || fail "no virtio-serial port mine.stderr"

if [ -f $ctl/systemd ]; then
	# systemd as PID 1: it takes over the mounts made above (cgroup2 at
	# /sys/fs/cgroup included) and starts mine.target, which runs cmd.
	trace "starting systemd"
	mkdir -p /etc/systemd/system
	: >/etc/machine-id
	cat >/etc/systemd/system/mine.target <<EOF
[Unit]
Description=the command of the cgroup v2 test VM
Requires=mine.service
After=mine.service
EOF
	cat >/etc/systemd/system/mine.service <<EOF
[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
ExecStart=/bin/sh /init run $workdir $out $err
EOF
	exec /usr/sbin/systemd --unit=mine.target --log-target=kmsg
fi

trace "running the command"
exec /bin/sh /init run "$workdir" "$out" "$err"
