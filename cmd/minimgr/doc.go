// Command minimgr runs containers from OCI bundles through a containerd
// shim v2 runtime (containerd-shim-mine-v2), without containerd and without
// a daemon of its own: it spawns one shim per container, finds it again
// from the state directory in any later invocation, and talks the Task API
// v3 to it over ttrpc. Commands follow docker's conventions where they
// apply (`minimgr --help` lists them all):
//
//	minimgr [--namespace NS] [--state-dir DIR] [--runtime-binary PATH] [--debug] COMMAND ...
//
//	run [OPTIONS] BUNDLE ID [CMD...]    create, start, attach (or -d), wait; exits with the status
//	create [OPTIONS] BUNDLE ID [CMD...] create; start [-a] ID starts it
//	exec [-d] [-t] [-i] [--exec-id E] ID CMD...
//	attach ID, logs [-f] [--timestamps] [--tail N] ID
//	kill, stop [-t N], restart, wait [--exec E], delete [-f] (rm)
//	list (ps, ls), inspect [--format T], pids (top), stats, update
//	pause, resume, events, cleanup, bundle init DIR, version
//
// Flags go anywhere, short ones combine (-dit, `delete c -f`); the flags of
// run, create and exec end where the process's command line starts (after
// BUNDLE ID, or ID). Parsing is spf13/pflag's. Global flags may also follow
// the command's name. The defaults are namespace "default", state
// directory /run/minimgr and the shim next to minimgr's own executable,
// else in PATH.
//
// Output: every process's output goes to its log in the state directory,
// written by minimgr itself run as the shim's binary:// logger (`minimgr
// minimgr-log FILE`), so that it never blocks on a client: without a
// terminal one JSON record per line with the stream and the time, as
// docker's json-file; with a terminal its raw output.
// Attached clients follow the log and write to their own stdout and
// stderr; one whose reader went away (EPIPE) stops writing and goes on
// waiting. Stdin goes through a FIFO the shim holds open, so clients may
// detach (ctrl-p ctrl-q, --detach-keys) and attach again.
//
// Terminals: -t needs a terminal on stdin (refused otherwise, as docker
// refuses it); minimgr's own terminal is put in raw mode, its size given at
// create and followed (SIGWINCH to ResizePty). SIGINT, SIGTERM, SIGHUP,
// SIGQUIT, SIGUSR1, SIGUSR2 and SIGCONT are forwarded to the process.
//
// run --rm starts `minimgr remove-on-exit` in a session of its own before
// the process starts: it waits for the container's exit and deletes it,
// unless the attached client did (the client ends it then). A client that
// is killed, or run -d --rm, leaves the removal to it.
//
// Exit codes: run, exec, wait and attach exit with the process's status,
// with 125 when minimgr itself fails, 126 when the command cannot be
// executed and 127 when it is not found; other commands exit 1 on failure;
// a bad command line exits 2. Errors are one line and carry their errdefs
// class ("not found", "invalid argument", ...).
//
// The library behind the commands is package pkg/minimgr; see it for the
// state directory's layout and how dead shims are handled. Needs root and
// runc.
package main
