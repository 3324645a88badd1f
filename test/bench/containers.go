package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// setupParallelism bounds the concurrent client calls of untimed setup
	// and teardown, so they do not swamp two cores.
	setupParallelism = 4
	exitTimeout      = 30 * time.Second
)

// box is a container created through the Go client, with its task once
// created.
type box struct {
	id    string
	rt    Runtime
	c     client.Container
	t     client.Task
	exitC <-chan client.ExitStatus
	// output gives the task stdout and stderr FIFOs, read and dropped by
	// the client, as CRI gives every container of a pod; without it the
	// task has no stdio.
	output bool
}

// newBox creates the container (metadata and snapshot) of args, without a
// task.
func (e *Env) newBox(ctx context.Context, rt Runtime, id string, args []string, opts ...oci.SpecOpts) (*box, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	specOpts := append([]oci.SpecOpts{oci.WithDefaultUnixDevices, oci.WithImageConfig(e.image), oci.WithProcessArgs(args...)}, opts...)
	c, err := e.client.NewContainer(ctx, id,
		client.WithImage(e.image),
		client.WithSnapshotter(e.snapshotter),
		client.WithNewSnapshot(id+"-snap", e.image),
		client.WithRuntime(string(rt), nil),
		client.WithNewSpec(specOpts...),
	)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	return &box{id: id, rt: rt, c: c}, nil
}

// createTask creates the task (shim start, runc create) with no stdio and
// subscribes to its exit.
func (b *box) createTask(ctx context.Context, e *Env) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	creator := cio.NullIO
	if b.output {
		creator = cio.NewCreator(cio.WithStreams(nil, io.Discard, io.Discard))
	}
	t, err := b.c.NewTask(ctx, creator)
	if err != nil {
		return fmt.Errorf("create task %s (%s): %w", b.id, b.rt.Short(), err)
	}
	b.t = t
	// Wait lives as long as the container: not bound by ctx.
	if b.exitC, err = t.Wait(e.nsCtx(context.Background())); err != nil {
		return fmt.Errorf("wait task %s: %w", b.id, err)
	}
	return nil
}

// start starts the created task.
func (b *box) start(ctx context.Context, e *Env) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	if err := b.t.Start(ctx); err != nil {
		return fmt.Errorf("start task %s (%s): %w", b.id, b.rt.Short(), err)
	}
	return nil
}

// remove kills the task if it runs, waits for its exit, and deletes the
// task and the container with its snapshot.
func (b *box) remove(ctx context.Context, e *Env) error {
	ctx, cancel := context.WithTimeout(e.nsCtx(ctx), opTimeout)
	defer cancel()
	var errs []error
	if b.t != nil {
		if st, err := b.t.Status(ctx); err == nil && st.Status != client.Stopped {
			if err := b.t.Kill(ctx, syscall.SIGKILL); err != nil {
				errs = append(errs, fmt.Errorf("kill %s: %w", b.id, err))
			}
		}
		select {
		case <-b.exitC:
		case <-time.After(exitTimeout):
			errs = append(errs, fmt.Errorf("%s did not exit within %v", b.id, exitTimeout))
		}
		if _, err := b.t.Delete(ctx, client.WithProcessKill); err != nil {
			errs = append(errs, fmt.Errorf("delete task %s: %w", b.id, err))
		}
	}
	if err := b.c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		errs = append(errs, fmt.Errorf("delete container %s: %w", b.id, err))
	}
	return errors.Join(errs...)
}

// opCtx bounds one sequence of client calls, in the benchmark namespace.
func (e *Env) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.nsCtx(ctx), opTimeout)
}

// parallel runs f(i) for i in [0, n) with at most par at once and joins
// the errors.
func parallel(n, par int, f func(i int) error) error {
	sem := make(chan struct{}, par)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startSleepers starts n containers running `sleep 3600` with runtime rt.
// On error, the ones made are removed.
func (e *Env) startSleepers(ctx context.Context, rt Runtime, prefix string, n int) ([]*box, error) {
	boxes := make([]*box, n)
	err := parallel(n, setupParallelism, func(i int) error {
		b, err := e.newBox(ctx, rt, fmt.Sprintf("%s-%d", prefix, i), []string{"sleep", "3600"})
		if err != nil {
			return err
		}
		boxes[i] = b
		if err := b.createTask(ctx, e); err != nil {
			return err
		}
		return b.start(ctx, e)
	})
	if err != nil {
		return nil, errors.Join(err, e.removeAll(ctx, boxes))
	}
	return boxes, nil
}

// removeAll removes the boxes (nil entries are skipped).
func (e *Env) removeAll(ctx context.Context, boxes []*box) error {
	return parallel(len(boxes), setupParallelism, func(i int) error {
		if boxes[i] == nil {
			return nil
		}
		return boxes[i].remove(ctx, e)
	})
}

// shimOf returns the pid of the shim daemon serving b.
func (e *Env) shimOf(b *box) (int, error) {
	procs, err := e.shimProcs(map[string]bool{b.id: true})
	if err != nil {
		return 0, err
	}
	if len(procs) != 1 {
		return 0, fmt.Errorf("%d shim processes serve %s, want 1", len(procs), b.id)
	}
	return procs[0].pid, nil
}

// execSpec is the process spec of an exec of args into b: its init's spec
// with other args.
func (b *box) execSpec(ctx context.Context, e *Env, args ...string) (*specs.Process, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	spec, err := b.c.Spec(ctx)
	if err != nil {
		return nil, err
	}
	p := *spec.Process
	p.Args = args
	p.Terminal = false
	return &p, nil
}

// execTrue runs `true` in b as exec execID to completion and deletes it.
func (b *box) execTrue(ctx context.Context, e *Env, spec *specs.Process, execID string) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	p, err := b.t.Exec(ctx, execID, spec, cio.NullIO)
	if err != nil {
		return fmt.Errorf("exec %s in %s: %w", execID, b.id, err)
	}
	exitC, err := p.Wait(ctx)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		_, _ = p.Delete(ctx, client.WithProcessKill)
		return fmt.Errorf("start exec %s in %s: %w", execID, b.id, err)
	}
	select {
	case st := <-exitC:
		if st.ExitCode() != 0 {
			return fmt.Errorf("exec %s in %s: exit status %d", execID, b.id, st.ExitCode())
		}
	case <-time.After(exitTimeout):
		return fmt.Errorf("exec %s in %s: no exit within %v", execID, b.id, exitTimeout)
	}
	_, err = p.Delete(ctx)
	return err
}
