package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mineshim/mine/pkg/cgroup"
	"github.com/mineshim/mine/pkg/stdio"
)

// The container's own lifecycle, through its init process: create, start
// (or restore), checkpoint, pause, resume, update and delete.

// deleteExitBound bounds how long Delete of a created container waits for
// the exit of the init it killed. (A variable for the tests.)
var deleteExitBound = 5 * time.Second

// createCleanupBound bounds the runtime's delete after a failed create.
var createCleanupBound = 10 * time.Second

// Create creates the container with the runtime (runc create): the init
// process exists, stopped before the user's program, until Start.
func Create(ctx context.Context, cfg Config) (_ *Container, retErr error) {
	if err := ValidateID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Reaper == nil || cfg.Emit == nil {
		return nil, fmt.Errorf("process.Create: reaper and emit are required: %w", errdefs.ErrInvalidArgument)
	}
	spec, err := loadSpec(cfg.Bundle)
	if err != nil {
		return nil, err
	}
	if err := cfg.Runtime.Check(); err != nil {
		return nil, err
	}
	c := &Container{
		id:    cfg.ID,
		cfg:   cfg,
		rt:    newAdapter(cfg.Runtime, cfg.Bundle, cfg.ID),
		execs: make(map[string]*proc),
		seq:   newSequencer(),
		init:  newProc("", nil, cfg.Stdio),
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
	if err := checkRoot(cfg.Bundle, spec); err != nil {
		return nil, err
	}
	c.sharedPID = sharedPIDNamespace(spec)

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
		c.emitLocked(Event{
			Kind: EventCreate, ContainerID: c.id,
			Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, Stdio: cfg.Stdio, Checkpoint: cfg.Checkpoint,
		})
		c.mu.Unlock()
		return c, nil
	}
	mark := cfg.Reaper.Mark()
	// Under the caller's context, unlike start (startContext), as
	// containerd's runc shim does: the container's own process does not
	// run before Start, so a caller that goes away abandons the create, and
	// the cleanup below removes what the runtime recorded. (A runtime
	// killed before it saved its state may leave its init waiting; the
	// runtime's hooks may have run.)
	err = c.rt.create(ctx, cfg.Bundle, &runc.CreateOpts{
		PidFile:       filepath.Join(cfg.Bundle, initPidFile),
		IO:            pio.Runc(),
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       cfg.Runtime.NoPivotRoot,
		NoNewKeyring:  cfg.Runtime.NoNewKeyring,
	})
	if err != nil {
		err = specRefused(cfg.Bundle, err)
	} else {
		err = pio.Started(ctx)
	}
	var pid int
	if err == nil {
		if pid, err = ReadInitPid(cfg.Bundle); err != nil {
			err = fmt.Errorf("read init pid: %w", err)
		}
	}
	if err != nil {
		pio.Close(0)
		// Not under the caller's context, which may be what ended the
		// create, but bounded: a delete whose hook hangs must not hold the
		// Create call, and the shim with it, for good.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), createCleanupBound)
		_ = c.rt.delete(dctx)
		cancel()
		return nil, err
	}
	release := c.watchExit(c.init, pid, mark)
	// The init waits for Start in the runtime: it is there to be read.
	cgroupOf, _ := cgroup.ProcCgroup(pid)
	runtimeExe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")

	c.mu.Lock()
	c.init.status, c.init.pid, c.init.io = Created, pid, pio
	c.cgroupOf, c.runtimeExe = cgroupOf, runtimeExe
	c.emitLocked(Event{
		Kind: EventCreate, ContainerID: c.id, Pid: pid,
		Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, Stdio: cfg.Stdio, Checkpoint: cfg.Checkpoint,
	})
	c.mu.Unlock()
	release()
	return c, nil
}

// Start starts the init process (execID "") or an exec process.
func (c *Container) Start(ctx context.Context, execID string) (int, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return 0, err
	}
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if !p.isInit() {
		return c.startExec(ctx, p)
	}

	c.mu.Lock()
	if err := check(p.status, opStart); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.seq.beginStart("")
	if c.cfg.Checkpoint == "" {
		// A signal sent while runc starts the init (by another client)
		// waits for the program as well, as long as the start may take.
		p.execBy = c.execDeadline(startBound)
	}
	c.mu.Unlock()

	if c.cfg.Checkpoint != "" {
		return c.restore(ctx, p)
	}
	sctx, end := c.beginStart(ctx, p, startBound)
	err = c.rt.start(sctx)
	end()
	c.mu.Lock()
	defer c.mu.Unlock()
	p.execBy = time.Time{}
	if err == nil {
		p.status = Running
		p.execBy = c.execDeadline(execWait)
	}
	c.applyLocked(c.seq.endStart("", err == nil))
	return p.pid, err
}

