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
// which keeps the shims of different roots apart. Each shim gets a socket
// directory of its own, ROOT/s/RANDOM (or /run/minimgr/s/RANDOM when the
// path would not fit the kernel's limit), so that a shim that ends late
// never removes the socket of the next shim of the same ID.
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
//   - io/: per process (init, exec-ID) its log and, when it has one, its
//     stdin FIFO. The log is written by the Manager's LoggerBinary,
//     started by the shim as a binary:// logger (RunLogger). Without a
//     terminal it holds one JSON Record per line, stdout and stderr apart,
//     with the time, and a last EOF record; with a terminal, its raw output
//     (init.log.tty), beside init.log.tty.logging, which the logger renames
//     init.log.tty.end once that output has ended.
//     Neither ever blocks the process. Attached callers follow the log
//     (IO);
//   - lock: a flock held while the directory is created and while it is
//     deleted, so that concurrent minimgr processes never remove a
//     container that another is creating. It is never waited for: a busy
//     container gives ErrBusy. A directory is moved aside before its
//     removal, and a lock taken on a lock file that was moved away meanwhile
//     counts as not found.
//
// The shim adds runtime.json, address, init.pid, exit.json and log.json;
// runc keeps its own state under /run/containerd/runc/NS/ID unless the
// runc Options say otherwise.
//
// # Reconnecting and dead shims
//
// Manager.Open dials the recorded address and asks Connect, within 10 s
// (Create does the same for the shim it just started: `shim start` answers
// before its daemon serves, and a loaded machine can delay either by
// seconds). A shim that refuses or does not answer is dead: errors wrap ErrShimDead
// (errdefs.ErrUnavailable). Manager.Wait and Manager.Delete clean a dead
// shim up with `SHIM -namespace NS -id ID -bundle STATEDIR delete`, whose
// DeleteResponse holds the saved exit status; that status is recorded and
// returned, and TaskExit and TaskDelete are forwarded to the events socket
// as containerd would (best effort). Manager.List reports such a shim as
// "dead"; Manager.Cleanup removes dead and stopped containers.
//
// # Teardown
//
// Container.Delete: Delete, Shutdown (3 s), then the shim process is given
// 25 s to end by itself (to answer the calls of other clients still in
// flight and to send its last events), else killed, at once when it did
// not answer the Shutdown (through a pidfd, after its command line was
// checked); then `shim delete` (harmless when all is gone already, as after
// every containerd teardown), removal of its socket directory and of the state
// directory. No shim outlives Delete, so an ID can be taken again at once.
//
// A shim that runs but does not answer, or a container whose processes
// outlived their shim, is not removed by Delete without force
// (ErrFailedPrecondition); with force both are killed. Cleanup also ends
// the shims of its root and namespace whose state directory is gone.
//
// # Events
//
// EventsServer serves containerd.services.events.ttrpc.v1.Events/Forward on
// ROOT/events.sock and hands each event, decoded, to a callback, one at a
// time, in the order each shim sent them. A server replaces a stale socket,
// and removes its own at its end, under a flock of ROOT/events.sock.lock:
// two servers that start together over a stale socket never both listen,
// and none removes a socket that another has bound since.
//
// # Ownership
//
// A Container is a connection, not the container: Close leaves the
// container and its shim running. The attachment of a process (the stdin
// FIFO's write end, the goroutine that follows the log) belongs to the
// handle that created or attached it and ends on WaitIO's bound, on
// Delete, or at the logger's EOF record. The goroutine that copies a
// caller's Stdin ends when that reader returns; the caller owns the reader.
//
// # Images
//
// InitImageBundle unpacks an image from an OCI layout directory or an OCI
// or docker archive with containerd's own packages (core/images/archive
// imports an archive into a local content store, core/images picks the
// manifest for this platform, pkg/archive applies the layers with their
// whiteouts) and writes a config.json from the image's config. Create
// with CreateOpts.Image does that into ROOT/bundles/NAMESPACE/ID, which
// goes with the container.
//
// # Needs
//
// Root (runc, FIFOs, flock in /run), runc >= 1.1, the shim binary, and for
// InitBusyboxBundle a static /bin/busybox (Debian's busybox-static).
package minimgr
