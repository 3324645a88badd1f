package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/containerd/log"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

// Exit codes of minimgr's own failures. Commands whose exit code is a
// process's (run, exec, wait, start -a) use docker's codes, so that a
// failure of minimgr is not taken for the container's status 1: 125 for
// minimgr's own error, 126 for a command that cannot be run, 127 for a
// command that is not found.
const (
	exitError         = 1
	exitUsage         = 2
	exitOwnError      = 125
	exitCannotExecute = 126
	exitNotFound      = 127
)

// Version is minimgr's version, set at link time (-X main.Version=...).
var Version = ""

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// globals are the flags every command takes, before or after its name.
type globals struct {
	namespace string
	stateDir  string
	runtime   string
	debug     bool
}

func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVarP(&g.namespace, "namespace", "n", g.namespace, "namespace of the containers")
	fs.StringVar(&g.stateDir, "state-dir", g.stateDir, "root of minimgr's state")
	fs.StringVar(&g.runtime, "runtime-binary", g.runtime, "shim binary (default: "+minimgr.ShimBinary+" next to minimgr, else in PATH)")
	fs.BoolVar(&g.debug, "debug", g.debug, "shims log at debug level to STATE-DIR/NS/ID/log")
}

// args gives the global flags back as arguments, for a minimgr started by
// this one, which runs in another directory: relative paths are made
// absolute. (A runtime named without a slash is looked up in PATH, which
// the child inherits.)
func (g *globals) args() []string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	a := []string{"--namespace", g.namespace, "--state-dir", abs(g.stateDir)}
	if g.runtime != "" {
		rt := g.runtime
		if strings.Contains(rt, "/") {
			rt = abs(rt)
		}
		a = append(a, "--runtime-binary", rt)
	}
	if g.debug {
		a = append(a, "--debug")
	}
	return a
}

// cli is one invocation.
type cli struct {
	g      globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	ctx    context.Context
}

func (c *cli) manager() (*minimgr.Manager, error) {
	rt := c.g.runtime
	if rt == "" {
		var err error
		if rt, err = findRuntime(); err != nil {
			return nil, err
		}
	}
	return minimgr.New(minimgr.Config{
		Root:          c.g.stateDir,
		Namespace:     c.g.namespace,
		RuntimeBinary: rt,
		Debug:         c.g.debug,
	})
}

// findRuntime looks for the shim next to minimgr (the binaries travel
// together), then in PATH.
func findRuntime() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := dirOf(self) + "/" + minimgr.ShimBinary
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return minimgr.FindRuntime(minimgr.ShimBinary)
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

// command is one subcommand. run returns the exit code for a success (a
// process's status for run, exec and wait).
type command struct {
	args    string
	summary string
	// ownError is the exit code of minimgr's own failures.
	ownError int
	// positional is how many arguments come before the process's command
	// line (run: BUNDLE ID, exec: ID): flags are read up to there and the
	// rest is the command, verbatim. -1: flags anywhere.
	positional int
	// noRoot: the command needs no root.
	noRoot bool
	hidden bool
	flags  func(fs *pflag.FlagSet) func(c *cli, args []string) (int, error)
}

var commands map[string]*command

// aliases of commands.
var aliases = map[string]string{"ps": "list", "ls": "list", "rm": "delete", "top": "pids"}

