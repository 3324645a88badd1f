package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mineshim/mine/test/internal/testenv"
)

const (
	// execTimeout bounds one exec process from Exec to Delete.
	execTimeout = 20 * time.Second
	// ioTimeout bounds the wait for the client's copy of a process's output
	// to end once the process has exited.
	ioTimeout = 10 * time.Second
	// stacksTimeout bounds the wait for shim-stacks.txt after SIGUSR1.
	stacksTimeout = 10 * time.Second
)

// execHost is a container started through the Go client that tests exec
// into. Its init runs whatever the test chose; the process spec of that init
// is the base of every exec spec.
type execHost struct {
	h         *harness
	ns, id    string
	container client.Container
	task      client.Task
	exitC     <-chan client.ExitStatus
	spec      specs.Process
	deleted   bool
}

// startHost creates container id of the test image under runtime rt with
// the given spec options (process args among them), creates its task with
// ioc for the init's stdio, subscribes to the init's exit and starts it. A
// cleanup kills and deletes what the test did not delete.
func (h *harness) startHost(tb testing.TB, rt, id string, ioc cio.Creator, opts ...oci.SpecOpts) *execHost {
	tb.Helper()
	c := h.newHost(tb, rt, id, ioc, opts...)
	if err := c.task.Start(c.ctx(tb, opTimeout)); err != nil {
		tb.Fatalf("start task %s: %v", id, err)
	}
	return c
}

// newHost is startHost without the start: the task is created.
func (h *harness) newHost(tb testing.TB, rt, id string, ioc cio.Creator, opts ...oci.SpecOpts) *execHost {
	tb.Helper()
	c := h.newContainer(tb, rt, id, opts...)
	ctx := c.ctx(tb, opTimeout)
	var err error
	if c.task, err = c.container.NewTask(ctx, ioc); err != nil {
		tb.Fatalf("create task %s with runtime %s: %v", id, rt, err)
	}
	// The init's wait lasts as long as the test; reads of exitC are bounded.
	wctx, wcancel := context.WithCancel(c.base())
	tb.Cleanup(wcancel)
	if c.exitC, err = c.task.Wait(wctx); err != nil {
		tb.Fatalf("wait task %s: %v", id, err)
	}
	return c
}

// newContainer is newHost without the task: the container is created.
func (h *harness) newContainer(tb testing.TB, rt, id string, opts ...oci.SpecOpts) *execHost {
	tb.Helper()
	ns := defaultNamespace
	h.ensureImage(tb, ns)
	ctx := nsContext(tb, ns, opTimeout)
	image, err := h.client.GetImage(ctx, imageRef)
	if err != nil {
		tb.Fatalf("get image %s: %v", imageRef, err)
	}
	container, err := h.client.NewContainer(ctx, id,
		client.WithImage(image),
		client.WithSnapshotter(h.snapshotter),
		client.WithNewSnapshot(id+"-snapshot", image),
		client.WithRuntime(rt, nil),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(image)}, opts...)...),
	)
	if err != nil {
		tb.Fatalf("create container %s: %v", id, err)
	}
	c := &execHost{h: h, ns: ns, id: id, container: container}
	tb.Cleanup(func() { c.cleanup(tb) })
	spec, err := container.Spec(ctx)
	if err != nil {
		tb.Fatalf("spec of %s: %v", id, err)
	}
	if spec.Process == nil {
		tb.Fatalf("spec of %s has no process", id)
	}
	c.spec = *spec.Process
	return c
}

// ctx returns a context in the host's namespace bounded by timeout.
func (c *execHost) ctx(tb testing.TB, timeout time.Duration) context.Context {
	tb.Helper()
	return nsContext(tb, c.ns, timeout)
}

// base returns a context in the host's namespace without a deadline, for
// callers that bound each operation themselves.
func (c *execHost) base() context.Context {
	return namespaces.WithNamespace(context.Background(), c.ns)
}

// kill signals the init of the host.
func (c *execHost) kill(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := c.task.Kill(c.ctx(tb, opTimeout), sig); err != nil {
		tb.Fatalf("kill %s with %v: %v", c.id, sig, err)
	}
}

// waitInit returns the exit status of the init, or fails tb when it does not
// come within exitTimeout.
func (c *execHost) waitInit(tb testing.TB) uint32 {
	tb.Helper()
	code, err := exitCode(c.exitC, exitTimeout)
	if err != nil {
		tb.Fatalf("init of %s: %v", c.id, err)
	}
	return code
}

