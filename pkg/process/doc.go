// Package process runs containers and their exec processes through an OCI
// runtime (runc, via github.com/containerd/go-runc) and keeps their state.
//
// Layout: container.go holds the Container and the registry of its
// processes; init.go the container's own lifecycle (create, start, restore,
// checkpoint, pause, resume, update, delete); exec.go exec processes;
// proc.go what every process has (its exit pipeline, kill, wait, state,
// stdin, terminal); sequencer.go the ordering of events; runtime.go the one
// adapter around go-runc; stats.go metrics and pids; bundle.go the bundle's
// files; reaper.go the reaper.
//
// States: each process moves through typed states (Created, Running,
// Pausing, Paused, Stopped, Deleted); the table in status.go says which
// operation may begin in which state, and an illegal one returns an error
// wrapping errdefs.ErrFailedPrecondition (or ErrNotFound for a kill of a
// stopped process). Stats answers from the create until the delete, after
// the init's exit too: CRI reads the kill counter then.
//
// Locking: no lock is held across a runtime call, an I/O close or a wait.
// The container's mutex guards the state of all its processes and is held
// only to read or transition them and to publish events; a per-process
// operation mutex serialises the lifecycle operations of one process and is
// never taken by State, Kill or Wait, so a slow `runc exec` blocks no one
// else.
//
// Exits: the Reaper reaps every child of the shim (a child subreaper) and
// implements go-runc's ProcessMonitor, so runc invocations and container
// processes share one loop. A caller takes a Mark before spawning and
// claims the pid afterwards; an exit reaped in between is not lost. Each
// process has one exit pipeline (Container.exitPipeline): marked exited at
// once, its output flushed outside every lock (bounded), then its exit is
// handed to the sequencer. Signals to exec processes go through a pidfd
// taken while the exit was unreaped, so none reaches a recycled pid.
//
// Signals: the runtime answers start (and exec) once its init was told to
// exec the program, a moment before it has. A catchable signal for a
// process so started waits, until a second after its start at most, until
// the process runs its program (its /proc/PID/exe no longer reads as the
// runtime's init did at create): sent before, it would reach the runtime's
// init, and runc's exits 2 on SIGTERM as a namespace's PID 1, whatever the
// program's handler would have done. (A Kill while the start is still in
// flight reaches the runtime's init, as it would without this.)
//
// Events: a Container emits its lifecycle events through Config.Emit in the
// order containerd requires. Every ordering rule of exits lives in the
// sequencer (see its doc comment): exit after start, exec exits before the
// init's, the OOM check before every exit, exit.json before the init's, and
// the init's exit after the resumed event of a resume it came during.
//
// Errors of the runtime are classified once, in the adapter, from the
// runtime's state after the failure, never from its text.
//
// Bundle files: runtime.json (runtime options, so that `shim delete` finds
// the runtime binary and root), init.pid (written by runc), exit.json and
// runc's log.json, whose last error is kept in the text of runtime errors.
//
// Needs: runc (or a compatible runtime) >= 1.1, root; pidfd_open (Linux
// 5.3) is used where the kernel has it.
package process
