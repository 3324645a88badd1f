package process

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mineshim/mine/pkg/stdio"
)

// Exec processes: the registry's entries are added by AddExec, started by
// Start, ended by their exit pipeline and removed by Delete (or with the
// container).

// ExecConfig describes an exec process to add to a container.
type ExecConfig struct {
	ID    string
	Spec  *specs.Process
	Stdio stdio.Config
}

// AddExec registers an exec process; Start runs it. It is a record, not a
// process: it is accepted while the container is running, or created (runc
// execs into a created container's namespaces) unless it was created from
// a checkpoint (nothing runs before its restore), and even when the init's
// exit is already held behind another exec (its Start then fails).
func (c *Container) AddExec(ctx context.Context, cfg ExecConfig) error {
	if err := ValidateID(cfg.ID); err != nil {
		return err
	}
	if cfg.Spec == nil {
		return fmt.Errorf("exec %q: no process spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if cfg.Stdio.Terminal != cfg.Spec.Terminal {
		cfg.Spec.Terminal = cfg.Stdio.Terminal
	}
	// The exec's pipes belong to the same user as the init's (IoUid/IoGid).
	cfg.Stdio.UID, cfg.Stdio.GID = c.cfg.Stdio.UID, c.cfg.Stdio.GID
	if err := cfg.Stdio.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := check(c.init.status, opExec); err != nil {
		return err
	}
	if c.init.status == Created && c.cfg.Checkpoint != "" {
		return fmt.Errorf("cannot exec into container %q before its restore: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := c.execs[cfg.ID]; ok {
		return fmt.Errorf("exec %q of container %q: %w", cfg.ID, c.id, errdefs.ErrAlreadyExists)
	}
	p := newProc(cfg.ID, cfg.Spec, cfg.Stdio)
	p.status = Created
	c.execs[cfg.ID] = p
	c.emitLocked(Event{Kind: EventExecAdded, ContainerID: c.id, ExecID: cfg.ID})
	return nil
}

// startExec runs an added exec (runc exec). Called with p.opMu held.
func (c *Container) startExec(ctx context.Context, p *proc) (int, error) {
	c.mu.Lock()
	if err := check(p.status, opStart); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	if c.seq.initExited() {
		c.mu.Unlock()
		return 0, fmt.Errorf("cannot start exec %q: the init of container %q has exited: %w", p.execID, c.id, errdefs.ErrFailedPrecondition)
	}
	c.seq.beginStart(p.execID)
	p.starting = make(chan struct{})
	c.mu.Unlock()

	fail := func(pio *stdio.IO, err error) (int, error) {
		if pio != nil {
			pio.Close(0)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		p.endStarting()
		c.applyLocked(c.seq.endStart(p.execID, false))
		return 0, err
	}
	pio, err := stdio.Open(ctx, p.stdio, c.stdioOptions())
	if err != nil {
		return fail(nil, err)
	}
	pidFile := filepath.Join(c.cfg.Bundle, p.execID+".pid")
	mark := c.cfg.Reaper.Mark()
	rctx, cancel := startContext(ctx, startBound)
	defer cancel()
	err = c.rt.exec(rctx, *p.spec, &runc.ExecOpts{
		PidFile: pidFile, IO: pio.Runc(), ConsoleSocket: pio.ConsoleSocket(), Detach: true,
	})
	if err != nil {
		return fail(pio, err)
	}
	if err := pio.Started(rctx); err != nil {
		// The process runs: it must not stay, unwatched, after its start
		// failed. Claimed first, so that the kill never reaches a pid
		// whose exit was reaped, and its exit is taken and dropped.
		if pid, perr := readPidFile(pidFile); perr == nil && pid > 0 {
			c.cfg.Reaper.OnExit(pid, mark, func(Exit) {})
			_ = c.cfg.Reaper.Signal(pid, syscall.SIGKILL)
		}
		return fail(pio, err)
	}
	c.mu.Lock()
	size := p.size
	c.mu.Unlock()
	if size != nil {
		_ = pio.Resize(size[0], size[1])
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		return fail(pio, fmt.Errorf("read exec pid: %w", err))
	}
	_ = os.Remove(pidFile)
	release := c.watchExit(p, pid, mark)
	// A pidfd taken while the exit is unreaped: signals through it never
	// reach a recycled pid. An exit already reaped gives none.
	pidfd, _ := c.cfg.Reaper.Pidfd(pid)

	c.mu.Lock()
	defer c.mu.Unlock()
	p.pid, p.pidfd, p.io, p.status = pid, pidfd, pio, Running
	p.execBy = c.execDeadline(execWait)
	p.endStarting()
	release()
	c.applyLocked(c.seq.endStart(p.execID, true))
	if p.size != nil && p.size != size {
		// Asked while the start finished.
		_ = pio.Resize(p.size[0], p.size[1])
	}
	p.size = nil
	if p.stdinClosed {
		p.stdinClosed = false
		go pio.CloseStdin() // no stdio call under c.mu but Resize
	}
	return pid, nil
}

// deleteExec removes a stopped (or never started) exec: its output may flow
// for stdio.DeleteBound more, then its I/O is closed; no lock is held
// meanwhile.
func (c *Container) deleteExec(ctx context.Context, p *proc) (ExitRecord, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	err := check(p.status, opDelete)
	c.mu.Unlock()
	if err != nil {
		return ExitRecord{}, err
	}
	if err := c.releaseIO(p); err != nil {
		c.logger(ctx).WithError(err).WithField("exec_id", p.execID).Warn("close exec i/o")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.execs[p.execID] == p {
		delete(c.execs, p.execID)
	}
	p.status = Deleted
	p.finish()
	return p.exit, nil
}
