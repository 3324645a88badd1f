// Package stdio connects the standard streams of a container process to
// where containerd (or minimgr) wants them: FIFOs (opened with
// containerd/fifo), terminals (containerd/console), binary:// and
// binary-v2:// loggers and file:// paths.
//
// Loggers: a logger gets the output on fds 3 and 4 and says it is ready on
// fd 5, by closing it (binary://) or by writing a byte to it (binary-v2://,
// where a close without the byte is a failed logger). A terminal's output
// is one stream: it is copied into fd 3, and fd 4 reads EOF at once. A
// terminal's logger starts before the process, as a pipe's does.
//
// Pipes: the process gets pipes owned by IoUid/IoGid. Once the runtime has
// started it, the shim closes every end the process uses, stdin's read end
// included, so a process that exits with unread stdin gives the shim's
// writer EPIPE rather than a full pipe that blocks for good; what clients
// still write to the stdin FIFO is then read and dropped.
//
// Ownership: the copy of each stream is owned by the IO. A pipe's output copy
// runs in a goroutine only while the pipe has something to read; an empty
// pipe waits in one epoll instance shared by all the copies in the process
// (the idle poller, itself watched by the Go runtime's poller), so a quiet
// stream costs neither a goroutine nor a buffer. Stdin and terminal copies
// keep a goroutine each. Whoever calls Open calls Close once the process is
// deleted; Close closes every descriptor IO opened and returns within its
// bound whatever the process, its children or the clients do.
//
// Exit and output: Flush, called when the process has exited, returns once
// what the process wrote has been copied (the pipe is empty and nothing is
// in flight), without closing anything: a background child that inherited
// stdout keeps writing and its output keeps flowing until Close, which lets
// it flow DeleteBound more and then cuts it off.
//
// Output FIFOs are held open for reading too, so a process never receives
// SIGPIPE while containerd restarts. Once containerd/fifo has opened an
// output's write side (bounded by the caller's context), the shim keeps a
// descriptor of its own and drops the library's handle: an output holds two
// descriptors for the life of its process, and no more state than an
// os.File. The stdin FIFO needs no wait for its writer (the shim's own kept
// write side is one), so both of its descriptors are opened directly, in
// Started: once the runtime has made the process, as containerd's runc
// shim opens it. CloseStdin returns at once: clients close their side of
// the FIFO only after it has returned.
package stdio
