// Command containerd-shim-mine-v2 is the shim of runtime_type
// "io.containerd.mine.v2".
//
// Actions, as containerd invokes them:
//   - start: reads the bootstrap input on stdin (containerd >= 2.3:
//     BootstrapParams; older: the runtime options or nothing), creates the
//     socket (0600 in a 0700 directory), launches the daemon detached with
//     the socket as fd 3, waits until it serves, and answers with its
//     address (BootstrapResult, or JSON for older containerd).
//   - delete: removes what is left of a container (runc delete --force,
//     rootfs unmount) and answers a DeleteResponse with the saved exit.
//   - no action, launched by start: the daemon. It becomes child subreaper,
//     sets its oom_score_adj to its parent's + 1, logs to the bundle's log
//     FIFO, serves the Task API until Shutdown and exits.
//   - -v prints the version; -info prints RuntimeInfo.
package main
