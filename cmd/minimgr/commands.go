package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

// outputDrain bounds how long minimgr copies output after a process exited.
const outputDrain = 3 * time.Second

// defaultDetachKeys end an attachment, as docker's do.
const defaultDetachKeys = "ctrl-p,ctrl-q"

// procFlags are the flags of a process: terminal, stdin, detaching.
type procFlags struct {
	tty, interactive, detach bool
	detachKeys               string
}

func (p *procFlags) register(fs *pflag.FlagSet) {
	fs.BoolVarP(&p.tty, "tty", "t", false, "give the process a terminal (raw mode, size followed)")
	fs.BoolVarP(&p.interactive, "interactive", "i", false, "keep stdin open (attached runs always connect stdin)")
	fs.BoolVarP(&p.detach, "detach", "d", false, "detach: run in the background, output to its log")
	fs.StringVar(&p.detachKeys, "detach-keys", defaultDetachKeys, "keys that detach from a terminal")
}

// attachedIO connects a process to minimgr's own stdio: a terminal carries
// stdout and stderr together, and its detach keys end the attachment.
func (c *cli) attachedIO(p procFlags) (minimgr.IO, error) {
	io := minimgr.IO{Stdin: c.stdin, Stdout: c.stdout}
	if !p.tty {
		io.Stderr = c.stderr
		return io, nil
	}
	keys, err := minimgr.ParseDetachKeys(p.detachKeys)
	if err != nil {
		return io, err
	}
	io.DetachKeys = keys
	return io, nil
}

func runFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	rm := fs.Bool("rm", false, "delete the container once it exits (done by a process of its own: the client may go)")
	image := fs.String("image", "", "run an image (OCI layout or OCI/docker archive, PATH[:TAG]) instead of a bundle: run --image REF ID [CMD...]")
	var pf procFlags
	pf.register(fs)
	so := registerSpecFlags(fs)
	return func(c *cli, args []string) (int, error) {
		opts, err := createOpts(args, *image)
		if err != nil {
			return 0, err
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		opts.Terminal, opts.StopSignal, opts.Spec = pf.tty, so.stopSignal, so.apply
		if pf.detach {
			opts.IO = minimgr.IO{Log: true, OpenStdin: pf.interactive || pf.tty}
			ct, err := m.Create(c.ctx, opts)
			if err != nil {
				return 0, startError(err, opts.Bundle, opts)
			}
			defer ct.Close()
			if _, err := ct.Start(c.ctx); err != nil {
				_, _ = ct.Delete(context.WithoutCancel(c.ctx), true)
				return 0, startError(err, ct.Bundle(), opts)
			}
			if *rm {
				if _, err := c.spawnRemover(opts.ID, 0); err != nil {
					return 0, err
				}
			}
			return 0, nil
		}
		term, err := openTerminal(pf.tty, c.stdin)
		if err != nil {
			return 0, err
		}
		defer term.restore()
		if opts.IO, err = c.attachedIO(pf); err != nil {
			return 0, err
		}
		if w, h, ok := term.size(); ok {
			// The terminal has our size from the start, before the
			// first resize can reach it.
			opts.Spec = func(s *specs.Spec) error {
				if err := so.apply(s); err != nil {
					return err
				}
				s.Process.ConsoleSize = &specs.Box{Width: uint(w), Height: uint(h)}
				return nil
			}
		}
		ct, err := m.Create(c.ctx, opts)
		if err != nil {
			return 0, startError(err, opts.Bundle, opts)
		}
		defer ct.Close()
		fwd := forward(c.ctx, term, func(ctx context.Context, sig syscall.Signal) error {
			return ct.Kill(ctx, sig, false)
		}, ct.Resize)
		defer fwd.stop()
		// The remover is there before the process runs: from then on the
		// container is removed, whatever becomes of this client.
		var remover *exec.Cmd
		if *rm {
			if remover, err = c.spawnRemover(opts.ID, os.Getpid()); err != nil {
				_, _ = ct.Delete(context.WithoutCancel(c.ctx), true)
				return 0, err
			}
		}
		if _, err := ct.Start(c.ctx); err != nil {
			_, _ = ct.Delete(context.WithoutCancel(c.ctx), true)
			stopRemover(remover)
			return 0, startError(err, ct.Bundle(), opts)
		}
		fwd.started()
		exit, detached, err := waitAttached(c.ctx, ct.Wait, ct.Detached())
		if detached {
			term.restore()
			if remover != nil {
				_ = remover.Process.Release() // it removes the container once it exits
			}
			return 0, nil
		}
		if errors.Is(err, minimgr.ErrShimDead) {
			// The shim died under us: clean up after it and report the
			// status it saved.
			exit, err = m.Wait(c.ctx, opts.ID)
		}
		if err != nil {
			return 0, err
		}
		ct.WaitIO(outputDrain)
		term.restore()
		if *rm {
			// Our connection is not held open over the removal: the shim,
			// told to shut down, waits for its clients to hang up.
			ct.Close()
			_, err := m.Delete(c.ctx, opts.ID, false)
			stopRemover(remover)
			if err != nil && !errdefs.IsNotFound(err) {
				return 0, err
			}
		}
		return exit.Status, nil
	}
}

