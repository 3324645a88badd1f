#!/bin/sh
# shellcheck shell=sh
#
# vm-tests.sh [-v] [-run REGEX] TEST_BINARY...: the guest half of test.sh, run by
# busybox sh inside the cgroup v2 VM with the shared directory holding the
# binaries as working directory.
#
# Each test binary is copied to /tmp (tmpfs) and run from there: run from
# the 9p share, a binary's pages would count against the memory-limited
# cgroups the tests create, and every reclaim would read them back over 9p.
# For each binary NAME it leaves in the shared directory:
#   NAME.log     the test binary's -test.v output
#   NAME.status  its exit status
#   NAME.time    its run time in seconds
# and vm.info, what the guest is. With -v, the output is also streamed.

verbose=0
if [ "$1" = -v ]; then
	verbose=1
	shift
fi
run=.
if [ "$1" = -run ]; then
	run=$2
	shift 2
fi
share=$(pwd)
bin=/tmp/mine-tests
mkdir -p $bin

uptime() { cut -d' ' -f1 /proc/uptime; }

{
	echo "kernel $(uname -r), $(nproc) CPUs, $(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo) MiB"
	echo "cgroup2 subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
	echo "runc $(runc --version | awk 'NR == 1 { print $3 }')"
	echo "PID 1: $(cat /proc/1/comm)"
} >"$share/vm.info"
[ "$verbose" = 0 ] || sed 's/^/vm: /' "$share/vm.info"

for f in "$@" containerd-shim-mine-v2; do
	if [ ! -f "$share/$f" ]; then
		echo "vm-tests: no $f in $share" >&2
		exit 2
	fi
	cp "$share/$f" $bin/ || exit 2
done
export MINE_SHIM=$bin/containerd-shim-mine-v2
# containerd v2.4 and the pause program of the stack tests, when given.
if [ -d "$share/containerd" ]; then
	cp -R "$share/containerd" $bin/ || exit 2
	export MINE_CONTAINERD_BIN=$bin/containerd
fi
if [ -f "$share/pause" ]; then
	cp "$share/pause" $bin/ || exit 2
	export MINE_PAUSE=$bin/pause
fi

for t in "$@"; do
	mkdir -p "$bin/$t.d"
	begin=$(uptime)
	{
		(cd "$bin/$t.d" && exec "$bin/$t" -test.v -test.count=1 -test.timeout=12m -test.run "$run")
		echo $? >"$share/$t.status"
	} 2>&1 | if [ "$verbose" = 1 ]; then tee "$share/$t.log"; else cat >"$share/$t.log"; fi
	end=$(uptime)
	awk -v b="$begin" -v e="$end" 'BEGIN { printf "%.2f\n", e - b }' >"$share/$t.time"
done
