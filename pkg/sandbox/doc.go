// Package sandbox serves containerd's Sandbox API (runtime/sandbox/v1) for
// pods without a pause container: CRI's `sandboxer = "shim"` mode. Its
// messages are declared in api.proto, wire-compatible with containerd's,
// so that the shim links no gRPC (containerd's Go package of the API holds
// gRPC stubs).
//
// A pod's namespaces are held by a holder process, the shim's own binary
// re-executed in a small mode (see RunHolderIfAsked): it is cloned into new
// UTS, IPC and PID namespaces (each unless the pod uses the host's), joins
// the network namespace CRI made, sets the pod's hostname and sysctls, and
// then only reaps the orphans of the pod's PID namespace, as PID 1. CRI
// builds the namespace paths of the pod's containers from the holder's pid
// (/proc/<pid>/ns/*), so the holder must live as long as the pod is ready;
// its death makes the sandbox NOTREADY and ends WaitSandbox.
//
// Ownership: the Service owns the holder (spawned from a goroutine locked to
// its OS thread, with SIGKILL as parent-death signal; its exit is claimed
// from the shim's process.Reaper with a Mark taken before the spawn), the
// pod's files in the sandbox bundle (hostname, hosts, resolv.conf) and the
// pod's /dev/shm tmpfs mounted there. ShutdownSandbox (or Close) kills the
// holder, unmounts the tmpfs and removes the holder's cgroup. Member
// containers get those files and the /dev/shm bind-mounted at Create, by
// PrepareMember editing their config.json before the runtime sees it.
//
// The shim stays up while the sandbox lives: Task.Shutdown, which
// containerd sends after every member's Delete, is ignored (the task
// service's KeepAlive is Alive). After ShutdownSandbox the shim exits once
// no member remains; as after the Task API's Shutdown, it first answers
// the calls in flight (up to 10 s) and lets containerd hang up (for up to
// 3 s after the last answer), so that no reply is cut. A
// sandbox created but never started, whose caller gave it up (CRI rolls
// back a failed RunPodSandbox, its network namespace included, and calls
// no more), is Abandoned: the shim then exits as an orphan does. A pod
// with a user namespace of its own (hostUsers: false) is refused at
// create: CRI would have its containers join the holder's, the host's.
//
// Needs: root; a kernel with PID, UTS, IPC and network namespaces; cgroup v1
// or v2 for the holder's placement under the pod's cgroup parent
// (cgroupfs-style parents only).
package sandbox