// waitAttached waits for the process to exit, or for the detach keys.
func waitAttached(ctx context.Context, wait func(context.Context) (minimgr.Exit, error), detached <-chan struct{}) (minimgr.Exit, bool, error) {
	type res struct {
		exit minimgr.Exit
		err  error
	}
	ch := make(chan res, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		e, err := wait(wctx)
		ch <- res{e, err}
	}()
	select {
	case r := <-ch:
		return r.exit, false, r.err
	case <-detached:
		return minimgr.Exit{}, true, nil
	}
}

// removerCommand is minimgr's own command that run --rm starts.
const removerCommand = "remove-on-exit"

// spawnRemover starts `minimgr remove-on-exit` for id in its own session,
// with no stdio of ours: it deletes the container once it exits, after
// clientPid (when > 0) has ended or had removerClientBound to do it.
func (c *cli) spawnRemover(id string, clientPid int) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := append(c.g.args(), removerCommand, "--client-pid", strconv.Itoa(clientPid), id)
	cmd := exec.Command(self, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the remover of %s: %w", id, err)
	}
	if clientPid == 0 {
		_ = cmd.Process.Release()
	}
	return cmd, nil
}

// stopRemover ends the remover once the client removed the container.
func stopRemover(cmd *exec.Cmd) {
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// removerClientBound is how long the remover leaves the removal to a client
// that is still there after the container exited.
const removerClientBound = 10 * time.Second

func removerFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	client := fs.Int("client-pid", 0, "the attached client, which removes the container itself while it lives")
	settle := fs.Duration("start-settle", startSettle, "how long a created container may stay created once the client is gone before it is taken for one never started")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		// clientGone is closed once the client has ended; nil when there
		// is no client to follow.
		var clientGone chan struct{}
		if *client > 0 {
			clientGone = make(chan struct{})
			cfd, err := unix.PidfdOpen(*client, 0)
			switch {
			case err == nil:
				defer unix.Close(cfd)
				go func() {
					defer close(clientGone)
					fds := []unix.PollFd{{Fd: int32(cfd), Events: unix.POLLIN}}
					for {
						if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
							return
						}
					}
				}()
			case errors.Is(err, unix.ESRCH):
				close(clientGone) // killed before this remover began
			default:
				clientGone = nil
			}
		}
		id := args[0]
		exited := make(chan error, 1)
		go func() {
			_, err := m.Wait(c.ctx, id)
			exited <- err
		}()
		force := false
		if clientGone != nil {
			select {
			case err := <-exited:
				exited <- err
				// The client removes it itself, when it can.
				t := time.NewTimer(removerClientBound)
				select {
				case <-clientGone:
				case <-t.C:
				}
				t.Stop()
			case <-clientGone:
				// A container the client created but never started
				// would wait forever: it goes now. One whose start
				// the client had sent is still reported created
				// until runc start returns, its process already
				// running: it is left to end by itself.
				force = neverStarted(c.ctx, m, id, *settle)
			}
		}
		if !force {
			if err := <-exited; err != nil {
				if errdefs.IsNotFound(err) {
					return 0, nil
				}
				return 0, err
			}
		}
		if _, err := m.Delete(c.ctx, id, force); err != nil && !errdefs.IsNotFound(err) && !errors.Is(err, minimgr.ErrBusy) {
			return 0, err
		}
		return 0, nil
	}
}

