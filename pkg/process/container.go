package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/stdio"
)

// EventKind names a lifecycle event of a container or of one of its processes.
type EventKind int

// The lifecycle events a Container emits, in the order the contract requires.
const (
	EventCreate EventKind = iota + 1
	EventStart
	EventExit
	EventDelete
	EventExecAdded
	EventExecStarted
	EventPaused
	EventResumed
	EventCheckpointed
)

func (k EventKind) String() string {
	switch k {
	case EventCreate:
		return "create"
	case EventStart:
		return "start"
	case EventExit:
		return "exit"
	case EventDelete:
		return "delete"
	case EventExecAdded:
		return "exec-added"
	case EventExecStarted:
		return "exec-started"
	case EventPaused:
		return "paused"
	case EventResumed:
		return "resumed"
	case EventCheckpointed:
		return "checkpointed"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one lifecycle event. ExecID is empty for the init process.
type Event struct {
	Kind        EventKind
	ContainerID string
	ExecID      string
	Pid         int
	ExitStatus  int
	ExitedAt    time.Time

	// Set on EventCreate only.
	Bundle     string
	Rootfs     []mount.Mount
	Stdio      stdio.Config
	Checkpoint string
}

// Config describes a container to create.
type Config struct {
	ID        string
	Bundle    string // absolute path holding config.json
	Namespace string
	Rootfs    []mount.Mount // mounted on Bundle/rootfs when given
	Stdio     stdio.Config
	Runtime   Runtime
	// Checkpoint is a checkpoint image directory: the container is
	// restored from it (runc restore) at Start instead of created.
	Checkpoint string

	Reaper *Reaper
	// Consoles serves terminal masters (for Stdio.Terminal and TTY execs).
	Consoles *stdio.Consoles
	// Emit receives every lifecycle event of the container, in order. It
	// is called with the container's lock held and must not block or call
	// back into the container.
	Emit func(Event)
	// BeforeInitExit runs right before the init's exit is published (the
	// OOM watcher's final read, so that TaskOOM precedes TaskExit). It is
	// called with the container's lock held and must not call back into it.
	BeforeInitExit func()
}

// initExitBound bounds how long the init's exit waits for the exits of exec
// processes that are still running (they are killed when the init exits).
const initExitBound = 5 * time.Second

// deleteExitBound bounds how long Delete of a created container waits for
// the exit of the init it killed.
const deleteExitBound = 5 * time.Second

// proc is an init or exec process. Its mutable fields are guarded by the
// container's mu; opMu serialises lifecycle operations of this one process
// (never held by State, Kill or Wait).
type proc struct {
	execID string // "" for init
	spec   *specs.Process
	stdio  stdio.Config
	opMu   sync.Mutex

	status   Status     // guarded by Container.mu
	pid      int        // guarded by Container.mu
	io       *stdio.IO  // guarded by Container.mu
	exit     ExitRecord // guarded by Container.mu; valid when status >= Stopped
	reaped   bool       // guarded by Container.mu; the exit happened (maybe not yet published)
	starting bool       // guarded by Container.mu; Start is between runtime call and its event
	held     *Exit      // guarded by Container.mu; exit that arrived while starting
	done     chan struct{}
}

func (p *proc) isInit() bool { return p.execID == "" }

// Container is one container: its init process and its exec processes, and
// the one place where their events are ordered.
type Container struct {
	id      string
	cfg     Config
	rt      *runc.Runc
	mounted bool

	mu               sync.Mutex
	init             *proc            // immutable after Create
	execs            map[string]*proc // guarded by mu
	liveExecs        int              // guarded by mu; execs started (or starting) whose exit is not published
	pendingInitExit  *Exit            // guarded by mu; init exit held for liveExecs
	initExitDeadline *time.Timer      // guarded by mu
	metrics          metricsSource    // guarded by mu; loaded on first Stats
}

// maxIDLength bounds container and exec IDs (containerd's own limit).
const maxIDLength = 76

// ValidateID checks a container or exec ID before any path is built from it:
// 1 to 76 of [A-Za-z0-9_.-], starting with a letter or digit (so never "."
// or ".."), and no "/".
func ValidateID(id string) error {
	ok := len(id) > 0 && len(id) <= maxIDLength
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		ok = alnum || i > 0 && (c == '_' || c == '.' || c == '-')
	}
	if !ok {
		return fmt.Errorf("invalid id %q: want 1 to %d of [A-Za-z0-9_.-] starting with a letter or digit: %w", id, maxIDLength, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateBundle checks that bundle is an absolute directory holding a
// config.json that parses, before anything is written into it.
func ValidateBundle(bundle string) error {
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return fmt.Errorf("bundle %q is not a clean absolute path: %w", bundle, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return fmt.Errorf("bundle %s: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("bundle %s: config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkRoot checks that the root filesystem config.json names exists, once
// the rootfs mounts are in place.
func checkRoot(bundle string) error {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return fmt.Errorf("bundle %s: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("bundle %s: config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil // the runtime decides
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("root filesystem %s of bundle %s is missing: %w", spec.Root.Path, bundle, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Create creates the container with the runtime (runc create): the init
// process exists, stopped before the user's program, until Start.
func Create(ctx context.Context, cfg Config) (_ *Container, retErr error) {
	if err := ValidateID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Reaper == nil || cfg.Emit == nil {
		return nil, fmt.Errorf("process.Create: reaper and emit are required: %w", errdefs.ErrInvalidArgument)
	}
	if err := ValidateBundle(cfg.Bundle); err != nil {
		return nil, err
	}
	if err := cfg.Runtime.Check(); err != nil {
		return nil, err
	}
	c := &Container{
		id:    cfg.ID,
		cfg:   cfg,
		rt:    cfg.Runtime.client(cfg.Bundle),
		execs: make(map[string]*proc),
		init:  &proc{stdio: cfg.Stdio, done: make(chan struct{})},
	}
	rootfs := filepath.Join(cfg.Bundle, "rootfs")
	if len(cfg.Rootfs) > 0 {
		if err := os.MkdirAll(rootfs, 0o711); err != nil {
			return nil, err
		}
		if err := mount.All(cfg.Rootfs, rootfs); err != nil {
			return nil, fmt.Errorf("mount rootfs: %w", err)
		}
		c.mounted = true
	}
	defer func() {
		if retErr != nil && c.mounted {
			_ = mount.UnmountRecursive(rootfs, 0)
		}
	}()
	if err := checkRoot(cfg.Bundle); err != nil {
		return nil, err
	}

	// runc create of an ID the runtime already has fails, and the cleanup
	// after a failed create (runc delete --force) would destroy that other
	// container: refuse it first.
	if !cfg.Runtime.stateGone(c.id) {
		return nil, fmt.Errorf("runtime root %s already has a container %q: %w", cfg.Runtime.Root, c.id, errdefs.ErrAlreadyExists)
	}
	pio, err := stdio.Open(ctx, cfg.Stdio, c.stdioOptions())
	if err != nil {
		return nil, err
	}
	if cfg.Checkpoint != "" {
		// Nothing runs until Start restores it.
		c.mu.Lock()
		c.init.status, c.init.io = Created, pio
		cfg.Emit(Event{
			Kind: EventCreate, ContainerID: c.id,
			Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, Stdio: cfg.Stdio, Checkpoint: cfg.Checkpoint,
		})
		c.mu.Unlock()
		return c, nil
	}
	logm := markLog(c.rt.Log)
	mark := cfg.Reaper.Mark()
	err = c.rt.Create(ctx, c.id, cfg.Bundle, &runc.CreateOpts{
		PidFile:       filepath.Join(cfg.Bundle, initPidFile),
		IO:            pio.Runc(),
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       cfg.Runtime.NoPivotRoot,
		NoNewKeyring:  cfg.Runtime.NoNewKeyring,
	})
	if err == nil {
		err = pio.Started(ctx)
	} else {
		err = logm.wrap(c.op("create"), err)
	}
	var pid int
	if err == nil {
		if pid, err = ReadInitPid(cfg.Bundle); err != nil {
			err = fmt.Errorf("read init pid: %w", err)
		}
	}
	if err != nil {
		pio.Close()
		_ = c.rt.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		return nil, err
	}
	exits := cfg.Reaper.Claim(pid, mark)

	c.mu.Lock()
	c.init.status, c.init.pid, c.init.io = Created, pid, pio
	cfg.Emit(Event{
		Kind: EventCreate, ContainerID: c.id, Pid: pid,
		Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, Stdio: cfg.Stdio, Checkpoint: cfg.Checkpoint,
	})
	c.mu.Unlock()
	go c.waitExit(c.init, exits)
	return c, nil
}

// op names a runtime call in errors: "runc create", "crun start", ...
func (c *Container) op(name string) string {
	return filepath.Base(c.cfg.Runtime.Binary) + " " + name
}

func (c *Container) stdioOptions() stdio.Options {
	return stdio.Options{Consoles: c.cfg.Consoles, ContainerID: c.id, Namespace: c.cfg.Namespace}
}

// ID returns the container's ID.
func (c *Container) ID() string { return c.id }

// Bundle returns the container's bundle path.
func (c *Container) Bundle() string { return c.cfg.Bundle }

// Pid returns the pid of the init process.
func (c *Container) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.init.pid
}

func (c *Container) lookup(execID string) (*proc, error) {
	if execID == "" {
		return c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q of container %q: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// waitExit owns the exit of one process: it drains the output (bounded) and
// hands the exit to the ordering logic.
func (c *Container) waitExit(p *proc, exits <-chan Exit) {
	e := <-exits
	c.mu.Lock()
	pio := p.io
	c.mu.Unlock()
	if pio != nil {
		pio.Drain(stdio.DrainBound)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p.reaped = true
	if p.starting {
		p.held = &e
		return
	}
	c.publishExitLocked(p, e)
}

// publishExitLocked is the one place where exits are ordered:
//
//   - an exit that arrives while its process's Start is between the runtime
//     call and the start event is held and published after that event
//     (see Start and finishStartLocked);
//   - the init's exit is published only after every exec exit of the
//     container; execs still alive when the init dies are killed, and after
//     initExitBound the init's exit goes out regardless;
//   - BeforeInitExit (the OOM watcher's final read) runs before the init's
//     exit, and the exit is saved in the bundle before it is published.
func (c *Container) publishExitLocked(p *proc, e Exit) {
	if p.isInit() && c.liveExecs > 0 {
		c.pendingInitExit = &e
		c.killExecsLocked()
		c.initExitDeadline = time.AfterFunc(initExitBound, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if pe := c.pendingInitExit; pe != nil {
				log.L.WithField("container_id", c.id).Warn("exec exits still missing; publishing init exit")
				c.pendingInitExit = nil
				c.emitExitLocked(c.init, *pe)
			}
		})
		return
	}
	c.emitExitLocked(p, e)
	if !p.isInit() {
		c.liveExecs--
		c.releaseInitExitLocked()
	}
}

func (c *Container) releaseInitExitLocked() {
	if c.liveExecs == 0 && c.pendingInitExit != nil {
		pe := *c.pendingInitExit
		c.pendingInitExit = nil
		if c.initExitDeadline != nil {
			c.initExitDeadline.Stop()
		}
		c.emitExitLocked(c.init, pe)
	}
}

func (c *Container) emitExitLocked(p *proc, e Exit) {
	rec := ExitRecord{Pid: p.pid, Status: e.Status, ExitedAt: e.Time}
	if p.isInit() {
		if c.cfg.BeforeInitExit != nil {
			c.cfg.BeforeInitExit()
		}
		if err := writeExit(c.cfg.Bundle, rec); err != nil {
			log.L.WithError(err).WithField("container_id", c.id).Warn("save exit status")
		}
	}
	p.exit = rec
	p.status = Stopped
	close(p.done)
	c.cfg.Emit(Event{Kind: EventExit, ContainerID: c.id, ExecID: p.execID, Pid: p.pid, ExitStatus: e.Status, ExitedAt: e.Time})
}

func (c *Container) killExecsLocked() {
	for _, p := range c.execs {
		if p.pid > 0 && !p.reaped {
			// Not reaped yet, so the pid cannot have been reused.
			_ = unix.Kill(p.pid, unix.SIGKILL)
		}
	}
}

// Start starts the init process (execID "") or an exec process.
func (c *Container) Start(ctx context.Context, execID string) (int, error) {
	c.mu.Lock()
	p, err := c.lookup(execID)
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	p.opMu.Lock()
	defer p.opMu.Unlock()

	c.mu.Lock()
	if err := check(p.status, opStart); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	if !p.isInit() {
		if c.init.reaped {
			c.mu.Unlock()
			return 0, fmt.Errorf("cannot start exec %q: init of container %q has exited: %w", execID, c.id, errdefs.ErrFailedPrecondition)
		}
		c.liveExecs++
	}
	p.starting = true
	c.mu.Unlock()

	if p.isInit() && c.cfg.Checkpoint != "" {
		return c.restore(ctx, p)
	}
	if p.isInit() {
		logm := markLog(c.rt.Log)
		err = logm.wrap(c.op("start"), c.rt.Start(ctx, c.id))
		c.mu.Lock()
		defer c.mu.Unlock()
		if err == nil {
			p.status = Running
			c.cfg.Emit(Event{Kind: EventStart, ContainerID: c.id, Pid: p.pid})
		}
		c.finishStartLocked(p)
		return p.pid, err
	}
	return c.startExec(ctx, p)
}

// restore starts a container created from a checkpoint: runc restore
// brings its processes back, running.
func (c *Container) restore(ctx context.Context, p *proc) (int, error) {
	c.mu.Lock()
	pio := p.io
	c.mu.Unlock()
	logm := markLog(c.rt.Log)
	mark := c.cfg.Reaper.Mark()
	_, err := c.rt.Restore(ctx, c.id, c.cfg.Bundle, &runc.RestoreOpts{
		CheckpointOpts: runc.CheckpointOpts{
			ImagePath: c.cfg.Checkpoint,
			WorkDir:   c.cfg.Runtime.CriuWorkPath,
		},
		IO:            pio.Runc(),
		ConsoleSocket: pio.ConsoleSocket(),
		Detach:        true,
		PidFile:       filepath.Join(c.cfg.Bundle, initPidFile),
		NoPivot:       c.cfg.Runtime.NoPivotRoot,
	})
	var pid int
	if err != nil {
		err = logm.wrap(c.op("restore"), err)
	} else if err = pio.Started(ctx); err == nil {
		if pid, err = ReadInitPid(c.cfg.Bundle); err != nil {
			err = fmt.Errorf("read init pid: %w", err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		p.starting = false
		return 0, err
	}
	p.pid, p.status = pid, Running
	c.cfg.Emit(Event{Kind: EventStart, ContainerID: c.id, Pid: pid})
	go c.waitExit(p, c.cfg.Reaper.Claim(pid, mark))
	c.finishStartLocked(p)
	return pid, nil
}

// CheckpointConfig says how to checkpoint a container (runc checkpoint).
type CheckpointConfig struct {
	ImagePath           string // where the image goes (required)
	WorkPath            string // CRIU's work directory (default: the runtime's CriuWorkPath)
	ParentPath          string
	Exit                bool // stop the container after the checkpoint
	OpenTCP             bool
	ExternalUnixSockets bool
	Terminal            bool
	FileLocks           bool
	EmptyNamespaces     []string
	CgroupsMode         string
}

// Checkpoint dumps the container's processes with CRIU into cfg.ImagePath.
func (c *Container) Checkpoint(ctx context.Context, cfg CheckpointConfig) error {
	if cfg.ImagePath == "" {
		return fmt.Errorf("checkpoint without an image path: %w", errdefs.ErrInvalidArgument)
	}
	p := c.init
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	err := check(p.status, opCheckpoint)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	work := cfg.WorkPath
	if work == "" {
		work = c.cfg.Runtime.CriuWorkPath
	}
	var actions []runc.CheckpointAction
	if !cfg.Exit {
		actions = append(actions, runc.LeaveRunning)
	}
	logm := markLog(c.rt.Log)
	err = c.rt.Checkpoint(ctx, c.id, &runc.CheckpointOpts{
		ImagePath:                cfg.ImagePath,
		WorkDir:                  work,
		ParentPath:               cfg.ParentPath,
		AllowOpenTCP:             cfg.OpenTCP,
		AllowExternalUnixSockets: cfg.ExternalUnixSockets,
		AllowTerminal:            cfg.Terminal,
		FileLocks:                cfg.FileLocks,
		EmptyNamespaces:          cfg.EmptyNamespaces,
		Cgroups:                  runc.CgroupMode(cfg.CgroupsMode),
	}, actions...)
	if err != nil {
		return logm.wrap(c.op("checkpoint"), err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg.Emit(Event{Kind: EventCheckpointed, ContainerID: c.id, Checkpoint: cfg.ImagePath})
	return nil
}

// finishStartLocked ends the start window of p: an exit that arrived during
// it is published now, after the start event.
func (c *Container) finishStartLocked(p *proc) {
	p.starting = false
	if p.held != nil {
		e := *p.held
		p.held = nil
		c.publishExitLocked(p, e)
	}
}

// ExecConfig describes an exec process to add to a running container.
type ExecConfig struct {
	ID    string
	Spec  *specs.Process
	Stdio stdio.Config
}

// AddExec registers an exec process; Start runs it.
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
	if c.init.reaped {
		return fmt.Errorf("cannot exec into container %q: its init has exited: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := c.execs[cfg.ID]; ok {
		return fmt.Errorf("exec %q of container %q: %w", cfg.ID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[cfg.ID] = &proc{execID: cfg.ID, spec: cfg.Spec, stdio: cfg.Stdio, status: Created, done: make(chan struct{})}
	c.cfg.Emit(Event{Kind: EventExecAdded, ContainerID: c.id, ExecID: cfg.ID})
	return nil
}

func (c *Container) startExec(ctx context.Context, p *proc) (int, error) {
	fail := func(err error) (int, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		p.starting = false
		c.liveExecs--
		c.releaseInitExitLocked()
		return 0, err
	}
	pio, err := stdio.Open(ctx, p.stdio, c.stdioOptions())
	if err != nil {
		return fail(err)
	}
	pidFile := filepath.Join(c.cfg.Bundle, p.execID+".pid")
	logm := markLog(c.rt.Log)
	mark := c.cfg.Reaper.Mark()
	err = c.rt.Exec(ctx, c.id, *p.spec, &runc.ExecOpts{
		PidFile: pidFile, IO: pio.Runc(), ConsoleSocket: pio.ConsoleSocket(), Detach: true,
	})
	if err != nil {
		pio.Close()
		return fail(logm.wrap(c.op("exec"), err))
	}
	if err := pio.Started(ctx); err != nil {
		pio.Close()
		return fail(err)
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		pio.Close()
		return fail(fmt.Errorf("read exec pid: %w", err))
	}
	_ = os.Remove(pidFile)
	exits := c.cfg.Reaper.Claim(pid, mark)

	c.mu.Lock()
	defer c.mu.Unlock()
	p.pid, p.io, p.status = pid, pio, Running
	c.cfg.Emit(Event{Kind: EventExecStarted, ContainerID: c.id, ExecID: p.execID, Pid: pid})
	go c.waitExit(p, exits)
	c.finishStartLocked(p)
	return pid, nil
}

// Kill signals the init (all: every process of the container) or an exec.
func (c *Container) Kill(ctx context.Context, execID string, sig int, all bool) error {
	c.mu.Lock()
	p, err := c.lookup(execID)
	if err == nil {
		err = check(p.status, opKill)
	}
	pid, reaped := 0, false
	if p != nil {
		pid, reaped = p.pid, p.reaped
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if p.isInit() {
		logm := markLog(c.rt.Log)
		return logm.wrap(c.op("kill"), c.rt.Kill(ctx, c.id, sig, &runc.KillOpts{All: all}))
	}
	if pid == 0 {
		return fmt.Errorf("exec %q has not started: %w", execID, errdefs.ErrFailedPrecondition)
	}
	if reaped {
		return fmt.Errorf("exec %q has exited: %w", execID, errdefs.ErrNotFound)
	}
	if err := unix.Kill(pid, unix.Signal(sig)); err != nil {
		return fmt.Errorf("signal exec %q: %w", execID, err)
	}
	return nil
}

// Wait blocks until the process's exit is published or ctx is done.
func (c *Container) Wait(ctx context.Context, execID string) (ExitRecord, error) {
	c.mu.Lock()
	p, err := c.lookup(execID)
	c.mu.Unlock()
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

// State returns a snapshot of the init (execID "") or an exec process.
func (c *Container) State(execID string) (ProcessState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.lookup(execID)
	if err != nil {
		return ProcessState{}, err
	}
	return ProcessState{ExecID: execID, Pid: p.pid, Status: p.status, Exit: p.exit, Stdio: p.stdio, Terminal: p.stdio.Terminal}, nil
}

// CloseStdin closes the stdin of a process so that it reads EOF.
func (c *Container) CloseStdin(execID string) error {
	c.mu.Lock()
	p, err := c.lookup(execID)
	var pio *stdio.IO
	if err == nil {
		pio = p.io
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if pio == nil {
		return nil
	}
	return pio.CloseStdin()
}

// Resize sets the terminal size of a process.
func (c *Container) Resize(execID string, width, height uint32) error {
	c.mu.Lock()
	p, err := c.lookup(execID)
	var pio *stdio.IO
	if err == nil {
		pio = p.io
	}
	stopped := err == nil && p.status >= Stopped
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

// Pause freezes every process of the container. While runc works the init
// is Pausing; a failure rolls it back to Running.
func (c *Container) Pause(ctx context.Context) error {
	p := c.init
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	if err := check(p.status, opPause); err != nil {
		c.mu.Unlock()
		return err
	}
	p.status = Pausing
	c.mu.Unlock()

	logm := markLog(c.rt.Log)
	err := logm.wrap(c.op("pause"), c.rt.Pause(ctx, c.id))
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.status != Pausing {
		// The init exited meanwhile; its exit decided the state.
		return err
	}
	if err != nil {
		p.status = Running
		return err
	}
	p.status = Paused
	c.cfg.Emit(Event{Kind: EventPaused, ContainerID: c.id})
	return nil
}

// Resume thaws a paused container.
func (c *Container) Resume(ctx context.Context) error {
	p := c.init
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	err := check(p.status, opResume)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	logm := markLog(c.rt.Log)
	if err := logm.wrap(c.op("resume"), c.rt.Resume(ctx, c.id)); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.status == Paused {
		p.status = Running
	}
	c.cfg.Emit(Event{Kind: EventResumed, ContainerID: c.id})
	return nil
}

// Update changes the container's resource limits (runc update).
func (c *Container) Update(ctx context.Context, res *specs.LinuxResources) error {
	if res == nil {
		return fmt.Errorf("update without resources: %w", errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	err := check(c.init.status, opUpdate)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	logm := markLog(c.rt.Log)
	return logm.wrap(c.op("update"), c.rt.Update(ctx, c.id, res))
}

// Stats returns the cgroup metrics of the container: a cgroup v1 or v2
// Metrics message, for the hierarchy in use.
func (c *Container) Stats(ctx context.Context) (proto.Message, error) {
	c.mu.Lock()
	err := check(c.init.status, opStats)
	src, pid := c.metrics, c.init.pid
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if src == nil {
		if src, err = loadMetricsSource(pid); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.metrics = src
		c.mu.Unlock()
	}
	return src.metrics()
}

// PidInfo is one process of the container; ExecID is set for exec processes.
type PidInfo struct {
	Pid    int
	ExecID string
}

// Pids lists the processes of the container. A container whose init has
// stopped has none, and says so with a failed precondition rather than an
// empty list: containerd, reloading its shims after a restart, takes an
// empty list for a leaked shim and deletes the task, and with it the exit
// status that nobody has read yet.
func (c *Container) Pids(ctx context.Context) ([]PidInfo, error) {
	c.mu.Lock()
	err := check(c.init.status, opPids)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	logm := markLog(c.rt.Log)
	pids, err := c.rt.Ps(ctx, c.id)
	if err != nil {
		return nil, logm.wrap(c.op("ps"), err)
	}
	c.mu.Lock()
	byPid := make(map[int]string, len(c.execs))
	for id, p := range c.execs {
		if p.pid > 0 {
			byPid[p.pid] = id
		}
	}
	c.mu.Unlock()
	out := make([]PidInfo, 0, len(pids))
	for _, pid := range pids {
		out = append(out, PidInfo{Pid: pid, ExecID: byPid[pid]})
	}
	return out, nil
}

// Delete removes an exec process, or the container when execID is "": the
// runtime state, the rootfs mount and the I/O. The init must have stopped,
// or not have started (then it is killed).
func (c *Container) Delete(ctx context.Context, execID string) (ExitRecord, error) {
	c.mu.Lock()
	p, err := c.lookup(execID)
	c.mu.Unlock()
	if err != nil {
		return ExitRecord{}, err
	}
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	st := p.status
	err = check(st, opDelete)
	c.mu.Unlock()
	if err != nil {
		return ExitRecord{}, err
	}
	if !p.isInit() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.execs, execID)
		if p.io != nil {
			p.io.Close()
		}
		p.status = Deleted
		return p.exit, nil
	}

	logm := markLog(c.rt.Log)
	derr := c.rt.Delete(ctx, c.id, &runc.DeleteOpts{Force: true})
	if derr != nil && !c.cfg.Runtime.stateGone(c.id) {
		return ExitRecord{}, logm.wrap(c.op("delete"), derr)
	}
	if st == Created && p.pid != 0 {
		// runc delete --force killed the init; its exit comes through the
		// reaper and is published before the delete event. (A container
		// created from a checkpoint and never started has no process.)
		t := time.NewTimer(deleteExitBound)
		select {
		case <-p.done:
		case <-t.C:
			log.G(ctx).WithField("container_id", c.id).Warn("no exit from the killed init")
		}
		t.Stop()
	}
	var errs error
	if c.mounted {
		errs = mount.UnmountRecursive(filepath.Join(c.cfg.Bundle, "rootfs"), 0)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.io != nil {
		errs = errors.Join(errs, p.io.Close())
	}
	if p.status != Stopped {
		// The exit never came: report what delete reports for a lost one.
		p.exit = ExitRecord{Pid: p.pid, Status: 137, ExitedAt: time.Now()}
		close(p.done)
	}
	p.status = Deleted
	c.cfg.Emit(Event{Kind: EventDelete, ContainerID: c.id, Pid: p.pid, ExitStatus: p.exit.Status, ExitedAt: p.exit.ExitedAt})
	if errs != nil {
		log.G(ctx).WithError(errs).WithField("container_id", c.id).Warn("release container resources")
	}
	return p.exit, nil
}
