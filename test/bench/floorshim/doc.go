// Command floorshim is the floor of the benchmark's memory figures: the
// least a shim must serve to a containerd whose CRI polls it, and nothing
// else. It serves the Task API v3 over ttrpc on one unix socket with two
// methods: Stats, which reads the cgroup of one process with the mine shim's
// own reader (package cgroup) and answers with its encoding, and Wait, which
// blocks until its caller goes away, as containerd holds one Wait per task.
//
// With -container it also runs execs in that container, whose state runc
// keeps under -runc-root: Exec keeps the process spec, Start runs
// `runc exec --detach` through go-runc, the floor reaps the process as the
// child subreaper it has become, Wait answers its exit status and Delete
// forgets it; no stdio, no terminal.
//
// Every other method is unknown to it. It creates no container, watches no
// OOM and publishes no event. It sets the mine daemon's GOGC (25) unless the
// environment sets one, and 10 ms after every call it forces a collection
// that gives the free heap back (debug.FreeOSMemory), which costs more CPU
// than a shim could spend but leaves it holding no garbage and no free heap
// between calls. The benchmark runs it with one processor (GOMAXPROCS=1),
// the fewest span caches and threads.
//
// A shim on the project's stack (Go, ttrpc, the protobuf runtime, the Task
// API's messages, go-runc) cannot serve polled containers, nor run exec
// probes, in less memory than this program does, so the benchmark runs
// copies of it beside the shims, calls them the same way and reports where
// a goal's limit lies below them.
//
//	floorshim -socket PATH -pid PID [-collect=false] [-runc-root DIR -container ID]
//
// With -collect=false it leaves collections to the runtime, to tell what
// the collections after every call are worth.
package main
