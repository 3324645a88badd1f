package process

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
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
	// BeforeExit runs right before the exit of the init or of an exec is
	// published (the OOM watcher's read, so that a TaskOOM precedes the
	// TaskExit it caused). It is called with the container's lock held and
	// must not call back into it.
	BeforeExit func()
	// Go runs, in a goroutine its caller owns and waits for before the
	// process exits, the work that Delete leaves after it has returned:
	// the teardown of a detached rootfs (rootfs.go). Delete calls it with
	// the container's operation lock held: it must not block. Nil: a
	// goroutine of its own, which nothing waits for.
	Go func(func())
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
	// cgroupOf is the content of the init's /proc/<pid>/cgroup, read as
	// it was created, so that Stats finds its cgroup once it has exited
	// (CRI reads the kill counter after an exit); guarded by mu, dropped
	// once metrics is loaded.
	cgroupOf []byte
	// runtimeExe is the executable of the runtime's init as it waited for
	// Start (/proc/<pid>/exe): a started process whose executable still
	// reads so has not exec'd its program yet (see awaitExec). Guarded by
	// mu; "" when unknown.
	runtimeExe string
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
