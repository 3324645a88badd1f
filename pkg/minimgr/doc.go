// Package minimgr spawns containerd shim v2 runtimes (containerd-shim-mine-v2
// by default) for OCI bundles, finds them again from their state directories
// and drives them over ttrpc with containerd's Task API v3, without a
// daemon: every call is made by the calling process, and any number of
// processes may share one state root.
//
// # Spawning
//
// Manager.Create does what containerd >= 2.3 does: it runs
//
//	SHIM -namespace NS -id ID -address ROOT/minimgr.sock -publish-binary SELF start
//
// in the container's state directory, with TTRPC_ADDRESS (ROOT/events.sock),
// GRPC_ADDRESS and NAMESPACE in the environment and a protobuf
// BootstrapParams on stdin (instance ID, namespace, both addresses, the
// socket directory and, when configured, the runc Options as an extension).
// It reads the protobuf BootstrapResult from stdout (stderr is kept apart and
// shown on failure), records the answer and dials the shim. Nothing serves
// ROOT/minimgr.sock: the shim only hashes that address into its socket name,
// which keeps the shims of different roots apart. The sockets go to ROOT/s
// when the path fits the kernel's limit, else to /run/minimgr/s.
//
// # State directory
//
// ROOT/NAMESPACE/ID is the shim's working directory and the bundle it gives
// runc (--bundle). minimgr writes:
//
//   - config.json: the user's config with root.path made absolute (the
//     user's rootfs is used in place: nothing is mounted, copied or linked,
//     and the shim mounts nothing since Create carries no rootfs mounts),
//     process.args replaced when a command is given, process.terminal set
//     as asked, and linux.cgroupsPath /minimgr/NS/ID when unset;
//   - minimgr.json: the user's bundle, the shim binary, its address,
//     protocol, version and pid, the init pid, the log path, and the exit
//     status once a dead shim has been cleaned up;
//   - log: an empty regular file, which the shim appends its log to;
//   - io/: the FIFOs of attached processes and the log files of detached
//     ones (init.*, exec-ID.*);
//   - lock: a flock held while the directory is created and while it is
//     deleted, so that concurrent minimgr processes never remove a
//     container that another is creating. It is never waited for: a busy
//     container gives ErrBusy.
//
// The shim adds runtime.json, address, init.pid, exit.json and log.json;
// runc keeps its own state under /run/containerd/runc/NS/ID unless the
// runc Options say otherwise.
//
// # Reconnecting and dead shims
//
// Manager.Open dials the recorded address and asks Connect, within 2 s. A
// shim that refuses or does not answer is dead: errors wrap ErrShimDead
// (errdefs.ErrUnavailable). Manager.Wait and Manager.Delete clean a dead
// shim up with `SHIM -namespace NS -id ID -bundle STATEDIR delete`, whose
// DeleteResponse holds the saved exit status; that status is recorded and
// returned, and TaskExit and TaskDelete are forwarded to the events socket
// as containerd would (best effort). Manager.List reports such a shim as
// "dead"; Manager.Cleanup removes dead and stopped containers.
//
// # Teardown
//
// Container.Delete: Delete, Shutdown (3 s), close, `shim delete` (harmless
// when all is gone already, as after every containerd teardown), removal of
// the state directory. The shim process ends on its own once its queued
// events are sent or given up: minimgr does not wait for it.
//
// # Events
//
// EventsServer serves containerd.services.events.ttrpc.v1.Events/Forward on
// ROOT/events.sock and hands each event, decoded, to a callback, one at a
// time, in the order each shim sent them.
//
// # Ownership
//
// A Container is a connection, not the container: Close leaves the
// container and its shim running. The FIFOs of a process attached through
// IO are opened and closed by the handle that created it; the copy
// goroutines end at EOF, on WaitIO's bound or on Delete. The goroutine that
// copies a caller's Stdin ends when that reader returns; the caller owns
// the reader.
//
// # Needs
//
// Root (runc, FIFOs, flock in /run), runc >= 1.1, the shim binary, and for
// InitBusyboxBundle a static /bin/busybox (Debian's busybox-static).
package minimgr
