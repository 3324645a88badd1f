// Command minimgr runs containers from OCI bundles through a containerd
// shim v2 runtime (containerd-shim-mine-v2), without containerd: it spawns
// one shim per container, finds it again from the state directory in any
// later invocation, and talks the Task API v3 to it over ttrpc. Commands
// follow ctr's and crictl's conventions:
//
//	minimgr [--namespace NS] [--state-dir DIR] [--runtime-binary PATH] [--debug] COMMAND ...
//
//	run [--rm] [-d] [-t] BUNDLE ID [CMD...]   create, start, attach, wait; exits with the status
//	create BUNDLE ID [CMD...]                 create (output to STATE/io/init.log)
//	start ID                                  start a created container
//	exec [-t] [-d] ID EXEC_ID CMD...          run a process in it; exits with its status
//	kill [-s SIG] [--all] [--exec ID] ID      signal (default SIGTERM)
//	wait ID                                   exits with the container's status
//	delete [--force] ID...                    delete container and state (alias rm)
//	list [--json] [-q]                        ID, PID, STATUS, BUNDLE (alias ps)
//	state ID                                  JSON
//	pids [--json] ID, pause ID, resume ID, stats ID
//	events [--json]                           serve the events socket, print events
//	cleanup [--json]                          remove dead shims and stopped containers
//	bundle init DIR                           busybox bundle from /bin/busybox
//
// Global flags may also follow the command's name. The defaults are
// namespace "default", state directory /run/minimgr and the shim found in
// PATH, else next to minimgr's own executable.
//
// Attached processes (run and exec without -d) get FIFOs in the state
// directory; with -t they get a terminal, minimgr's own terminal is put in
// raw mode and window size changes are sent as ResizePty. SIGINT, SIGTERM,
// SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGCONT are forwarded to the
// process. Detached processes (-d, create) write stdout and stderr to a log
// file in the state directory; a detached terminal is not supported yet.
//
// Exit codes: run, exec and wait exit with the process's status, and with
// 125 when minimgr itself fails; other commands exit 1 on failure; a bad
// command line exits 2. Errors are one line and carry their errdefs class
// ("not found", "invalid argument", ...).
//
// The library behind the commands is package pkg/minimgr; see it for the
// state directory's layout and how dead shims are handled. Needs root and
// runc.
package main
