package minimgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// DefaultStopTimeout is how long Stop waits after the stop signal before
// it sends SIGKILL, unless told otherwise.
const DefaultStopTimeout = 10 * time.Second

// Stop stops container id: its stop signal (recorded at create, SIGTERM by
// default; sig overrides it when not 0) to the init, then, when it has not
// exited after timeout, SIGKILL to all its processes. It returns the exit.
// A container that has already stopped is left as it is.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration, sig syscall.Signal) (Exit, error) {
	c, err := m.Open(ctx, id)
	if errors.Is(err, ErrShimDead) {
		return m.reap(ctx, id)
	}
	if err != nil {
		return Exit{}, err
	}
	defer c.Close()
	st, err := c.State(ctx)
	if err != nil {
		return Exit{}, err
	}
	switch st.Status {
	case StatusStopped:
		return *st.Exit, nil
	case StatusCreated:
		// Never started: nothing to signal gracefully.
		timeout = 0
	case StatusPaused:
		// A frozen process cannot act on the signal.
		if err := c.Resume(ctx); err != nil {
			return Exit{}, err
		}
	}
	if sig == 0 {
		sig = c.rec.stopSignal()
	}
	if timeout > 0 {
		if err := c.Kill(ctx, sig, false); err != nil && !errdefs.IsNotFound(err) {
			return Exit{}, err
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		exit, err := c.Wait(wctx)
		cancel()
		if err == nil {
			return exit, nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return Exit{}, err
		}
	}
	if err := c.Kill(ctx, unix.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
		return Exit{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, forceExitTimeout)
	defer cancel()
	exit, err := c.Wait(wctx)
	if err != nil {
		return Exit{}, fmt.Errorf("container %q did not exit after SIGKILL: %w", id, err)
	}
	return exit, nil
}

func (r record) stopSignal() syscall.Signal {
	if r.StopSignal != "" {
		if s := unix.SignalNum(r.StopSignal); s != 0 {
			return s
		}
	}
	return unix.SIGTERM
}

// Restart stops container id (see Stop), deletes it and creates and starts
// it again from the config it ran with, in the same state directory and
// shim setup; its output goes to its log (a new one).
func (m *Manager) Restart(ctx context.Context, id string, timeout time.Duration) error {
	dir, rec, err := m.load(id)
	if err != nil && !errors.Is(err, ErrShimDead) {
		return err
	}
	spec, err := readSpec(filepath.Join(dir, configFile))
	if err != nil {
		return err
	}
	if rec.OwnBundle {
		// Its bundle goes with the delete and is unpacked again: the
		// image must still be there before anything is torn down.
		if path, _ := splitImageRef(rec.Image); !exists(path) {
			return fmt.Errorf("restart %s: its image %s is gone: %w", id, path, errdefs.ErrNotFound)
		}
	}
	if _, err := m.Stop(ctx, id, timeout, 0); err != nil {
		return err
	}
	if _, err := m.Delete(ctx, id, true); err != nil {
		return err
	}
	bundle, image := rec.Bundle, ""
	if rec.OwnBundle {
		// Delete removed the bundle unpacked for it: unpacked again.
		bundle, image = "", rec.Image
	}
	c, err := m.Create(ctx, CreateOpts{
		Bundle: bundle, Image: image, ID: id, Terminal: rec.Terminal, StopSignal: rec.StopSignal,
		IO:   IO{Log: true, OpenStdin: rec.OpenStdin},
		Spec: func(s *specs.Spec) error { *s = *spec; return nil },
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Start(ctx); err != nil {
		_, _ = c.Delete(context.WithoutCancel(ctx), true)
		return err
	}
	return nil
}

// Attach connects to the init of a running container as Create's IO
// would: o.Stdin goes to its stdin FIFO (when it was created with one),
// its output from now on to o.Stdout and o.Stderr. Detaching (the keys,
// or Close) leaves it running; closing o.Stdin does not close its stdin.
func (c *Container) Attach(ctx context.Context, o IO) error {
	a := &attachment{
		logPath: c.rec.Log, terminal: c.rec.Terminal, detachKeys: o.DetachKeys,
		stdout: o.Stdout, stderr: o.Stderr,
		exited: make(chan struct{}), detached: make(chan struct{}),
	}
	if c.rec.Terminal {
		a.stderr = nil
	}
	if a.logPath == "" {
		return fmt.Errorf("container %q has no log: %w", c.rec.ID, errdefs.ErrNotFound)
	}
	stdin := filepath.Join(c.dir, ioDir, ioName("")+".stdin")
	if o.Stdin != nil {
		if _, err := os.Stat(stdin); err == nil {
			a.stdinPath, a.stdinSrc = stdin, o.Stdin
		} else {
			// No stdin to send to: ours is read for the detach keys
			// only.
			a.watchDetachKeys(o.Stdin)
		}
	}
	a.followFrom(LogOptions{Follow: true, FromEnd: true})
	if err := a.connectStdin(nil); err != nil {
		a.stop()
		return err
	}
	c.io = a
	return nil
}

// Detached is closed when the detach keys came on the attached stdin.
func (c *Container) Detached() <-chan struct{} { return c.io.Detached() }

// Update changes the resources of the running container.
func (c *Container) Update(ctx context.Context, r *specs.LinuxResources) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("resources: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	a := &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: data}
	sctx, cancel := bounded(ctx)
	defer cancel()
	if _, err := c.task.Update(sctx, &taskAPI.UpdateTaskRequest{ID: c.rec.ID, Resources: a}); err != nil {
		return fmt.Errorf("update %s: %w", c.rec.ID, fromShim(err))
	}
	return nil
}
