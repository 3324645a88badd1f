package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

// Exit codes of minimgr's own failures. Commands whose exit code is a
// process's (run, exec, wait) use exitOwnError, as docker does, so that a
// failure of minimgr is not taken for the container's status 1.
const (
	exitError    = 1
	exitUsage    = 2
	exitOwnError = 125
)

// globals are the flags every command takes, before or after its name.
type globals struct {
	namespace string
	stateDir  string
	runtime   string
	debug     bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.namespace, "namespace", g.namespace, "namespace of the containers")
	fs.StringVar(&g.namespace, "n", g.namespace, "shorthand for --namespace")
	fs.StringVar(&g.stateDir, "state-dir", g.stateDir, "root of minimgr's state")
	fs.StringVar(&g.runtime, "runtime-binary", g.runtime, "shim binary (default: "+minimgr.ShimBinary+" in PATH, else next to minimgr)")
	fs.BoolVar(&g.debug, "debug", g.debug, "shims log at debug level to STATE-DIR/NS/ID/log")
}

// cli is one invocation.
type cli struct {
	g      globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	ctx    context.Context
}

// attachedIO connects a process to minimgr's own stdio: a terminal carries
// stdout and stderr together.
func (c *cli) attachedIO(tty bool) minimgr.IO {
	io := minimgr.IO{Stdin: c.stdin, Stdout: c.stdout}
	if !tty {
		io.Stderr = c.stderr
	}
	return io
}

func (c *cli) manager() (*minimgr.Manager, error) {
	return minimgr.New(minimgr.Config{
		Root:          c.g.stateDir,
		Namespace:     c.g.namespace,
		RuntimeBinary: c.g.runtime,
		Debug:         c.g.debug,
	})
}

// command is one subcommand. run returns the exit code for a success (a
// process's status for run, exec and wait).
type command struct {
	args    string
	summary string
	// ownError is the exit code of minimgr's own failures.
	ownError int
	flags    func(fs *flag.FlagSet) func(c *cli, args []string) (int, error)
}

var commands map[string]*command

func init() {
	commands = map[string]*command{
		"run":     {"[--rm] [-d] [-t] BUNDLE ID [CMD...]", "create and start a container, attached unless -d; exits with its status", exitOwnError, runFlags},
		"create":  {"BUNDLE ID [CMD...]", "create a container (its output goes to a log file in its state dir)", exitError, createFlags},
		"start":   {"ID", "start a created container", exitError, startFlags},
		"exec":    {"[-t] [-d] ID EXEC_ID CMD...", "run a process in a container; exits with its status unless -d", exitOwnError, execFlags},
		"kill":    {"[-s SIG] [--all] [--exec EXEC_ID] ID", "signal a container (default SIGTERM)", exitError, killFlags},
		"wait":    {"ID", "wait for a container to exit; exits with its status", exitOwnError, waitFlags},
		"delete":  {"[--force] ID...", "delete containers and their state", exitError, deleteFlags},
		"list":    {"[--json] [-q]", "list containers (dead: the shim does not answer)", exitError, listFlags},
		"state":   {"ID", "print the state of a container as JSON", exitError, stateFlags},
		"pids":    {"[--json] ID", "list the processes of a container", exitError, pidsFlags},
		"pause":   {"ID", "freeze a container", exitError, pauseFlags},
		"resume":  {"ID", "thaw a container", exitError, resumeFlags},
		"stats":   {"ID", "print a container's metrics as JSON", exitError, statsFlags},
		"events":  {"[--json]", "serve the events socket and print events as shims send them", exitError, eventsFlags},
		"cleanup": {"[--json]", "remove the state of dead shims and stopped containers", exitError, cleanupFlags},
		"bundle":  {"init DIR", "make a busybox bundle in DIR from /bin/busybox (busybox-static)", exitError, bundleFlags},
	}
	commands["ps"] = commands["list"]
	commands["rm"] = commands["delete"]
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: minimgr [GLOBAL FLAGS] COMMAND [FLAGS] [ARGS]\n\n")
	fmt.Fprintf(w, "Drives containerd shims (%s) without containerd.\n\nCommands:\n", minimgr.ShimBinary)
	names := make([]string, 0, len(commands))
	for n := range commands {
		if n != "ps" && n != "rm" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n           %s\n", n, commands[n].args, commands[n].summary)
	}
	fmt.Fprintf(w, "  (ps is list, rm is delete)\n\nGlobal flags:\n")
	fs := flag.NewFlagSet("minimgr", flag.ContinueOnError)
	fs.SetOutput(w)
	g := defaultGlobals()
	g.register(fs)
	fs.PrintDefaults()
}

func defaultGlobals() globals {
	return globals{namespace: minimgr.DefaultNamespace, stateDir: minimgr.DefaultRoot}
}

// run parses the command line, runs the command and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{g: defaultGlobals(), stdin: stdin, stdout: stdout, stderr: stderr}
	top := flag.NewFlagSet("minimgr", flag.ContinueOnError)
	top.SetOutput(stderr)
	top.Usage = func() { usage(stderr) }
	c.g.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if top.NArg() == 0 {
		usage(stderr)
		return exitUsage
	}
	name := top.Arg(0)
	if name == "help" {
		usage(stdout)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "minimgr: unknown command %q (minimgr help)\n", name)
		return exitUsage
	}
	fs := flag.NewFlagSet("minimgr "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: minimgr %s %s\n%s\n\nFlags:\n", name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	c.g.register(fs)
	body := cmd.flags(fs)
	if err := fs.Parse(top.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.ctx = ctx
	code, err := body(c, fs.Args())
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "minimgr %s: %s\n", name, ue.msg)
		fs.Usage()
		return exitUsage
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

// oneLine keeps an error to one line (a shim's stderr may hold several).
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// interruptible returns a context cancelled by SIGINT or SIGTERM, for the
// commands that wait without a container to forward signals to.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, unix.SIGTERM)
}