// startSettle bounds how long the remover waits for a created container
// to leave that state once its client is gone: the shim bounds a Start to a
// minute (pkg/process), and minimgr's client sends one within as long.
const startSettle = time.Minute

// neverStarted reports whether container id stays created for settle: no
// start of it is under way. The settle time bounds the waiting, not a probe:
// a probe still in flight when it ends is answered, not cut and taken for a
// dead shim.
func neverStarted(ctx context.Context, m *minimgr.Manager, id string, settle time.Duration) bool {
	deadline := time.Now().Add(settle)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := m.Inspect(ctx, id)
		if err != nil || info.Status != minimgr.StatusCreated {
			return false
		}
		if !time.Now().Before(deadline) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// startError classifies the failure of a process's start: a command that
// is not in the rootfs gives 127, one that cannot be executed 126.
func startError(err error, bundle string, opts minimgr.CreateOpts) error {
	if errdefs.IsAlreadyExists(err) || errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err) {
		return err
	}
	if code := minimgr.CommandProblem(bundle, opts.Args); code != 0 {
		return codeError{err: err, code: code}
	}
	return err
}

// createOpts reads BUNDLE ID [CMD...], or ID [CMD...] with an image.
func createOpts(args []string, image string) (minimgr.CreateOpts, error) {
	if image != "" {
		if len(args) < 1 {
			return minimgr.CreateOpts{}, usagef("needs ID")
		}
		return minimgr.CreateOpts{Image: image, ID: args[0], Args: args[1:]}, nil
	}
	if len(args) < 2 {
		return minimgr.CreateOpts{}, usagef("needs BUNDLE and ID")
	}
	return minimgr.CreateOpts{Bundle: args[0], ID: args[1], Args: args[2:]}, nil
}

func createFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	var pf procFlags
	fs.BoolVarP(&pf.tty, "tty", "t", false, "give the process a terminal (attach to it later)")
	fs.BoolVarP(&pf.interactive, "interactive", "i", false, "keep stdin open for attach")
	image := fs.String("image", "", "create from an image (OCI layout or OCI/docker archive, PATH[:TAG]): create --image REF ID [CMD...]")
	so := registerSpecFlags(fs)
	return func(c *cli, args []string) (int, error) {
		opts, err := createOpts(args, *image)
		if err != nil {
			return 0, err
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		opts.Terminal, opts.StopSignal, opts.Spec = pf.tty, so.stopSignal, so.apply
		opts.IO = minimgr.IO{Log: true, OpenStdin: pf.interactive || pf.tty}
		ct, err := m.Create(c.ctx, opts)
		if err != nil {
			return 0, err
		}
		return 0, ct.Close()
	}
}

// withContainer parses "ID" and runs fn on a connection to its shim.
func withContainer(c *cli, args []string, fn func(m *minimgr.Manager, ct *minimgr.Container) error) (int, error) {
	if len(args) != 1 {
		return 0, usagef("needs exactly one ID")
	}
	m, err := c.manager()
	if err != nil {
		return 0, err
	}
	ct, err := m.Open(c.ctx, args[0])
	if err != nil {
		return 0, err
	}
	defer ct.Close()
	return 0, fn(m, ct)
}

func startFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	attach := fs.BoolP("attach", "a", false, "attach to its output (and stdin) and exit with its status")
	keys := fs.String("detach-keys", defaultDetachKeys, "keys that detach from a terminal")
	return func(c *cli, args []string) (int, error) {
		if !*attach {
			return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
				_, err := ct.Start(c.ctx)
				return err
			})
		}
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		return c.attach(args[0], *keys, true)
	}
}

func attachFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	keys := fs.String("detach-keys", defaultDetachKeys, "keys that detach")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		return c.attach(args[0], *keys, false)
	}
}

// attach follows a container's output from now on, sends our stdin to its
// stdin (when it has one), and returns its status when it exits; the
// detach keys leave it running. With start, the container is started once
// attached.
func (c *cli) attach(id, keys string, start bool) (int, error) {
	m, err := c.manager()
	if err != nil {
		return 0, err
	}
	ct, err := m.Open(c.ctx, id)
	if err != nil {
		return 0, err
	}
	defer ct.Close()
	term, err := openTerminal(ct.Terminal(), c.stdin)
	if err != nil {
		return 0, err
	}
	defer term.restore()
	pf := procFlags{tty: ct.Terminal(), detachKeys: keys}
	io, err := c.attachedIO(pf)
	if err != nil {
		return 0, err
	}
	if !ct.Terminal() {
		keys, err := minimgr.ParseDetachKeys(pf.detachKeys)
		if err != nil {
			return 0, err
		}
		io.DetachKeys = keys
	}
	if err := ct.Attach(c.ctx, io); err != nil {
		return 0, err
	}
	fwd := forward(c.ctx, term, func(ctx context.Context, sig syscall.Signal) error {
		return ct.Kill(ctx, sig, false)
	}, ct.Resize)
	defer fwd.stop()
	if start {
		if _, err := ct.Start(c.ctx); err != nil {
			return 0, err
		}
	}
	fwd.started()
	exit, detached, err := waitAttached(c.ctx, ct.Wait, ct.Detached())
	if detached {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	ct.WaitIO(outputDrain)
	return exit.Status, nil
}

func execFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	var pf procFlags
	pf.register(fs)
	execID := fs.String("exec-id", "", "ID of the exec process (default: a new random one)")
	return func(c *cli, args []string) (int, error) {
		if len(args) < 2 {
			return 0, usagef("needs ID and CMD")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ct, err := m.Open(c.ctx, args[0])
		if err != nil {
			return 0, err
		}
		defer ct.Close()
		id := *execID
		if id == "" {
			id = newExecID()
		}
		opts := minimgr.ExecOpts{ID: id, Args: args[1:], Terminal: pf.tty}
		if pf.detach {
			opts.IO = minimgr.IO{Log: true, OpenStdin: pf.interactive}
			p, err := ct.Exec(c.ctx, opts)
			if err != nil {
				return 0, err
			}
			if _, err = p.Start(c.ctx); err != nil {
				_, _ = p.Delete(context.WithoutCancel(c.ctx))
				return 0, startError(err, ct.Bundle(), minimgr.CreateOpts{Args: opts.Args})
			}
			if *execID == "" {
				fmt.Fprintln(c.stdout, id)
			}
			return 0, nil
		}
		term, err := openTerminal(pf.tty, c.stdin)
		if err != nil {
			return 0, err
		}
		defer term.restore()
		if opts.IO, err = c.attachedIO(pf); err != nil {
			return 0, err
		}
		p, err := ct.Exec(c.ctx, opts)
		if err != nil {
			return 0, startError(err, ct.Bundle(), minimgr.CreateOpts{Args: opts.Args})
		}
		fwd := forward(c.ctx, term, p.Kill, p.Resize)
		defer fwd.stop()
		if _, err := p.Start(c.ctx); err != nil {
			_, _ = p.Delete(context.WithoutCancel(c.ctx))
			return 0, startError(err, ct.Bundle(), minimgr.CreateOpts{Args: opts.Args})
		}
		fwd.started()
		exit, detached, err := waitAttached(c.ctx, p.Wait, p.Detached())
		if detached {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		p.WaitIO(outputDrain)
		term.restore()
		if _, err := p.Delete(c.ctx); err != nil {
			return 0, err
		}
		return exit.Status, nil
	}
}

func newExecID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

// parseSignal takes a number, a name (KILL) or a full name (SIGKILL).
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d: %w", n, errdefs.ErrInvalidArgument)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: %w", s, errdefs.ErrInvalidArgument)
}

func killFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	sigName := fs.StringP("signal", "s", "SIGTERM", "signal: name or number")
	all := fs.BoolP("all", "a", false, "signal every process of the container")
	execID := fs.String("exec", "", "signal this exec process instead of the init")
	return func(c *cli, args []string) (int, error) {
		sig, err := parseSignal(*sigName)
		if err != nil {
			return 0, err
		}
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			if *execID != "" {
				return ct.Process(*execID).Kill(c.ctx, sig)
			}
			return ct.Kill(c.ctx, sig, *all)
		})
	}
}

func stopFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	secs := fs.IntP("time", "t", int(minimgr.DefaultStopTimeout/time.Second), "seconds to wait after the stop signal before SIGKILL")
	sigName := fs.StringP("signal", "s", "", "signal to send first (default: the container's stop signal, else SIGTERM)")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		var sig syscall.Signal
		if *sigName != "" {
			var err error
			if sig, err = parseSignal(*sigName); err != nil {
				return 0, err
			}
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var errs []error
		for _, id := range args {
			if _, err := m.Stop(c.ctx, id, time.Duration(*secs)*time.Second, sig); err != nil {
				errs = append(errs, err)
			}
		}
		return 0, errors.Join(errs...)
	}
}

func restartFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	secs := fs.IntP("time", "t", int(minimgr.DefaultStopTimeout/time.Second), "seconds to wait after the stop signal before SIGKILL")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var errs []error
		for _, id := range args {
			if err := m.Restart(c.ctx, id, time.Duration(*secs)*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		return 0, errors.Join(errs...)
	}
}

func waitFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	execID := fs.String("exec", "", "wait for this exec process instead of the init")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ctx, cancel := interruptible(c.ctx)
		defer cancel()
		var exit minimgr.Exit
		if *execID != "" {
			exit, err = m.WaitExec(ctx, args[0], *execID)
		} else {
			exit, err = m.Wait(ctx, args[0])
		}
		if err != nil {
			return 0, err
		}
		fmt.Fprintln(c.stdout, exit.Status)
		return exit.Status, nil
	}
}

func deleteFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	force := fs.BoolP("force", "f", false, "kill the container (and a shim that does not answer) first")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var errs []error
		for _, id := range args {
			if _, err := m.Delete(c.ctx, id, *force); err != nil {
				errs = append(errs, err)
			}
		}
		return 0, errors.Join(errs...)
	}
}

// ago says how long ago t was, roughly, as docker does.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < 2*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d.Seconds()))
	case d < 2*time.Minute:
		return "a minute ago"
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 2*time.Hour:
		return "an hour ago"
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

func shortCommand(args []string) string {
	s := strings.Join(args, " ")
	if len(s) > 30 {
		s = s[:29] + "…"
	}
	return strconv.Quote(s)
}

func listFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	quiet := fs.BoolP("quiet", "q", false, "print IDs only")
	fs.BoolP("all", "a", true, "all containers (always)")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 0 {
			return 0, usagef("takes no arguments")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		infos, err := m.List(c.ctx)
		if err != nil {
			return 0, err
		}
		switch {
		case *asJSON:
			if infos == nil {
				infos = []minimgr.Info{}
			}
			return 0, printJSON(c.stdout, infos)
		case *quiet:
			for _, i := range infos {
				fmt.Fprintln(c.stdout, i.ID)
			}
			return 0, nil
		}
		w := tabwriter.NewWriter(c.stdout, 4, 8, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tCOMMAND\tCREATED\tSTATUS\tPID\tBUNDLE")
		for _, i := range infos {
			status := string(i.Status)
			if i.Status == minimgr.StatusStopped && i.Exit != nil {
				status = fmt.Sprintf("stopped (%d) %s", i.Exit.Status, ago(i.Exit.ExitedAt))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", i.ID, shortCommand(i.Command), ago(i.Created), status, i.Pid, i.Bundle)
		}
		return 0, w.Flush()
	}
}

func stateFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		info, err := m.Inspect(c.ctx, args[0])
		if err != nil {
			return 0, err
		}
		return 0, printJSON(c.stdout, info)
	}
}

func inspectFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	format := fs.StringP("format", "f", "", "Go template applied to each container (e.g. '{{.Status}} {{.Pid}}')")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		var tmpl *template.Template
		if *format != "" {
			var err error
			tmpl, err = template.New("format").Funcs(template.FuncMap{
				"json": func(v any) (string, error) { b, err := json.Marshal(v); return string(b), err },
				"join": strings.Join,
			}).Parse(*format)
			if err != nil {
				return 0, usagef("--format: %v", err)
			}
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var infos []minimgr.Info
		var errs []error
		for _, id := range args {
			info, err := m.Inspect(c.ctx, id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			infos = append(infos, info)
		}
		if tmpl != nil {
			for _, i := range infos {
				if err := tmpl.Execute(c.stdout, i); err != nil {
					return 0, err
				}
				fmt.Fprintln(c.stdout)
			}
		} else if len(infos) > 0 {
			if err := printJSON(c.stdout, infos); err != nil {
				return 0, err
			}
		}
		return 0, errors.Join(errs...)
	}
}

func pidsFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			ps, err := ct.Pids(c.ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, ps)
			}
			w := tabwriter.NewWriter(c.stdout, 4, 8, 2, ' ', 0)
			fmt.Fprintln(w, "PID\tEXEC_ID\tCOMMAND")
			for _, p := range ps {
				fmt.Fprintf(w, "%d\t%s\t%s\n", p.Pid, p.ExecID, strings.Join(p.Command, " "))
			}
			return w.Flush()
		})
	}
}

func pauseFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			return ct.Pause(c.ctx)
		})
	}
}

func resumeFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			return ct.Resume(c.ctx)
		})
	}
}

func logsFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	follow := fs.BoolP("follow", "f", false, "keep printing until the process's output ends")
	ts := fs.BoolP("timestamps", "T", false, "start each line with its time (RFC 3339)")
	tail := fs.Int("tail", 0, "only the last N lines (0: all)")
	execID := fs.String("exec", "", "the log of this exec process")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ctx, cancel := interruptible(c.ctx)
		defer cancel()
		err = m.Logs(ctx, args[0], *execID, minimgr.LogOptions{Follow: *follow, Tail: *tail}, *ts, c.stdout, c.stderr)
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		return 0, err
	}
}

func cleanupFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 0 {
			return 0, usagef("takes no arguments")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		removed, err := m.Cleanup(c.ctx)
		if *asJSON {
			if removed == nil {
				removed = []minimgr.Removed{}
			}
			if perr := printJSON(c.stdout, removed); perr != nil {
				return 0, perr
			}
		} else {
			for _, r := range removed {
				fmt.Fprintf(c.stdout, "removed %s (%s, exit status %d)\n", r.ID, r.Reason, r.Exit.Status)
			}
		}
		return 0, err
	}
}

func bundleFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	image := fs.String("image", "", "unpack this image (OCI layout or OCI/docker archive, PATH[:TAG]) instead of busybox")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 2 || args[0] != "init" {
			return 0, usagef("usage: bundle init [--image PATH[:TAG]] DIR")
		}
		if err := os.MkdirAll(args[1], 0o755); err != nil {
			return 0, err
		}
		if *image != "" {
			return 0, minimgr.InitImageBundle(c.ctx, *image, args[1])
		}
		return 0, minimgr.InitBusyboxBundle(args[1])
	}
}

func versionFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		fmt.Fprintf(c.stdout, "minimgr version %s\n", version())
		return 0, nil
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
