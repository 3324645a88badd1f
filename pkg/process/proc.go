package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/stdio"
)

// proc is an init or exec process. Its mutable fields are guarded by the
// container's mu; opMu serialises the lifecycle operations of this one
// process (start, delete, pause, ...) and is never taken by State, Kill or
// Wait.
type proc struct {
	execID string // "" for init
	spec   *specs.Process
	stdio  stdio.Config
	opMu   sync.Mutex

	status Status     // guarded by Container.mu
	pid    int        // guarded by Container.mu
	pidfd  int        // guarded by Container.mu; -1 when none (exec processes only)
	io     *stdio.IO  // guarded by Container.mu; nil once released
	exited bool       // guarded by Container.mu; reaped: no signal may target pid
	exit   ExitRecord // guarded by Container.mu; valid when status >= Stopped
	abort  func()     // guarded by Container.mu; ends the init's start or restore in flight
	doomed int        // guarded by Container.mu; Deletes of the init waiting for its operation lock
	// execBy: being started (the init, while runc start runs), or started
	// and not yet seen running its own program; signals wait for that
	// until this time (see awaitExec). Zero once seen, or when unknown.
	// Guarded by Container.mu.
	execBy time.Time
	// starting is closed when the start in flight of an exec ends; nil
	// when none is. Guarded by Container.mu.
	starting chan struct{}
	// What was asked of an exec before its start had set up its I/O, done
	// then: a CloseIO (a client that wrote all its input while the start
	// ran), a terminal size. Guarded by Container.mu.
	stdinClosed bool
	size        *[2]uint32

	done     chan struct{} // closed once the exit is published, or the process deleted
	doneOnce sync.Once
}

func newProc(execID string, spec *specs.Process, cfg stdio.Config) *proc {
	return &proc{execID: execID, spec: spec, stdio: cfg, pidfd: -1, done: make(chan struct{})}
}

func (p *proc) isInit() bool { return p.execID == "" }

// endStarting releases the Kills waiting for the start in flight of an
// exec. Called with Container.mu held.
func (p *proc) endStarting() {
	if p.starting != nil {
		close(p.starting)
		p.starting = nil
	}
}

// finish closes done, once: Wait returns.
func (p *proc) finish() { p.doneOnce.Do(func() { close(p.done) }) }

// killBound bounds the kill of a container's remaining processes when its
// init exits.
const killBound = 10 * time.Second

// startBound bounds `runc start` and `runc exec` (both return once the
// process runs); restoreBound bounds `runc restore`, whose CRIU restores
// the container's memory before it returns.
const (
	startBound   = time.Minute
	restoreBound = 10 * time.Minute
)

// freezeBound bounds `runc pause` and `runc resume`: the exits that come
// during a resume are published after it (the sequencer's rule 4), and a
// pause holds the container in its pausing state. A variable for the
// tests.
var freezeBound = time.Minute

// startContext is the context of a runtime call that starts a process.
// The process may run before the runtime returns, so the caller going away
// meanwhile (a client killed during its Start, whose call's context ttrpc
// then cancels) must not kill the runtime midway: that would leave a
// running process the shim does not track, whose exit nobody waits for.
// The call is bounded by bound instead.
func startContext(ctx context.Context, bound time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), bound)
}

// beginStart is startContext for the start or restore of the init p, which
// a Delete of the container ends (lockForDelete): the call holds p's operation
// lock until the runtime returns, and whoever deletes the container wants it
// gone, not started; runc delete --force then removes what the runtime had
// made. (An exec's start is waited for: nothing would remove a process that
// an exec ended midway had started.) The returned end must be called
// without c.mu held.
func (c *Container) beginStart(ctx context.Context, p *proc, bound time.Duration) (context.Context, func()) {
	sctx, cancel := startContext(ctx, bound)
	c.mu.Lock()
	p.abort = cancel
	if p.doomed > 0 {
		cancel() // a Delete came between the lock and here
	}
	c.mu.Unlock()
	return sctx, func() {
		c.mu.Lock()
		p.abort = nil
		c.mu.Unlock()
		cancel()
	}
}

