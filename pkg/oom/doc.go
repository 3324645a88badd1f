// Package oom reports the OOM kills of the processes in containers' memory
// cgroups.
//
// # Scope
//
// A [Watcher] watches any number of cgroups with one goroutine blocked in
// one epoll set; there is no goroutine per cgroup. It reports kills, not
// memory pressure: a cgroup that hits its limit and reclaims, or that is
// under OOM without a kill (oom_kill_disable), is not reported. It does not
// publish events, read statistics or manage cgroups: its user (the task
// service) turns each [Event] into a TaskOOM.
//
// # Hierarchies
//
// For cgroup v2 the Watcher keeps one inotify instance, made at the first v2
// watch (a v1 host needs none, and a node out of instances fails only the
// v2 watches, not the Watcher) and registered in the epoll set, with an
// IN_MODIFY watch on memory.events of each cgroup. The
// kernel marks that file modified for every counter in it (low, high, max,
// oom, oom_kill), so each wake-up re-reads the file and only an increase of
// oom_kill is reported. oom_kill counts the kills in the cgroup and its
// descendants (unless cgroup2 is mounted with memory_localevents), wherever
// the limit that caused them is set: a pod cgroup's limit kills in the
// container's cgroup count there too. cgroup.events is not watched: the end
// of the container is known to the task service, which calls Check then.
//
// For cgroup v1 the Watcher creates an eventfd per cgroup, registers it with
// "EVENTFD FD_OF_memory.oom_control" written to cgroup.event_control, and adds
// it to the epoll set. The kernel signals it when the cgroup (or an ancestor)
// goes under OOM, and once more when the cgroup is removed. A signal is not a
// kill: the kernel signals before it picks a victim, and may kill none. So
// the Watcher reads the oom_kill counter of memory.oom_control (kernel >=
// 4.13) and reports only its increases. A signal that finds the counter
// unchanged re-reads it without sleeping for 2ms (yielding the processor
// between reads), then every 100us for 10ms (timed by a timerfd in the
// epoll set), then backing off to 64ms, for up to one second (on kernel
// 6.18 the signal came first in most runs, and the counter moved 0.05 to
// 2.6ms later). The first reads after the signal do not wait on a timer:
// the kernel writes "Killed process" to its consoles right after a kill,
// with interrupts off on the killing task's processor, and a timer armed
// there fires only once that is written (about 3ms on a serial console).
// A cgroup spins at most once a second (a kernel may signal again and again
// without killing), and not at all where the daemon has one processor or
// one P. The watch waits for as many kills as signals: two signals read at
// once with one kill counted keep it pending, since no further signal would
// announce a second kill. A signal that finds the cgroup gone (its
// directory missing, or another cgroup at its path) reports nothing and
// closes the eventfd: a cgroup is removed only when it has no process left,
// and the kills before that were counted while it existed (see Check). On kernels without the counter each signal of a
// cgroup that still exists counts as one kill. v1 counts a kill only in the
// victim's own cgroup, while a container's limit kills in the cgroups below
// it too (its init is systemd, or docker runs in it): the counter of a v1
// watch is the sum over the cgroup and those below it, walked only when the
// cgroup has subdirectories.
//
// A kill by the global OOM killer (no memory limit hit) moves the v1 counter
// without an eventfd signal: [Watcher.Check] finds it when the container
// exits.
//
// On a hybrid host (v1 controllers, cgroup2 at /sys/fs/cgroup/unified) the
// memory controller is in a v1 hierarchy. [Watcher.Add] and [ResolveCgroup]
// pick the hierarchy that holds the memory controller for the process: its
// v1 cgroup with the memory controller in /proc/PID/cgroup if there is one,
// its 0:: cgroup otherwise, mapped to a directory through the mounts listed
// in /proc/self/mountinfo. No mount point is assumed.
//
// # Counting
//
// notify is called once per unit of increase of the counter, after the
// baseline read by Add: a group kill (memory.oom.group) of three processes
// is three calls. The last value seen is kept per watched cgroup under a
// per-cgroup lock shared by the loop and Check, so a kill is reported once
// even when they race. A counter that goes down (a new cgroup took the path)
// becomes the new baseline.
//
// # Ordering
//
// The kernel increments oom_kill before it sends SIGKILL to the victim. The
// task service calls [Watcher.Check] when a container's init or one of its
// execs has exited and before it queues the TaskExit: Check re-reads the
// counter and calls notify for any kill not reported yet before it returns,
// and waits for a report the loop has in progress for that cgroup. So the
// TaskOOM always precedes the TaskExit it caused. This rule lives in Check;
// the task service only calls it at that point.
//
// # Cgroups removed before they are read
//
// A cgroup can go with its counter before anyone read it: systemd removes a
// container's scope as soon as its last process has exited, and the kernel
// notifies a change of memory.events at most once per 10 ms, so the
// notification of a kill can come after the removal, and the init's exit
// can reach Check after it too. For a cgroup watched with Add (which knows
// the container's init), Check then looks in the kernel log (/dev/kmsg) for
// the OOM killer's record of that PID ("Killed process PID (comm)", printed
// for every victim, before the victim can exit) written since Add, and
// reports one kill if it is there and none was reported for the cgroup.
// Nothing else is taken as a kill: not a SIGKILL, not an exit status 137.
// A victim other than the init in a cgroup removed unread is not seen, nor
// is a kill whose record was overwritten before Check (the log is read only
// then, and at Add). The log is read from where it ended when the Watcher
// started, only at Add and in this case, and only by a process in the
// initial PID namespace (where the log's PIDs are its own).
//
// # Ownership
//
// The Watcher owns its epoll fd, its inotify fd, its wake-up eventfd, its
// timerfd, its /dev/kmsg fd (when it could open it) and one eventfd per v1
// cgroup. The loop goroutine closes all of them when it ends;
// [Watcher.Remove] closes the eventfd of a v1 cgroup and the inotify watch
// of a v2 cgroup (once no other id watches the same file). The Watcher never
// creates, changes or removes a cgroup, and keeps no fd of one: counters are
// read by path.
//
// [Watcher.Close] wakes the loop through the wake-up eventfd (the loop never
// waits without it in the epoll set), waits until it has ended and closed
// every fd, and returns the loop's error joined with the errors of closing.
// It is idempotent; Add and AddPath return [ErrClosed] afterwards, Remove an
// error wrapping errdefs.ErrNotFound and Check does nothing.
//
// # Concurrency
//
// Add, AddPath, Check and Remove may be called from any goroutine. Add and
// AddPath do their file work (baseline read, eventfd registration) in the
// caller's goroutine, then arm the watch there under the Watcher's lock
// (epoll_ctl or inotify_add_watch): no work is handed to the loop.
//
// notify runs in the loop goroutine, or in the goroutine of Check, never
// with the Watcher's lock held, and one call at a time per watched id. It
// should be quick (queue the event): the loop waits for it. notify may call
// Add, AddPath and Remove. It must not call Check (it would wait for
// itself) or Close (Close waits for the loop). Remove does not wait for a
// reading of id that the loop or a Check began before it: that reading may
// still call notify after Remove returns. A reading that begins after Remove
// has returned reports nothing.
//
// # Kernel features
//
// Linux with epoll, eventfd and inotify. cgroup v2: the memory controller
// enabled for the cgroup (memory.events with oom_kill, kernel >= 4.13).
// cgroup v1: the memory controller with cgroup.event_control (removed from
// kernels built without CONFIG_MEMCG_V1); oom_kill in memory.oom_control
// needs kernel >= 4.13. Writing cgroup.event_control needs read access to
// memory.oom_control; reading the counters needs read access to the files.
// Reading /dev/kmsg needs CAP_SYSLOG where kernel.dmesg_restrict is set;
// without it the Watcher works, but does not see the kills of cgroups
// removed before they were read.
package oom
