// Package process runs containers and their exec processes through an OCI
// runtime (runc, via github.com/containerd/go-runc) and keeps their state.
//
// A Container owns its init process and its exec processes. Each process
// moves through typed states (Created, Running, Paused, Stopped, Deleted);
// the table in status.go says which operation may begin in which state, and
// an illegal one returns an error wrapping errdefs.ErrFailedPrecondition (or
// ErrNotFound for a kill of a stopped process).
//
// Locking: no lock is held across a runtime call. The container's mutex
// guards the state of all its processes and is held only to read or
// transition them; a per-process operation mutex serialises the lifecycle
// operations (start, delete) of one process and is never taken by State,
// Kill or Wait, so a slow `runc exec` of one process blocks no one else.
//
// Exits: the Reaper reaps every child of the shim (a child subreaper) and
// implements go-runc's ProcessMonitor, so runc invocations and container
// processes share one loop. A caller takes a Mark before spawning and
// claims the pid afterwards; an exit reaped in between is not lost.
//
// Events: a Container emits its lifecycle events (create, start, exec-added,
// exec-started, exit, delete) through Config.Emit in the order containerd
// requires. Every ordering rule lives in Container.publishExitLocked and its
// helpers: an exit during Start goes out after the start event; the init's
// exit goes out after every exec exit; the OOM check runs, and the exit is
// saved in the bundle (exit.json), before the init's exit goes out.
//
// Bundle files: runtime.json (runtime options, so that `shim delete` finds
// the runtime binary and root), init.pid (written by runc), exit.json and
// runc's log.json, whose last error is kept in the text of runtime errors.
//
// Needs: runc (or a compatible runtime) >= 1.1, root.
package process
