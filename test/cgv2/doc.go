// Package cgv2 tests the mine shim on a cgroup v2 host: a container that
// exceeds its memory limit is OOM-killed, and the shim reports it the way
// containerd expects (TestShimOOM); the whole stack, containerd v2.4 with the
// mine shim and with containerd's runc shim, through the Go client and CRI
// (TestStack: lifecycle, exec, pause and resume with the cgroup v2 freezer,
// update, cgroup v2 Stats, OOM, ShimCgroup, a CRI pod with an OOMKilled
// container); and a CRI pod with SystemdCgroup = true on a host whose PID 1
// is systemd (TestSystemdCRI: containers in systemd scopes under the pod's
// slice).
//
// TestShimOOM:
//
// The test drives containerd-shim-mine-v2 the way containerd does, without
// containerd: it runs `containerd-shim-mine-v2 -namespace NS -id ID -address
// ADDR start` in the bundle directory with a BootstrapParams protobuf on
// stdin, reads the BootstrapResult with the shim's ttrpc address from stdout,
// and serves the ttrpc Events service at TTRPC_ADDRESS, recording every event
// the shim forwards. Through the Task API v3 it creates and starts a busybox
// container with a 32 MiB memory limit whose shell fills its memory, then
// checks that:
//
//   - Wait reports exit status 137 (SIGKILL) and the kernel counted an
//     oom_kill in the container's memory.events;
//   - the forwarded events are /tasks/create, /tasks/start, /tasks/oom for
//     the container, then /tasks/exit with status 137: the OOM event comes
//     before the exit it caused;
//   - Delete reports the same status, publishes /tasks/delete and removes the
//     container's cgroup and runc state;
//   - Shutdown ends the shim process and removes its socket.
//
// What it needs: root, cgroup v2 mounted at /sys/fs/cgroup with the memory
// controller (a unified host, not a hybrid one), runc on PATH and a static
// busybox at /bin/busybox (Debian busybox-static). Without them the test
// skips and says why: on the cgroup v1 and hybrid machines the project
// usually runs on it always skips. hack/cgv2/test.sh (`make test-cgroupv2`)
// runs it in a throwaway cgroup v2 VM.
//
// The shim writes where containerd's runc shim does: runc state under
// /run/containerd/runc/NS and its socket under /run/containerd/s; the
// container's cgroup is /NS/ID below /sys/fs/cgroup. Everything is removed
// at the end, also when the test fails.
//
// TestStack and TestSystemdCRI start a private containerd through package
// testenv, in a directory under /run; hack/cgv2/test.sh runs TestSystemdCRI
// in a second VM booted with systemd as PID 1, and elsewhere it skips.
//
// Environment:
//
//	MINE_SHIM            path of a built containerd-shim-mine-v2 (default:
//	                     `go build` ./cmd/containerd-shim-mine-v2 into a
//	                     temporary directory)
//	MINE_CONTAINERD_BIN  directory of containerd v2.4's containerd, ctr and
//	                     containerd-shim-runc-v2 (default $MINE_CACHE/bin)
//	MINE_PAUSE           path of the built pause program (default: built)
package cgv2
