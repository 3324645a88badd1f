// Package compat runs one small lifecycle test of the mine shim against
// every containerd release line it supports: v2.4 (the new bootstrap
// protocol, Task API v3), v2.2 (the old bootstrap protocol, JSON version 3
// reply) and v1.7 (the old protocol, JSON version 2 reply, Task API v2).
//
// For each release it starts a private containerd (own root, state, sockets
// and log in a temporary directory under /run; a version 3 config for 2.x, a
// version 2 config for 1.7, each with the CRI runtime "mine" of
// docs/kubernetes.md), imports a locally built busybox image with that
// release's own ctr, and checks:
//
//   - `ctr run --rm` (that release's ctr) prints the container's output and
//     exits with its exit code (0 and 3);
//   - through the containerd Go client: an exec's output and exit code, a
//     SIGKILL reported as 137 by Wait and by the task delete;
//   - the task events of a container, in this order: /tasks/create,
//     /tasks/start, /tasks/exit, /tasks/delete, with its exit status;
//   - after each delete: no shim process, shim socket, bundle, runc state or
//     mount of the container is left; after containerd stops, no shim.
//
// The Go client is the one of this module (containerd v2.4); it talks to the
// 2.2 and 1.7 daemons as well.
//
// What it needs: root, runc on PATH, a static busybox at /bin/busybox, and
// the containerd binaries of each release (containerd and ctr), which
// hack/install-deps.sh builds. A release whose binaries are missing is
// skipped with the reason; the others still run.
//
// Environment (directories holding containerd and ctr):
//
//	MINE_CONTAINERD_BIN    containerd v2.4 (default: $MINE_CACHE/bin, else PATH)
//	MINE_CONTAINERD22_BIN  containerd v2.2 (default: $MINE_CACHE/containerd-v2.2.9/bin)
//	MINE_CONTAINERD17_BIN  containerd v1.7 (default: $MINE_CACHE/containerd-v1.7.35/bin)
//	MINE_CACHE             cache of hack/install-deps.sh (default ~/.cache/mine)
//	MINE_SHIM              a built containerd-shim-mine-v2 (default: go build it)
//
// A directory that holds a containerd of another release line than its
// variable names fails the test: the matrix would silently test one release
// twice.
package compat
