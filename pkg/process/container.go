package process

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/mineshim/mine/pkg/stdio"
)

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

// Container is one container: its init process, the registry of its exec
// processes, and the sequencer that orders their events. The operations
// live beside it: init.go (the container's own lifecycle), exec.go (exec
// processes), proc.go (what every process has: its exit pipeline, kill,
// wait, state, stdin, terminal), stats.go.
//
// Locking: mu guards the registry, the sequencer and the mutable fields of
// every process; it is held only to read or change them and to publish
// events, never across a runtime call, an I/O close or a wait.
type Container struct {
	id        string
	cfg       Config
	rt        *adapter
	mounted   bool
	sharedPID bool // no PID namespace of its own: kill all on the init's exit

	mu      sync.Mutex
	init    *proc            // immutable after Create
	execs   map[string]*proc // guarded by mu
	seq     *sequencer       // guarded by mu
	metrics metricsSource    // guarded by mu; loaded on first Stats
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
	spec, err := loadSpec(cfg.Bundle)
	if err != nil {
		return nil, err
	}
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
	err = c.rt.create(ctx, cfg.Bundle, &runc.CreateOpts{
		PidFile:       filepath.Join(cfg.Bundle, initPidFile),
		IO:            pio.Runc(),
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       cfg.Runtime.NoPivotRoot,
		NoNewKeyring:  cfg.Runtime.NoNewKeyring,
	})
	if err == nil {
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
		_ = c.rt.delete(context.WithoutCancel(ctx))
		return nil, err
	}
	exits := cfg.Reaper.Claim(pid, mark)

	c.mu.Lock()
	c.init.status, c.init.pid, c.init.io = Created, pid, pio
	c.emitLocked(Event{
		Kind: EventCreate, ContainerID: c.id, Pid: pid,
		Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, Stdio: cfg.Stdio, Checkpoint: cfg.Checkpoint,
	})
	c.mu.Unlock()
	go c.exitPipeline(c.init, exits)
	return c, nil
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

func (c *Container) lookupLocked(execID string) (*proc, error) {
	if execID == "" {
		return c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q of container %q: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *Container) lookup(execID string) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookupLocked(execID)
}

func (c *Container) emitLocked(e Event) {
	c.cfg.Emit(e)
}

// closeBound bounds a close of what a process or the container holds once
// nothing more is expected of it.
const closeBound = 5 * time.Second

func (c *Container) logger(ctx context.Context) *log.Entry {
	return log.G(ctx).WithField("container_id", c.id)
}
