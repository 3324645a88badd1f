// Package stdio connects the standard streams of a container process to
// where containerd (or minimgr) wants them.
//
// The process gets pipes (go-runc's pipe I/O, owned by IoUid/IoGid); IO copies
// between those pipes and the targets named in Config: FIFOs that containerd
// created (opened with containerd/fifo), with more target kinds to come
// (binary:// loggers, file:// paths, terminals).
//
// Ownership: Open starts one goroutine per stream; they are owned by the IO
// and end when the process side of the pipe closes, when Drain's bound
// passes, or on Close. Whoever calls Open calls Close once the process is
// gone; Close closes every descriptor IO opened.
//
// Output FIFOs are held open for reading too, so a process never receives
// SIGPIPE while containerd restarts. DrainBound bounds how long output may
// keep flowing after the process has exited, for background children that
// inherited stdout.
package stdio
