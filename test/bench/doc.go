// Package bench measures the mine shim (runtime io.containerd.mine.v2)
// against containerd's own runc shim (io.containerd.runc.v2) under the same
// containerd, in the same run, interleaved: every measurement alternates
// between the two shims sample by sample (the one that goes first alternates
// too), and reports the median, the 90th percentile and the ratio of the
// medians mine / runc-v2 (below 1 is better for mine).
//
// # What it measures
//
//   - Lifecycle: the wall time of `ctr run --rm IMAGE ID true` with each
//     shim, and of `runc run` of a bundle of the same image without
//     containerd or any shim (the floor). Each round runs all three, in a
//     rotating order; a shim's overhead is its run minus the raw runc run of
//     the same round.
//   - Idle memory: with 1, 10 and 50 `sleep` containers (one shim each, as
//     ctr runs them), Rss, Pss, Pss_Anon and Pss_File of every shim daemon
//     from /proc/PID/smaps_rollup, and VmRSS and the thread count from
//     /proc/PID/status, after the containers have been idle for a while and
//     after sync(2).
//   - Kubernetes: memory of both runtimes' shims while containerd's Metrics
//     of every container is called once a second (as its CRI does), read
//     after 130 s of polling, with 10 and 50 containers, and the shims' CPU
//     meanwhile; memory after 1000 (or more) exec probes of `true` into one
//     container; one group shim (io.containerd.runc.v2.group) with 1, 10
//     and 50 containers, with mine's goroutines counted from its stacks
//     file; and the `start` action alone, as containerd >= 2.3 runs it
//     (BootstrapParams on stdin, no container). Report.Goals checks them,
//     with the lifecycle and the OOM latency, against the project's goals.
//   - The floor: beside the shims in the polling, exec probe and group
//     steps, copies of command floorshim, a Task server that serves only
//     Stats and Wait and holds nothing between calls, polled and read the
//     same way. No shim on the project's stack goes below it; the goal
//     table shows its figure against runc-v2's, and which limits lie
//     below it.
//   - Bursts: 50 execs of `true` into one running container released at
//     once, and 50 containers whose tasks are created and started at once;
//     wall time of the burst, and the CPU the shim daemons used per
//     operation (their own threads, from schedstat, and the children they
//     reaped, runc above all).
//   - Event latency: a container limited to 16 MiB runs an allocator (busybox
//     dd with a 64 MiB buffer); the time from the kernel's OOM kill to
//     /tasks/oom and to /tasks/exit arriving at a subscriber of containerd's
//     event stream. The kill is timed by the kernel's oom:mark_victim
//     tracepoint in a private tracefs instance (CLOCK_MONOTONIC), or, where
//     tracefs is missing, by when the cgroup's oom_kill counter was seen to
//     move; a probe also times the counter's move after the kill. And an exec of `true` into a running container: the time from
//     the return of its Start call (and from the call) to /tasks/exit.
//   - Pods through CRI (a second private containerd with CRI, host-network
//     pods): the time of RunPodSandbox + CreateContainer + StartContainer of
//     a pod with one container, and the PSS and RSS per idle pod of every
//     process the pod costs besides its container (the shim, and the pause
//     container or mine's namespace holder), for three runtime handlers:
//     mine serving the Sandbox API (sandboxer "shim", no pause container),
//     mine with a pause container, and runc-v2 with one.
//   - A trace of the lifecycle (when perf works): the scheduler's exec, exit
//     and fork tracepoints of containerd's descendants and ctr, giving the
//     time of every shim and runc invocation within `ctr run`.
//
// # How it runs
//
// Open starts a private containerd (root, state and sockets in a directory
// under /run; CRI and NRI disabled; default log level, so shims run without
// -debug) with both shims first on its PATH, imports a busybox image built by
// package imagebuild, and unpacks the same image as the raw bundle's rootfs.
// Both shim binaries are private copies, so that no other process on the
// machine shares their pages (PSS stays the benchmark's own), flushed with
// sync(2) and dropped from the page cache before the first run, so that
// both start from the same state. Containers live in namespace mine-bench;
// their IDs carry a random tag, since runc keeps state under
// /run/containerd/runc/mine-bench, shared with any other containerd.
//
// Run measures everything and returns a Report (JSON, a Markdown ratio
// table, and PlotMemory's SVG); command minebench drives it for
// hack/bench.sh and `make bench`. The Go benchmarks of the package measure the
// same figures with b.ReportMetric (`go test -run '^$' -bench .
// ./test/bench/`); they are never part of the normal test run, which only
// runs the package's fast unit tests.
//
// # What it needs
//
// Root, runc in PATH, a static busybox at /bin/busybox, containerd, ctr and
// containerd-shim-runc-v2 of one containerd release (MINE_CONTAINERD_BIN, or
// PATH), and go to build the mine shim unless MINE_SHIM names one
// (MINE_RUNC_SHIM overrides the runc shim). Without them Open returns an
// error wrapping ErrSkip, and the benchmarks skip. The OOM figure needs a
// memory cgroup (v1 or v2) and a kernel >= 4.13; the lifecycle trace needs
// perf (Debian linux-perf) and is skipped, with the reason in the report,
// without it.
//
// The machine should be idle: the figures of a shared two-core machine move
// with its load, which the report records before and after.
package bench