// delete deletes the task (killing what still runs) and the container, and
// returns the exit status the task delete reported.
func (c *execHost) delete(tb testing.TB) uint32 {
	tb.Helper()
	ctx := c.ctx(tb, opTimeout)
	st, err := c.task.Delete(ctx, client.WithProcessKill)
	if err != nil {
		tb.Fatalf("delete task %s: %v", c.id, err)
	}
	if err := c.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		tb.Fatalf("delete container %s: %v", c.id, err)
	}
	c.deleted = true
	return st.ExitCode()
}

func (c *execHost) cleanup(tb testing.TB) {
	if c.deleted {
		return
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), c.ns), opTimeout)
	defer cancel()
	if c.task != nil {
		if _, err := c.task.Delete(ctx, client.WithProcessKill); err != nil {
			tb.Logf("cleanup: delete task %s: %v", c.id, err)
		}
	}
	if err := c.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		tb.Logf("cleanup: delete container %s: %v", c.id, err)
	}
}

// execSpec is a copy of the init's process spec running args, with a
// terminal when tty is set.
func (c *execHost) execSpec(tty bool, args ...string) *specs.Process {
	p := c.spec
	p.Args = args
	p.Terminal = tty
	return &p
}

// startExec adds exec process id running spec with ioc for its stdio,
// subscribes to its exit (for as long as wctx lasts) and starts it. On error
// nothing of the exec is left in the shim.
func (c *execHost) startExec(ctx, wctx context.Context, id string, spec *specs.Process, ioc cio.Creator) (client.Process, <-chan client.ExitStatus, error) {
	p, err := c.task.Exec(ctx, id, spec, ioc)
	if err != nil {
		return nil, nil, fmt.Errorf("exec %s: %w", id, err)
	}
	exitC, err := p.Wait(wctx)
	if err != nil {
		_, derr := p.Delete(ctx)
		return nil, nil, errors.Join(fmt.Errorf("wait exec %s: %w", id, err), derr)
	}
	if err := p.Start(ctx); err != nil {
		_, derr := p.Delete(ctx)
		return nil, nil, errors.Join(fmt.Errorf("start exec %s: %w", id, err), derr)
	}
	return p, exitC, nil
}

// discardIO gives a process all three FIFOs, the way ctr and CRI run
// processes: stdin ends at once, output is thrown away.
func discardIO() cio.Creator {
	return cio.NewCreator(cio.WithStreams(strings.NewReader(""), io.Discard, io.Discard))
}

// runExec runs args as exec process id with discardIO, from Exec to
// Delete, and returns its exit status. It checks that Delete reports the
// status Wait reported.
func (c *execHost) runExec(ctx context.Context, id string, args ...string) (uint32, error) {
	p, exitC, err := c.startExec(ctx, ctx, id, c.execSpec(false, args...), discardIO())
	if err != nil {
		return 0, err
	}
	var code uint32
	select {
	case st := <-exitC:
		if code, _, err = st.Result(); err != nil {
			_, _ = p.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
			return 0, fmt.Errorf("wait exec %s: %w", id, err)
		}
	case <-ctx.Done():
		_, _ = p.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
		return 0, fmt.Errorf("exec %s: no exit: %w", id, ctx.Err())
	}
	st, err := p.Delete(ctx)
	if err != nil {
		return code, fmt.Errorf("delete exec %s: %w", id, err)
	}
	if st.ExitCode() != code {
		return code, fmt.Errorf("exec %s: Wait reported exit status %d, Delete %d", id, code, st.ExitCode())
	}
	return code, nil
}

// execBatch runs n execs of `true` at once and waits for all of them. It
// returns the errors met, a status other than 0 among them.
func (c *execHost) execBatch(prefix string, n int) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		eid := execID(prefix, i)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(c.base(), execTimeout)
			defer cancel()
			code, err := c.runExec(ctx, eid, "true")
			if err == nil && code != 0 {
				err = fmt.Errorf("exec %s: status %d, want 0", eid, code)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// exitCode waits up to timeout for an exit status on exitC.
func exitCode(exitC <-chan client.ExitStatus, timeout time.Duration) (uint32, error) {
	select {
	case st, ok := <-exitC:
		if !ok {
			return 0, errors.New("exit channel closed without a status")
		}
		code, _, err := st.Result()
		return code, err
	case <-time.After(timeout):
		return 0, fmt.Errorf("no exit within %v", timeout)
	}
}

// waitIO waits up to timeout for the client's copy loops of i to end, which
// they do once the shim has closed its side of the FIFOs. Until then the
// output of the process may be incomplete.
func waitIO(i cio.IO, timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		i.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("output streams still open %v after the exit", timeout)
	}
}

// snapshot returns the events recorded so far.
func (r *eventRecorder) snapshot() []recordedEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedEvent(nil), r.events...)
}

