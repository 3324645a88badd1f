// Package compat runs one small lifecycle test of the mine shim against
// every containerd release line it supports: v2.4 (the new bootstrap
// protocol, Task API v3), v2.2 and v1.7 (the old bootstrap protocol, Task
// API v2) and v1.6, Debian 12's own containerd 1.6.20 (the old protocol; it
// reads the reply of start only as a bare address, which is what the shim
// answers every containerd before 2.3).
//
// For each release it starts a private containerd (own root, state, sockets
// and log in a temporary directory under /run; a version 3 config for 2.x, a
// version 2 config for 1.6 and 1.7, each with the CRI runtime "mine" of
// docs/kubernetes.md), imports a locally built busybox image with that
// release's own ctr, and checks:
//
//   - `ctr run --rm` (that release's ctr) prints the container's output and
//     exits with its exit code (0 and 3);
//   - through the containerd Go client: an exec's output and exit code, a
//     SIGKILL reported as 137 by Wait and by the task delete;
//   - pause and resume (the status each time) and the cgroup metrics of a
//     container, under the mine shim and, where the release's directory has
//     one (2.4 and 1.6), its own runc shim;
//   - the task events of a container, in this order: /tasks/create,
//     /tasks/start, /tasks/exit, /tasks/delete, with its exit status;
//   - after each delete: no shim process, shim socket, bundle, runc state or
//     mount of the container is left; after containerd stops, no shim.
//
// The Go client is the one of this module (containerd v2.4); it talks to the
// 2.2, 1.7 and 1.6 daemons as well.
//
// What it needs: root, runc on PATH, a static busybox at /bin/busybox, and
// the containerd binaries of each release (containerd and ctr), which
// hack/install-deps.sh builds (or, for 1.6, takes out of Debian's package).
// A release whose binaries are missing is
// skipped with the reason; the others still run.
//
// Environment (directories holding containerd and ctr):
//
//	MINE_CONTAINERD_BIN    containerd v2.4 (default: $MINE_CACHE/bin, else PATH)
//	MINE_CONTAINERD22_BIN  containerd v2.2 (default: $MINE_CACHE/containerd-v2.2.9/bin)
//	MINE_CONTAINERD17_BIN  containerd v1.7 (default: $MINE_CACHE/containerd-v1.7.35/bin)
//	MINE_CONTAINERD16_BIN  containerd v1.6 (default: $MINE_CACHE/containerd-v1.6.20/bin)
//	MINE_CACHE             cache of hack/install-deps.sh (default ~/.cache/mine)
//	MINE_SHIM              a built containerd-shim-mine-v2 (default: go build it)
//
// A directory that holds a containerd of another release line than its
// variable names fails the test: the matrix would silently test one release
// twice.
package compat