// lockForDelete takes p's operation lock for a Delete, ending the start or
// restore that holds it, if any, instead of waiting for it.
func (c *Container) lockForDelete(p *proc) {
	c.mu.Lock()
	p.doomed++
	if p.abort != nil {
		p.abort()
	}
	c.mu.Unlock()
	p.opMu.Lock()
	c.mu.Lock()
	p.doomed--
	c.mu.Unlock()
}

// initExitBound bounds how long the init's exit waits for the exits of exec
// processes that are still running (they are killed when the init exits).
const initExitBound = 5 * time.Second

// watchExit arranges for the exit pipeline of p (pid) to run when it exits,
// in a goroutine of its own that exists only from then on: a running
// process costs no goroutine. The pipeline waits for the returned release,
// which the caller calls once it has recorded p as started (under the lock
// or not).
func (c *Container) watchExit(p *proc, pid int, mark Mark) (release func()) {
	gate := make(chan struct{})
	c.cfg.Reaper.OnExit(pid, mark, func(e Exit) {
		go func() {
			<-gate
			c.exitPipeline(p, e)
		}()
	})
	return func() { close(gate) }
}

// exitPipeline is the one path of a process's exit, run by one goroutine per
// exited process:
//
//  1. at once, under the lock: the process is marked exited, so that no
//     signal is sent to its pid any more;
//  2. outside every lock: when the container has no PID namespace of its
//     own, what remains of it is killed (the init's exit ends the container
//     as it does with a PID namespace); then the output the process wrote
//     is flushed to its targets (bounded; a background child's later output
//     keeps flowing until Delete);
//  3. under the lock: the exit goes to the sequencer, and the steps it
//     returns are carried out.
func (c *Container) exitPipeline(p *proc, e Exit) {
	c.mu.Lock()
	p.exited = true
	pio := p.io
	c.mu.Unlock()

	if p.isInit() && c.sharedPID {
		ctx, cancel := context.WithTimeout(context.Background(), killBound)
		if err := c.rt.kill(ctx, int(unix.SIGKILL), true); err != nil && !errdefs.IsNotFound(err) {
			c.logger(ctx).WithError(err).Warn("kill the processes left after the init's exit")
		}
		cancel()
	}
	if pio != nil && !pio.Flush(stdio.ExitBound) {
		log.L.WithField("container_id", c.id).WithField("exec_id", p.execID).Debug("output still flowing at exit")
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.applyLocked(c.seq.exited(p.execID, e))
}

// applyLocked carries out the sequencer's steps, in order.
func (c *Container) applyLocked(steps []step) {
	for _, s := range steps {
		p, err := c.lookupLocked(s.execID)
		if err != nil {
			continue // deleted meanwhile
		}
		switch s.kind {
		case stepPublishStart:
			if p.isInit() {
				c.emitLocked(Event{Kind: EventStart, ContainerID: c.id, Pid: p.pid})
			} else {
				c.emitLocked(Event{Kind: EventExecStarted, ContainerID: c.id, ExecID: p.execID, Pid: p.pid})
			}
		case stepKillExecs:
			c.killExecsLocked()
		case stepArmInitDeadline:
			time.AfterFunc(initExitBound, func() {
				c.mu.Lock()
				defer c.mu.Unlock()
				steps := c.seq.expireInit()
				if len(steps) > 0 {
					log.L.WithField("container_id", c.id).Warn("exec exits still missing; publishing the init's exit")
				}
				c.applyLocked(steps)
			})
		case stepCheckOOM:
			if c.cfg.BeforeExit != nil {
				c.cfg.BeforeExit()
			}
		case stepSaveExit:
			rec := ExitRecord{Pid: p.pid, Status: s.exit.Status, ExitedAt: s.exit.Time}
			if err := writeExit(c.cfg.Bundle, rec); err != nil {
				log.L.WithError(err).WithField("container_id", c.id).Warn("save exit status")
			}
		case stepPublishResumed:
			c.emitLocked(Event{Kind: EventResumed, ContainerID: c.id})
		case stepPublishExit:
			if p.status == Deleted {
				continue // Delete gave up waiting and reported the exit itself
			}
			p.exit = ExitRecord{Pid: p.pid, Status: s.exit.Status, ExitedAt: s.exit.Time}
			p.status = Stopped
			p.finish()
			c.emitLocked(Event{Kind: EventExit, ContainerID: c.id, ExecID: p.execID, Pid: p.pid, ExitStatus: s.exit.Status, ExitedAt: s.exit.Time})
		}
	}
}

// killExecsLocked kills every exec still running, through its pidfd (or the
// reaper, which refuses a reaped pid).
func (c *Container) killExecsLocked() {
	for _, p := range c.execs {
		if p.pid > 0 && !p.exited {
			_ = c.signalLocked(p, unix.SIGKILL)
		}
	}
}

// signalLocked signals an exec process; a process that has exited gives
// errdefs.ErrNotFound and no signal is sent.
func (c *Container) signalLocked(p *proc, sig unix.Signal) error {
	if p.exited {
		return fmt.Errorf("exec %q has exited: %w", p.execID, errdefs.ErrNotFound)
	}
	var err error
	if p.pidfd >= 0 {
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	} else {
		err = c.cfg.Reaper.Signal(p.pid, sig)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ESRCH), errdefs.IsNotFound(err):
		return fmt.Errorf("exec %q has exited: %w", p.execID, errdefs.ErrNotFound)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("signal %d: %w", sig, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("signal exec %q: %w", p.execID, err)
}

// Kill signals the init (all: every process of the container) or an exec.
// A process that has exited gives errdefs.ErrNotFound; Kill with all of a
// stopped init still reaches the runtime, so that leftovers are ended. A
// catchable signal to a process being started, or started a moment ago,
// waits for it to run its program (awaitExec); a Kill of an exec whose
// start is in flight waits for that start.
func (c *Container) Kill(ctx context.Context, execID string, sig int, all bool) error {
	c.awaitExec(ctx, execID, unix.Signal(sig))
	c.mu.Lock()
	p, err := c.lookupLocked(execID)
	if err == nil {
		err = check(p.status, opKill)
		if err != nil && p.isInit() && all && p.status == Stopped {
			err = nil
		}
	}
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if !p.isInit() {
		if started := p.starting; p.pid == 0 && started != nil {
			// Its start is in flight: signalled once it has a process
			// (or refused if the start fails), as containerd's runc shim
			// does. The start is bounded.
			c.mu.Unlock()
			select {
			case <-started:
			case <-ctx.Done():
				return ctx.Err()
			}
			return c.Kill(ctx, execID, sig, all)
		}
		defer c.mu.Unlock()
		if p.pid == 0 {
			return fmt.Errorf("exec %q has not started: %w", execID, errdefs.ErrFailedPrecondition)
		}
		return c.signalLocked(p, unix.Signal(sig))
	}
	c.mu.Unlock()
	return c.rt.kill(ctx, sig, all)
}

// execWait bounds how long after its start a process's signals wait for
// it to exec its program.
const execWait = time.Second

// awaitExec waits until a process that is being started, or was started a
// moment ago, runs its own program: at most until its execBy, which is
// execWait after its start, or the start's bound while the start is in
// flight. The runtime answers start once its init was told to exec the
// program, a moment before that init has: a signal in between, or during
// the start, reaches the runtime's init instead. runc's is a Go program,
// which on SIGTERM as the PID 1 of its namespace exits 2, so the
// container's exit would say nothing of the program's handler (and a start
// in flight would then fail). Signals that cannot be caught (SIGKILL,
// SIGSTOP) do the same to either and go at once, and so does signal 0,
// which only probes.
func (c *Container) awaitExec(ctx context.Context, execID string, sig unix.Signal) {
	if sig == 0 || sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return
	}
	c.mu.Lock()
	p, err := c.lookupLocked(execID)
	if err != nil || p.execBy.IsZero() {
		c.mu.Unlock()
		return
	}
	pid, exe := p.pid, c.runtimeExe
	c.mu.Unlock()
	link := "/proc/" + strconv.Itoa(pid) + "/exe"
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		// Gone, exec'd, or reaped and its pid taken again: no more to
		// wait for (signals never reach a recycled pid: runc checks its
		// state, execs are signalled through their pidfd).
		now, err := os.Readlink(link)
		c.mu.Lock()
		if err != nil || now != exe {
			p.execBy = time.Time{}
		}
		// Read again at every turn: the end of a start in flight moves it
		// (or clears it, when the start failed).
		by := p.execBy
		c.mu.Unlock()
		if by.IsZero() || !time.Now().Before(by) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// execDeadline is the execBy of a process whose start (or its runtime
// call) begins now and takes at most d.
func (c *Container) execDeadline(d time.Duration) time.Time {
	if c.runtimeExe == "" {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// Wait blocks until the process's exit is published or ctx is done.
func (c *Container) Wait(ctx context.Context, execID string) (ExitRecord, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return ExitRecord{}, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return ExitRecord{}, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.exit, nil
}

// ProcessState is a snapshot of one process.
type ProcessState struct {
	ExecID   string
	Pid      int
	Status   Status
	Exit     ExitRecord
	Stdio    stdio.Config
	Terminal bool
}

// State returns a snapshot of the init (execID "") or an exec process. An
// exec that has not stopped is reported pausing or paused while its
// container is, as containerd's runc shim reports it.
func (c *Container) State(execID string) (ProcessState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.lookupLocked(execID)
	if err != nil {
		return ProcessState{}, err
	}
	status := p.status
	if !p.isInit() && (status == Created || status == Running) && (c.init.status == Pausing || c.init.status == Paused) {
		// The container is frozen, and every process in it with it.
		status = c.init.status
	}
	return ProcessState{ExecID: execID, Pid: p.pid, Status: status, Exit: p.exit, Stdio: p.stdio, Terminal: p.stdio.Terminal}, nil
}

// CloseStdin closes the stdin of a process so that it reads EOF once what
// clients wrote has flowed; it returns at once (stdio.IO.CloseStdin). Asked
// of an exec whose start has not set up its I/O yet, it is done by the
// start.
func (c *Container) CloseStdin(execID string) error {
	c.mu.Lock()
	p, err := c.lookupLocked(execID)
	var pio *stdio.IO
	if err == nil {
		pio = p.io
		if pio == nil && p.status == Created {
			p.stdinClosed = true // carried out by the start
		}
	}
	c.mu.Unlock()
	if err != nil || pio == nil {
		return err
	}
	return pio.CloseStdin()
}

// Resize sets the terminal size of a process.
func (c *Container) Resize(execID string, width, height uint32) error {
	c.mu.Lock()
	p, err := c.lookupLocked(execID)
	var pio *stdio.IO
	if err == nil {
		pio = p.io
		if pio == nil && p.status == Created {
			// Set once the start has the terminal, as clients resize
			// an exec's terminal before they start it.
			p.size = &[2]uint32{width, height}
			c.mu.Unlock()
			return nil
		}
	}
	stopped := err == nil && (p.status >= Stopped || p.exited)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if stopped {
		// Clients resize once more as they detach; the terminal is gone.
		return nil
	}
	if pio == nil {
		return fmt.Errorf("process has not started: %w", errdefs.ErrFailedPrecondition)
	}
	return pio.Resize(width, height)
}

// releaseIO closes the I/O of p (bounded, no lock held) and its pidfd.
func (c *Container) releaseIO(p *proc) error {
	c.mu.Lock()
	pio := p.io
	p.io = nil
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	c.mu.Unlock()
	if pio == nil {
		return nil
	}
	return pio.Close(stdio.DeleteBound)
}