func init() {
	commands = map[string]*command{
		"run":     {"[OPTIONS] BUNDLE ID [CMD...] | --image PATH[:TAG] ID [CMD...]", "create and start a container, attached unless -d; exits with its status", exitOwnError, 2, false, false, runFlags},
		"create":  {"[OPTIONS] BUNDLE ID [CMD...] | --image PATH[:TAG] ID [CMD...]", "create a container (its output goes to its log)", exitError, 2, false, false, createFlags},
		"start":   {"[-a] ID", "start a created container (-a: attached, exits with its status)", exitError, -1, false, false, startFlags},
		"exec":    {"[-d] [-t] [-i] [--exec-id EXEC_ID] ID CMD...", "run a process in a container; exits with its status unless -d", exitOwnError, 1, false, false, execFlags},
		"attach":  {"[--detach-keys KEYS] ID", "attach to a container's stdin and output (detach: ctrl-p,ctrl-q)", exitOwnError, -1, false, false, attachFlags},
		"logs":    {"[-f] [--timestamps] [--tail N] [--exec EXEC_ID] ID", "print a container's output, stdout and stderr apart", exitError, -1, false, false, logsFlags},
		"kill":    {"[-s SIG] [--all] [--exec EXEC_ID] ID", "signal a container (default SIGTERM)", exitError, -1, false, false, killFlags},
		"stop":    {"[-t SECONDS] [-s SIG] ID...", "stop containers: the stop signal, then SIGKILL after -t (default 10)", exitError, -1, false, false, stopFlags},
		"restart": {"[-t SECONDS] ID...", "stop containers and start them again, in the same state dir", exitError, -1, false, false, restartFlags},
		"wait":    {"[--exec EXEC_ID] ID", "wait for a container (or exec) to exit; prints and exits with its status", exitOwnError, -1, false, false, waitFlags},
		"delete":  {"[-f] ID...", "delete containers and their state (-f: kill them first)", exitError, -1, false, false, deleteFlags},
		"list":    {"[--json] [-q]", "list containers: created time, status and command (dead: the shim does not answer)", exitError, -1, false, false, listFlags},
		"inspect": {"[--format TEMPLATE] ID...", "print what minimgr knows of containers as JSON, or through a Go template", exitError, -1, false, false, inspectFlags},
		"state":   {"ID", "print the state of a container as JSON", exitError, -1, false, true, stateFlags},
		"pids":    {"[--json] ID", "list the processes of a container with their commands", exitError, -1, false, false, pidsFlags},
		"pause":   {"ID", "freeze a container", exitError, -1, false, false, pauseFlags},
		"resume":  {"ID", "thaw a container", exitError, -1, false, false, resumeFlags},
		"update":  {"[--memory M] [--cpus N] [--pids-limit N] ID", "change the resources of a running container", exitError, -1, false, false, updateFlags},
		"stats":   {"[--no-stream] [--json] ID...", "print containers' CPU, memory and pids as a table", exitError, -1, false, false, statsFlags},
		"events":  {"[--json]", "serve the events socket and print events as shims send them", exitError, -1, false, false, eventsFlags},
		"cleanup": {"[--json]", "remove dead shims, stopped containers, and end shims whose state is gone", exitError, -1, false, false, cleanupFlags},
		"bundle":  {"init [--image PATH[:TAG]] DIR", "make a bundle in DIR: busybox from /bin/busybox (busybox-static), or an image unpacked", exitError, -1, true, false, bundleFlags},
		"version": {"", "print minimgr's version", exitError, -1, true, false, versionFlags},
		// The remover of run --rm: waits for the container to exit, then
		// deletes it, whatever became of the client that started it.
		removerCommand: {"[--client-pid PID] [--start-settle DURATION] ID", "delete a container once it exits", exitError, -1, false, true, removerFlags},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: minimgr [GLOBAL FLAGS] COMMAND [FLAGS] [ARGS]\n\n")
	fmt.Fprintf(w, "Runs containers through containerd shims (%s), without a daemon.\n\nCommands:\n", minimgr.ShimBinary)
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n           %s\n", n, commands[n].args, commands[n].summary)
	}
	fmt.Fprintf(w, "  (ps and ls are list, rm is delete, top is pids)\n\nGlobal flags (anywhere):\n")
	fs := pflag.NewFlagSet("minimgr", pflag.ContinueOnError)
	g := defaultGlobals()
	g.register(fs)
	fmt.Fprint(w, fs.FlagUsages())
	fmt.Fprintf(w, "\nExit codes of run, exec and wait: the process's status; 125 minimgr failed,\n126 the command cannot be run, 127 the command was not found.\n")
}

