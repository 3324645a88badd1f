#!/usr/bin/env bash
# test.sh [-v]: the project's cgroup v2 tests (`make test-cgroupv2`).
#
# The machines the project is developed on mount cgroup v1 (or hybrid), so
# the cgroup v2 code paths are tested in a throwaway VM that has cgroup v2
# only (run.sh). On the host this script builds, static (CGO_ENABLED=0):
#
#   oom.test                 go test -c ./pkg/oom: the OOM watcher on real
#                            cgroup v2 memory cgroups
#   cgroup.test              go test -c ./pkg/cgroup: the shim's metrics
#                            reader against the cgroup2 manager, field by
#                            field, on a real cgroup v2 cgroup
#   cgv2.test                go test -c ./test/cgv2: the shim with runc, a
#                            container OOM-killed at its 32 MiB limit, and
#                            /tasks/oom forwarded before /tasks/exit; and
#                            the whole stack (TestStack): containerd v2.4
#                            with the mine shim and its runc shim, through
#                            its Go client and CRI
#   containerd-shim-mine-v2  the shim cgv2.test drives
#   pause                    the CRI pods' sandbox program
#
# and takes containerd, ctr and containerd-shim-runc-v2 from
# $MINE_CONTAINERD_BIN (default $MINE_CACHE/bin, hack/install-deps.sh).
#
# then boots one VM that runs both test binaries (vm-tests.sh) and prints a
# `go test` style line per package:
#
#   ok  	github.com/mineshim/mine/pkg/oom (cgroup v2 VM)	4.31s
#   FAIL	github.com/mineshim/mine/test/cgv2 (cgroup v2 VM)	7.63s
#
# A package passes when its test binary exits 0 and the tests that need
# cgroup v2 passed rather than skipped. Without -v a package's output is
# shown only when it fails; -v streams everything.
#
# Exit status: 0 when every package passed, 1 otherwise (also when the VM
# failed or timed out), 2 on bad usage.
#
# Needs go, and for the VM what run.sh needs (a Debian host; root the first
# time, to install qemu-system-x86 when it is missing). Environment: those of
# run.sh, MINE_CGV2_TIMEOUT (default 900 s for the VM run) in particular, and
# GO (default go).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

verbose=()
case ${1:-} in
'') ;;
-v) verbose=(-v) ;;
*)
	echo "usage: $0 [-v]" >&2
	exit 2
	;;
esac

say() { echo "cgv2: $*" >&2; }

module=$(${GO:-go} list -m)
# Per test binary: the package, and the tests that must pass (not skip) in
# the VM, one per line.
packages=(oom.test cgroup.test cgv2.test cgv2-systemd.test)
declare -A pkg=(
	[oom.test]=$module/pkg/oom
	[cgroup.test]=$module/pkg/cgroup
	[cgv2.test]=$module/test/cgv2
	[cgv2-systemd.test]="$module/test/cgv2 (systemd)"
)
declare -A required=(
	[oom.test]='TestRealOOM/v2
TestRealOOMBelow/v2
TestRealNoOOM/v2
TestRealRemovedBeforeRead/v2
TestManyAddRemove/v2_real_and_v2_fake'
	[cgroup.test]='TestCompareV2Real'
	[cgv2.test]='TestShimOOM
TestShimOOMCrun
TestStack'
	[cgv2-systemd.test]='TestSystemdCRI'
)

work=$(mktemp -d "${TMPDIR:-/tmp}/mine-cgv2-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building test binaries"
export CGO_ENABLED=0
for t in "${packages[@]}"; do
	[ "$t" != cgv2-systemd.test ] || continue
	if ! ${GO:-go} test -c -o "$work/$t" "${pkg[$t]}"; then
		printf 'FAIL\t%s (cgroup v2 VM) [build failed]\n' "${pkg[$t]}"
		exit 1
	fi
done
if ! ${GO:-go} build -o "$work/containerd-shim-mine-v2" ./cmd/containerd-shim-mine-v2; then
	printf 'FAIL\t%s (cgroup v2 VM) [build failed]\n' "${pkg[cgv2.test]}"
	exit 1
fi
if ! CGO_ENABLED=0 ${GO:-go} build -o "$work/pause" ./test/e2e/pause; then
	printf 'FAIL\t%s (cgroup v2 VM) [build failed]\n' "${pkg[cgv2.test]}"
	exit 1
fi
ctrd=${MINE_CONTAINERD_BIN:-${MINE_CACHE:-$HOME/.cache/mine}/bin}
mkdir "$work/containerd"
for b in containerd ctr containerd-shim-runc-v2; do
	if [ -x "$ctrd/$b" ]; then
		cp "$ctrd/$b" "$work/containerd/"
	else
		say "no $b in $ctrd (hack/install-deps.sh builds it): TestStack will skip and fail the run"
	fi
done
cp "$here/vm-tests.sh" "$work/"
# The same test binary, in a second VM whose PID 1 is systemd: only the
# tests of the systemd cgroup driver.
cp "$work/cgv2.test" "$work/cgv2-systemd.test"

# run_vm NAME CMD...: one VM run (CMD runs run.sh), its status reported.
run_vm() {
	local name=$1 vm
	shift
	say "running ${*: -1} in a cgroup v2 VM ($name)"
	set +e
	"$@"
	vm=$?
	set -e
	case $vm in
	0) ;;
	124) say "the $name VM run timed out (MINE_CGV2_TIMEOUT=${MINE_CGV2_TIMEOUT:-900})" ;;
	125) say "the $name VM failed" ;;
	*) say "the tests in the $name VM ended with status $vm" ;;
	esac
}
run_vm init "$here/run.sh" "$work" sh vm-tests.sh "${verbose[@]}" oom.test cgroup.test cgv2.test
run_vm systemd env MINE_CGV2_SYSTEMD=1 "$here/run.sh" "$work" sh vm-tests.sh "${verbose[@]}" -run TestSystemd cgv2-systemd.test
if [ -f "$work/vm.info" ] && [ ${#verbose[@]} -eq 0 ]; then
	sed 's/^/cgv2: vm: /' "$work/vm.info" >&2
fi

failed=0
for t in "${packages[@]}"; do
	name="${pkg[$t]} (cgroup v2 VM)"
	log=$work/$t.log
	status=$(cat "$work/$t.status" 2>/dev/null || true)
	elapsed=$(cat "$work/$t.time" 2>/dev/null || true)
	why=()
	if [ -z "$status" ]; then
		why+=("did not run to completion")
	elif [ "$status" != 0 ]; then
		why+=("test binary exited with status $status")
	fi
	if [ -f "$log" ]; then
		while read -r test; do
			[ -n "$test" ] || continue
			if ! grep -qF -- "--- PASS: $test (" "$log"; then
				why+=("$test did not pass (skipped or not run; see its output)")
			fi
		done <<<"${required[$t]}"
	fi
	if [ ${#why[@]} -eq 0 ]; then
		printf 'ok  \t%s\t%ss\n' "$name" "$elapsed"
		continue
	fi
	failed=1
	if [ ${#verbose[@]} -eq 0 ] && [ -s "$log" ]; then
		cat "$log"
	fi
	for w in "${why[@]}"; do
		echo "cgv2: ${pkg[$t]}: $w" >&2
	done
	if [ -n "$elapsed" ]; then
		printf 'FAIL\t%s\t%ss\n' "$name" "$elapsed"
	else
		printf 'FAIL\t%s\t[VM run failed]\n' "$name"
	fi
done
say "done in ${SECONDS}s"
exit "$failed"