// restore starts a container created from a checkpoint: runc restore
// brings its processes back, running.
func (c *Container) restore(ctx context.Context, p *proc) (int, error) {
	c.mu.Lock()
	pio := p.io
	c.mu.Unlock()
	mark := c.cfg.Reaper.Mark()
	rctx, end := c.beginStart(ctx, p, restoreBound)
	defer end()
	err := c.rt.restore(rctx, c.cfg.Bundle, &runc.RestoreOpts{
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
	if err == nil {
		if err = pio.Started(rctx); err == nil {
			if pid, err = ReadInitPid(c.cfg.Bundle); err != nil {
				err = fmt.Errorf("read init pid: %w", err)
			}
		}
	}
	var cgroupOf []byte
	if err == nil {
		// At once: a restored process may end soon, and once it is
		// reaped its cgroup can no longer be found from its pid.
		cgroupOf, _ = cgroup.ProcCgroup(pid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.applyLocked(c.seq.endStart("", false))
		return 0, err
	}
	p.pid, p.status = pid, Running
	c.cgroupOf = cgroupOf
	c.watchExit(p, pid, mark)()
	c.applyLocked(c.seq.endStart("", true))
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
	err = c.rt.checkpoint(ctx, &runc.CheckpointOpts{
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
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.emitLocked(Event{Kind: EventCheckpointed, ContainerID: c.id, Checkpoint: cfg.ImagePath})
	return nil
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

	pctx, cancel := context.WithTimeout(ctx, freezeBound)
	err := c.rt.pause(pctx)
	cancel()
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
	c.emitLocked(Event{Kind: EventPaused, ContainerID: c.id})
	return nil
}

// Resume thaws a paused container.
func (c *Container) Resume(ctx context.Context) error {
	p := c.init
	p.opMu.Lock()
	defer p.opMu.Unlock()
	c.mu.Lock()
	err := check(p.status, opResume)
	if err == nil {
		c.seq.beginResume()
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	// Bounded: the exits that come meanwhile wait for it (rule 4).
	rctx, cancel := context.WithTimeout(ctx, freezeBound)
	err = c.rt.resume(rctx)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	resumed := err == nil && p.status == Paused
	if resumed {
		p.status = Running
	}
	c.applyLocked(c.seq.endResume(resumed))
	return err
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
	return c.rt.update(ctx, res)
}

// Delete removes an exec process, or the container when execID is "": the
// runtime state, the rootfs mount, and the I/O of the init and of every exec
// left undeleted. The init must have stopped, or not have started (then it
// is killed). Every wait in it is bounded and none holds a lock. When it
// returns nothing is mounted on the rootfs any more; an overlay's teardown,
// which syncs its upper layer, runs just after (detachRootfs).
func (c *Container) Delete(ctx context.Context, execID string) (ExitRecord, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return ExitRecord{}, err
	}
	if !p.isInit() {
		return c.deleteExec(ctx, p)
	}
	c.lockForDelete(p)
	defer p.opMu.Unlock()
	c.mu.Lock()
	st, pid := p.status, p.pid
	err = check(st, opDelete)
	c.mu.Unlock()
	if err != nil {
		return ExitRecord{}, err
	}

	if err := c.rt.delete(ctx); err != nil {
		return ExitRecord{}, err
	}
	if st == Created && pid != 0 {
		// runc delete --force killed the init; its exit comes through the
		// pipeline and is published before the delete event. (A container
		// created from a checkpoint and never started has no process.)
		if !waitDone(p.done, deleteExitBound) {
			c.logger(ctx).Warn("no exit from the killed init")
		}
	}
	var (
		errs    error
		release func()
	)
	if c.mounted {
		release, errs = detachRootfs(filepath.Join(c.cfg.Bundle, "rootfs"))
	}
	// The rootfs's teardown runs beside the reply, not before it.
	defer func() {
		switch {
		case release == nil:
		case c.cfg.Go != nil:
			c.cfg.Go(release)
		default:
			go release()
		}
	}()
	// The init's I/O, and that of execs nobody deleted: a pod's shim lives
	// as long as its pod, so nothing of a deleted container may stay.
	c.mu.Lock()
	procs := []*proc{p}
	for _, e := range c.execs {
		procs = append(procs, e)
	}
	c.mu.Unlock()
	for _, q := range procs {
		errs = errors.Join(errs, c.releaseIO(q))
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.execs {
		e.status = Deleted
		e.finish()
		delete(c.execs, id)
	}
	if p.status != Stopped {
		// The exit never came: report what delete reports for a lost one.
		p.exit = ExitRecord{Pid: p.pid, Status: 137, ExitedAt: time.Now()}
	}
	p.status = Deleted
	p.finish()
	c.emitLocked(Event{Kind: EventDelete, ContainerID: c.id, Pid: p.pid, ExitStatus: p.exit.Status, ExitedAt: p.exit.ExitedAt})
	if errs != nil {
		c.logger(ctx).WithError(errs).Warn("release container resources")
	}
	return p.exit, nil
}

// waitDone waits for done to close, at most d.
func waitDone(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