func defaultGlobals() globals {
	return globals{namespace: minimgr.DefaultNamespace, stateDir: minimgr.DefaultRoot}
}

// parseArgs parses flags anywhere up to n positional arguments; what
// follows the n-th is returned verbatim (a command line). n < 0: flags
// anywhere.
func parseArgs(fs *pflag.FlagSet, args []string, n int) ([]string, error) {
	if n < 0 {
		fs.SetInterspersed(true)
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		return fs.Args(), nil
	}
	fs.SetInterspersed(false)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		if len(pos) == n {
			return append(pos, rest[1:]...), nil
		}
		args = rest[1:]
	}
}

// run parses the command line, runs the command and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{g: defaultGlobals(), stdin: stdin, stdout: stdout, stderr: stderr}
	top := pflag.NewFlagSet("minimgr", pflag.ContinueOnError)
	top.SetOutput(stderr)
	top.Usage = func() {}
	c.g.register(top)
	help := top.BoolP("help", "h", false, "print this help")
	showVersion := top.BoolP("version", "v", false, "print the version")
	top.SetInterspersed(false)
	if err := top.Parse(args); err != nil {
		fmt.Fprintf(stderr, "minimgr: %v (minimgr --help)\n", err)
		return exitUsage
	}
	switch {
	case *help:
		usage(stdout)
		return 0
	case *showVersion:
		fmt.Fprintf(stdout, "minimgr version %s\n", version())
		return 0
	case top.NArg() == 0:
		usage(stderr)
		return exitUsage
	}
	name := top.Arg(0)
	if name == "help" {
		if top.NArg() > 1 {
			return run(append(append(c.g.args(), top.Args()[1:]...), "--help"), stdin, stdout, stderr)
		}
		usage(stdout)
		return 0
	}
	if a, ok := aliases[name]; ok {
		name = a
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "minimgr: unknown command %q (minimgr --help)\n", name)
		return exitUsage
	}
	fs := pflag.NewFlagSet("minimgr "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	printUsage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: minimgr %s %s\n%s\n\nFlags:\n%s", name, cmd.args, cmd.summary, fs.FlagUsages())
	}
	c.g.register(fs)
	body := cmd.flags(fs)
	fs.BoolP("help", "h", false, "print this help")
	rest, err := parseArgs(fs, top.Args()[1:], cmd.positional)
	if errors.Is(err, pflag.ErrHelp) || (err == nil && fs.Lookup("help").Changed) {
		printUsage(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "minimgr %s: %v\n", name, err)
		printUsage(stderr)
		return exitUsage
	}
	// The libraries' logs (ttrpc's about a reply to a wait that was given
	// up, say) are for --debug only: minimgr says what went wrong itself.
	if !c.g.debug {
		_ = log.SetLevel("panic")
	}
	if !cmd.noRoot && os.Geteuid() != 0 {
		fmt.Fprintf(stderr, "minimgr %s: needs root (it runs runc and keeps its state in %s): run it as root, e.g. with sudo\n", name, c.g.stateDir)
		return cmd.ownError
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.ctx = ctx
	code, err := body(c, rest)
	var ue usageError
	var ce codeError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "minimgr %s: %s\n", name, ue.msg)
		printUsage(stderr)
		return exitUsage
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "minimgr %s: %s\n", name, oneLine(err))
		return ce.code
	case err != nil:
		fmt.Fprintf(stderr, "minimgr %s: %s\n", name, oneLine(err))
		return cmd.ownError
	}
	return code
}

// usageError is a command line that does not fit the command.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// codeError is an error with its own exit code (126, 127).
type codeError struct {
	err  error
	code int
}

func (e codeError) Error() string { return e.err.Error() }
func (e codeError) Unwrap() error { return e.err }

// oneLine keeps an error to one line (a shim's stderr may hold several).
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// interruptible returns a context cancelled by SIGINT or SIGTERM, for the
// commands that wait without a container to forward signals to.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, unix.SIGTERM)
}