// waitUntil waits until done holds for the recorded events. It returns the
// events recorded up to then, and an error when done did not hold within
// timeout or the stream ended.
func (r *eventRecorder) waitUntil(timeout time.Duration, what string, done func([]recordedEvent) bool) ([]recordedEvent, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		events, err, changed := append([]recordedEvent(nil), r.events...), r.err, r.changed
		r.mu.Unlock()
		if done(events) {
			return events, nil
		}
		if err != nil {
			return events, fmt.Errorf("waiting for %s of %s: %w", what, r.id, err)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return events, fmt.Errorf("no %s of %s within %v", what, r.id, timeout)
		}
	}
}

// execEventID returns the exec ID an event is about: the exec ID of
// TaskExecAdded and TaskExecStarted, the process ID of TaskExit (the
// container ID for the init). Other events have none.
func execEventID(e recordedEvent) (string, bool) {
	switch ev := e.Event.(type) {
	case *apievents.TaskExecAdded:
		return ev.GetExecID(), true
	case *apievents.TaskExecStarted:
		return ev.GetExecID(), true
	case *apievents.TaskExit:
		return ev.GetID(), true
	}
	return "", false
}

// eventsByProcess groups the exec-added, exec-started and exit events by
// process ID, each group in stream order.
func eventsByProcess(events []recordedEvent) map[string][]recordedEvent {
	m := map[string][]recordedEvent{}
	for _, e := range events {
		if id, ok := execEventID(e); ok {
			m[id] = append(m[id], e)
		}
	}
	return m
}

// execExitsSeen reports whether every exec in ids has a /tasks/exit event.
func execExitsSeen(ids []string) func([]recordedEvent) bool {
	return func(events []recordedEvent) bool {
		seen := map[string]bool{}
		for _, e := range events {
			if ex, ok := e.Event.(*apievents.TaskExit); ok {
				seen[ex.GetID()] = true
			}
		}
		for _, id := range ids {
			if !seen[id] {
				return false
			}
		}
		return true
	}
}

// execEventProblems checks that each exec in ids has exactly
// /tasks/exec-added, /tasks/exec-started, /tasks/exit in that order, with
// one pid and exit status wantCode. It reports at most max problems.
func execEventProblems(events []recordedEvent, ids []string, wantCode uint32, max int) []string {
	var problems []string
	byID := eventsByProcess(events)
	for _, id := range ids {
		if len(problems) >= max {
			return append(problems, "(more left out)")
		}
		evs := byID[id]
		if got := topics(evs); got != "/tasks/exec-added /tasks/exec-started /tasks/exit" {
			problems = append(problems, fmt.Sprintf("exec %s: events %s; want /tasks/exec-added /tasks/exec-started /tasks/exit", id, got))
			continue
		}
		started := evs[1].Event.(*apievents.TaskExecStarted)
		exit := evs[2].Event.(*apievents.TaskExit)
		if started.GetPid() == 0 || exit.GetPid() != started.GetPid() {
			problems = append(problems, fmt.Sprintf("exec %s: pid %d in exec-started, %d in exit", id, started.GetPid(), exit.GetPid()))
		}
		if exit.GetExitStatus() != wantCode {
			problems = append(problems, fmt.Sprintf("exec %s: TaskExit status %d, want %d", id, exit.GetExitStatus(), wantCode))
		}
	}
	return problems
}

// shimPID returns the pid of the one shim daemon serving container id.
func (h *harness) shimPID(tb testing.TB, ns, id string) int {
	tb.Helper()
	pids, err := shimPIDs(h.d.cfg.address(), h.shimExes, ns, id)
	if err != nil {
		tb.Fatal(err)
	}
	if len(pids) != 1 {
		tb.Fatalf("want one shim process serving %s/%s, found pids %v", ns, id, pids)
	}
	return pids[0]
}

// fdCount returns how many descriptors process pid has open.
func fdCount(tb testing.TB, pid int) int {
	tb.Helper()
	fds, err := openFDs(pid)
	if err != nil {
		tb.Fatalf("descriptors of pid %d: %v", pid, err)
	}
	return len(fds)
}

// shimGoroutines makes the mine shim daemon pid write its stacks file into
// its bundle, its working directory (testenv.ShimGoroutines), and returns
// the goroutine count; bundle names where to look when a test fails.
func shimGoroutines(tb testing.TB, pid int, bundle string) int {
	tb.Helper()
	n, err := testenv.ShimGoroutines(pid, stacksTimeout)
	if err != nil {
		tb.Fatalf("goroutines of shim %d (stacks in %s): %v", pid, bundle, err)
	}
	return n
}

// execID returns an exec ID made of prefix and n.
func execID(prefix string, n int) string {
	return fmt.Sprintf("%s-%04d", prefix, n)
}
