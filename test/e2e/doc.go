// Package e2e tests the mine shim end to end, driven by a real containerd the
// way users drive it: `ctr run --runtime io.containerd.mine.v2` and the
// containerd Go client.
//
// What it tests: container output and exit codes (ctr's exit code and the
// client's Wait status), exit statuses after SIGTERM and SIGKILL, the order of
// the task events on containerd's event stream (/tasks/create, /tasks/start,
// /tasks/exit, /tasks/delete), that deleting a container leaves no shim
// process, shim socket, mount under the bundle, runc state or bundle behind,
// that the shim behaves like containerd's own runc shim for the same
// commands, and the acceptance line of the project:
//
//	ctr -n demo run --rm --runtime io.containerd.mine.v2 IMAGE t1 sh -c 'echo hi; exit 3'
//
// How it runs: TestMain starts one private containerd for the test binary,
// with its own root, state and sockets in a temporary directory under /run,
// a generated version 3 config (overlayfs snapshotter, or native when an
// overlay mount does not work here; CRI runtimes "runc" and "mine"), and the
// directory of the shim first on containerd's PATH. It imports a busybox image
// built locally by package imagebuild (no registry), runs the tests, then stops
// containerd and removes the temporary directory. When a test fails, the tail
// of containerd's log is printed with it.
//
// Kubernetes through CRI: TestCRI (cri_test.go, build tag cri; it needs the
// module k8s.io/cri-api) drives containerd's CRI plugin with the
// k8s.io/cri-api client and the runtime handler "mine": two pods of three and
// two containers, one shim per pod, ExecSync and its timeout, ContainerStats,
// StopContainer with the image's stop signal and with a timeout, an OOM kill
// reported as OOMKilled, and pod removal without leftovers. The CRI plugin of
// the private containerd gets a locally built pause image (package pause) as
// sandbox image, and a CNI bridge network of its own (Debian package
// containernetworking-plugins in /usr/lib/cni; host-network pods without
// it). TestTaskWithoutStdio checks, without CRI, a task with no stdio at all,
// as CRI creates every pod's sandbox container.
//
// containerd restarts: TestContainerdRestart starts a private containerd of
// its own, kills it with SIGKILL under running containers and starts it again
// with the same config.
//
// What it needs: root, runc on PATH, a static busybox at /bin/busybox
// (Debian busybox-static), and containerd v2 binaries (containerd, ctr and,
// for the runc comparison, containerd-shim-runc-v2). Without them every test
// skips and says why. The tests of the BinaryName option and of checkpoint
// and restore also use crun and criu (Debian packages crun, criu), and skip
// without them, or where they cannot work (crun on a cgroup v1 host whose
// unified hierarchy has controllers; CRIU on a kernel it cannot dump on).
// hack/install-deps.sh installs all of them.
//
// Environment:
//
//	MINE_CONTAINERD_BIN  directory holding containerd, ctr and
//	                     containerd-shim-runc-v2 (default: look them up in PATH)
//	MINE_SHIM            path of a built containerd-shim-mine-v2 (default:
//	                     `go build` ./cmd/containerd-shim-mine-v2 once per run)
//	MINE_E2E_RUNTIME     runtime under test (default io.containerd.mine.v2);
//	                     io.containerd.runc.v2 runs the same tests against
//	                     containerd's own shim, to check the tests themselves
//
// containerd's runc shim sends TaskExit from a goroutine that races with the
// Delete call and drops unsent events when it shuts down, so under load it
// delivers /tasks/exit after /tasks/delete or not at all. With that shim
// under test the event-order test then skips and shows the events it saw;
// with any other runtime it fails.
//
// Assumption about the shim: like containerd's runc shim, it keeps runc state
// in /run/containerd/runc/NAMESPACE/ID unless the runtime options name another
// root, and its daemon process keeps the container ID in its argv
// (`-id ID`), which is how the leak checks find it.
package e2e
