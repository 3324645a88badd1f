// Command containerd-shim-mine-v2 is the shim of runtime_type
// "io.containerd.mine.v2".
//
// Actions, as containerd invokes them:
//   - start: reads the bootstrap input on stdin (containerd >= 2.3:
//     BootstrapParams; older: the runtime options or nothing), creates the
//     socket (0600 in a 0700 directory) where containerd's rule puts it
//     (pkg/shim SocketAddress: BootstrapParams' socket_dir or
//     /run/containerd/s, then the sha256 of "<containerd address>/<namespace>/<id
//     or group>"), launches the daemon detached with the socket as fd 3,
//     waits until it serves, and answers with its address (BootstrapResult
//     version 3 for containerd >= 2.3, the bare address for 1.6 to 2.2).
//   - delete: removes what is left of a container (runc delete --force,
//     rootfs unmount) and answers a DeleteResponse with the saved exit.
//   - no action, launched by start: the daemon. It becomes child subreaper,
//     sets its oom_score_adj to its parent's + 1, logs to the bundle's log
//     FIFO, serves the Task API until Shutdown and exits. It also exits
//     when it has no container and no caller for a while, and when every
//     state directory it serves (its bundle, its containers' bundles) has
//     been removed. At its end it stops accepting; after a Shutdown call
//     it waits for the calls in flight to be answered (up to 10 s) and
//     lets its clients hang up (3 s after the last answer) before it
//     closes their connections. It refuses
//     creates from that Shutdown on. It removes its socket and address
//     file only while the paths still name the files it created: a new
//     shim for the same container may have put its own there.
//   - -v prints the version; -info prints RuntimeInfo.
package main
