package e2e

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/mineshim/mine/test/internal/testenv"
)

// sleeper is the init of containers that only host exec processes.
var sleeper = []string{"sleep", "100000"}

func TestExecOutputAndExitCode(t *testing.T) {
	h := requireHarness(t)
	c := h.startHost(t, h.runtime, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
	tests := []struct {
		name     string
		args     []string
		wantOut  []string // lines, in any order
		wantCode int
	}{
		{name: "echo", args: []string{"echo", "hi"}, wantOut: []string{"hi"}, wantCode: 0},
		{name: "exit 3", args: []string{"sh", "-c", "exit 3"}, wantCode: 3},
		{name: "false", args: []string{"false"}, wantCode: 1},
		{name: "stdout and stderr then exit 7", args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, wantOut: []string{"err", "out"}, wantCode: 7},
		{name: "exit 255", args: []string{"sh", "-c", "exit 255"}, wantCode: 255},
		{name: "killed by its own signal", args: []string{"sh", "-c", "kill -9 $$"}, wantCode: 137},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("ctr task exec", func(t *testing.T) {
				out, code := h.ctr(t, append([]string{"-n", c.ns, "task", "exec", "--exec-id", execID("ctr", i), c.id}, tc.args...)...)
				if code != tc.wantCode || !slices.Equal(sortedLines(out), tc.wantOut) {
					t.Errorf("ctr task exec %q: exit %d, output %q; want exit %d, lines %q", tc.args, code, out, tc.wantCode, tc.wantOut)
				}
			})
			t.Run("client", func(t *testing.T) {
				ctx := c.ctx(t, execTimeout)
				stdout, stderr := newOutputBuffer(), newOutputBuffer()
				p, exitC, err := c.startExec(ctx, ctx, execID("client", i), c.execSpec(false, tc.args...),
					cio.NewCreator(cio.WithStreams(nil, stdout, stderr)))
				if err != nil {
					t.Fatal(err)
				}
				code, err := exitCode(exitC, exitTimeout)
				if err != nil {
					t.Fatalf("exec %q: %v", tc.args, err)
				}
				if err := waitIO(p.IO(), ioTimeout); err != nil {
					t.Error(err)
				}
				st, err := p.Delete(ctx)
				if err != nil {
					t.Fatalf("delete exec: %v", err)
				}
				out := stdout.String() + stderr.String()
				if int(code) != tc.wantCode || !slices.Equal(sortedLines(out), tc.wantOut) {
					t.Errorf("exec %q: Wait status %d, output %q; want %d, lines %q", tc.args, code, out, tc.wantCode, tc.wantOut)
				}
				if st.ExitCode() != code {
					t.Errorf("exec %q: Delete reported exit status %d, Wait %d", tc.args, st.ExitCode(), code)
				}
				if strings.Contains(stdout.String(), "err") || strings.Contains(stderr.String(), "out") {
					t.Errorf("streams mixed up: stdout %q, stderr %q", stdout.String(), stderr.String())
				}
			})
		})
	}
	// The host is unharmed by its execs.
	if st, err := c.task.Status(c.ctx(t, opTimeout)); err != nil || st.Status != client.Running {
		t.Fatalf("host after the execs: status %q, %v; want running", st.Status, err)
	}
	select {
	case st := <-c.exitC:
		t.Fatalf("the init exited during the execs: %+v", st)
	default:
	}
	c.delete(t)
}

// TestExecErrors checks the errors of exec requests that cannot be served,
// and that the shim stays usable after each.
func TestExecErrors(t *testing.T) {
	h := requireHarness(t)
	c := h.startHost(t, h.runtime, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
	spec := c.execSpec(false, "true")

	t.Run("duplicate exec ID", func(t *testing.T) {
		tests := []struct {
			name string
			// prepare leaves exec id in the state the case names and
			// returns a function that removes it.
			prepare func(t *testing.T, ctx context.Context, id string) func()
		}{
			{
				name: "created",
				prepare: func(t *testing.T, ctx context.Context, id string) func() {
					p, err := c.task.Exec(ctx, id, spec, discardIO())
					if err != nil {
						t.Fatal(err)
					}
					return func() {
						if _, err := p.Delete(ctx); err != nil {
							t.Errorf("delete created exec: %v", err)
						}
					}
				},
			},
			{
				name: "running",
				prepare: func(t *testing.T, ctx context.Context, id string) func() {
					p, exitC, err := c.startExec(ctx, ctx, id, c.execSpec(false, sleeper...), discardIO())
					if err != nil {
						t.Fatal(err)
					}
					return func() {
						if err := p.Kill(ctx, syscall.SIGKILL); err != nil {
							t.Errorf("kill exec: %v", err)
						}
						if code, err := exitCode(exitC, exitTimeout); err != nil || code != 137 {
							t.Errorf("killed exec: status %d, %v; want 137", code, err)
						}
						if _, err := p.Delete(ctx); err != nil {
							t.Errorf("delete exec: %v", err)
						}
					}
				},
			},
			{
				name: "exited, not deleted",
				prepare: func(t *testing.T, ctx context.Context, id string) func() {
					p, exitC, err := c.startExec(ctx, ctx, id, spec, discardIO())
					if err != nil {
						t.Fatal(err)
					}
					if code, err := exitCode(exitC, exitTimeout); err != nil || code != 0 {
						t.Fatalf("exec true: status %d, %v", code, err)
					}
					return func() {
						if _, err := p.Delete(ctx); err != nil {
							t.Errorf("delete exec: %v", err)
						}
					}
				},
			},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				ctx := c.ctx(t, execTimeout)
				id := execID("dup", i)
				remove := tc.prepare(t, ctx, id)
				_, err := c.task.Exec(ctx, id, spec, discardIO())
				if !errdefs.IsAlreadyExists(err) {
					t.Errorf("second exec %s while the first is %s: error %v, want AlreadyExists", id, tc.name, err)
				}
				remove()
				// Once deleted, the ID is free again.
				if code, err := c.runExec(ctx, id, "true"); err != nil || code != 0 {
					t.Errorf("exec %s after the first was deleted: status %d, %v; want 0", id, code, err)
				}
			})
		}
	})

	t.Run("unknown exec ID", func(t *testing.T) {
		const unknown = "no-such-exec"
		svc := h.client.TaskService()
		tests := []struct {
			name string
			call func(ctx context.Context) error
		}{
			{name: "LoadProcess", call: func(ctx context.Context) error {
				_, err := c.task.LoadProcess(ctx, unknown, nil)
				return err
			}},
			{name: "Start", call: func(ctx context.Context) error {
				_, err := svc.Start(ctx, &tasks.StartRequest{ContainerID: c.id, ExecID: unknown})
				return errgrpc.ToNative(err)
			}},
			{name: "Kill", call: func(ctx context.Context) error {
				_, err := svc.Kill(ctx, &tasks.KillRequest{ContainerID: c.id, ExecID: unknown, Signal: uint32(syscall.SIGKILL)})
				return errgrpc.ToNative(err)
			}},
			{name: "Wait", call: func(ctx context.Context) error {
				_, err := svc.Wait(ctx, &tasks.WaitRequest{ContainerID: c.id, ExecID: unknown})
				return errgrpc.ToNative(err)
			}},
			{name: "ResizePty", call: func(ctx context.Context) error {
				_, err := svc.ResizePty(ctx, &tasks.ResizePtyRequest{ContainerID: c.id, ExecID: unknown, Width: 80, Height: 24})
				return errgrpc.ToNative(err)
			}},
			{name: "CloseIO", call: func(ctx context.Context) error {
				_, err := svc.CloseIO(ctx, &tasks.CloseIORequest{ContainerID: c.id, ExecID: unknown, Stdin: true})
				return errgrpc.ToNative(err)
			}},
			{name: "DeleteProcess", call: func(ctx context.Context) error {
				_, err := svc.DeleteProcess(ctx, &tasks.DeleteProcessRequest{ContainerID: c.id, ExecID: unknown})
				return errgrpc.ToNative(err)
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if err := tc.call(c.ctx(t, opTimeout)); !errdefs.IsNotFound(err) {
					t.Errorf("%s of unknown exec %q: error %v, want NotFound", tc.name, unknown, err)
				}
			})
		}
	})

	t.Run("missing binary", func(t *testing.T) {
		ctx := c.ctx(t, execTimeout)
		p, err := c.task.Exec(ctx, "missing", c.execSpec(false, "/no/such/binary"), discardIO())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err == nil {
			t.Errorf("start of an exec of a missing binary succeeded")
		}
		if _, err := p.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("delete the exec that failed to start: %v", err)
		}
		if code, err := c.runExec(ctx, "after-missing", "true"); err != nil || code != 0 {
			t.Errorf("exec after a failed one: status %d, %v; want 0", code, err)
		}
	})

	// The init's exit is published at once: no failed or deleted exec above
	// holds it back (the mine shim waits up to 5 s for execs it thinks
	// still run).
	t.Run("init exit not held", func(t *testing.T) {
		// Timed from before the kill: a held exit comes 5 s after the
		// init's, however long the kill call takes to return.
		start := time.Now()
		c.kill(t, syscall.SIGKILL)
		if code := c.waitInit(t); code != 137 {
			t.Errorf("init exit status %d, want 137", code)
		}
		// Held back, it would come 5 s after the kill at the earliest; the
		// bound leaves a loaded machine all the room below that.
		if d := time.Since(start); d > 4500*time.Millisecond {
			t.Errorf("init exit took %v after SIGKILL: held back by exec bookkeeping", d.Round(time.Millisecond))
		}
	})

	t.Run("exec after init exit", func(t *testing.T) {
		// Runs after "init exit not held": the init has exited.
		ctx := c.ctx(t, execTimeout)
		p, err := c.task.Exec(ctx, "late", spec, discardIO())
		if err == nil {
			err = p.Start(ctx)
			if _, derr := p.Delete(ctx); derr != nil && !errdefs.IsNotFound(derr) {
				t.Errorf("delete the late exec: %v", derr)
			}
		}
		switch {
		case err == nil:
			t.Errorf("exec into a container whose init exited succeeded")
		case h.runtime == runtimeMine && !errdefs.IsFailedPrecondition(err):
			t.Errorf("exec into a container whose init exited: %v, want FailedPrecondition", err)
		default:
			t.Logf("refused as expected: %v", err)
		}
	})
	c.delete(t)
}

// TestExecSequentialNoLeaks runs 1000 exec cycles of `true` into one
// container and checks that every exit arrived and that the shim holds no
// more descriptors or goroutines after them than before.
func TestExecSequentialNoLeaks(t *testing.T) {
	h := requireHarness(t)
	const (
		warmup = 10
		cycles = 1000
		slack  = 5 // descriptors or goroutines a shim may vary by
	)
	id := newID(t)
	rec := h.recordEvents(t, defaultNamespace, id)
	c := h.startHost(t, h.runtime, id, discardIO(), oci.WithProcessArgs(sleeper...))
	shim := h.shimPID(t, c.ns, c.id)
	bundle := h.bundleDir(c.ns, c.id)
	countGoroutines := h.runtime == runtimeMine
	if !countGoroutines {
		t.Logf("runtime %s writes no %s: only descriptors are counted", h.runtime, testenv.StacksFile)
	}

	run := func(prefix string, n int) []string {
		t.Helper()
		ids := make([]string, n)
		for i := range ids {
			ids[i] = execID(prefix, i)
			ctx, cancel := context.WithTimeout(c.base(), execTimeout)
			code, err := c.runExec(ctx, ids[i], "true")
			cancel()
			if err != nil || code != 0 {
				t.Fatalf("cycle %d of %s: status %d, %v", i, prefix, code, err)
			}
		}
		return ids
	}

	// The first execs set up what a shim sets up once (pools, the reaper's
	// tables, a connection to containerd's events service).
	run("warm", warmup)
	fdsBefore := fdCount(t, shim)
	var goroutinesBefore int
	if countGoroutines {
		goroutinesBefore = shimGoroutines(t, shim, bundle)
	}

	start := time.Now()
	ids := run("cycle", cycles)
	elapsed := time.Since(start)

	fdsAfter := fdCount(t, shim)
	t.Logf("%d exec cycles in %v (%v each); shim %d descriptors: %d before, %d after",
		cycles, elapsed.Round(time.Millisecond), (elapsed / cycles).Round(time.Microsecond), shim, fdsBefore, fdsAfter)
	if fdsAfter > fdsBefore+slack {
		t.Errorf("shim descriptors grew from %d to %d over %d exec cycles", fdsBefore, fdsAfter, cycles)
	}
	if countGoroutines {
		goroutinesAfter := shimGoroutines(t, shim, bundle)
		t.Logf("shim goroutines: %d before, %d after", goroutinesBefore, goroutinesAfter)
		if goroutinesAfter > goroutinesBefore+slack {
			t.Errorf("shim goroutines grew from %d to %d over %d exec cycles; stacks in %s", goroutinesBefore, goroutinesAfter, cycles, bundle)
		}
	}

	events, err := rec.waitUntil(eventTimeout, "exit events of every exec", execExitsSeen(ids))
	if err != nil {
		t.Error(err)
	}
	if p := execEventProblems(events, ids, 0, 10); len(p) > 0 {
		t.Error(strings.Join(p, "\n"))
	}
	if got := pidsSeen(events); got < cycles/2 {
		// Pids must differ between execs: a shim that reports one stale
		// pid would pass the per-exec checks.
		t.Errorf("only %d distinct exec pids in %d exec-started events", got, cycles+warmup)
	}
	if t.Failed() {
		return // keep the stacks file with the container for inspection
	}
	c.delete(t)
	h.assertNoTraces(t, c.ns, c.id, "")
}

// pidsSeen counts the distinct pids of exec-started events.
func pidsSeen(events []recordedEvent) int {
	pids := map[uint32]bool{}
	for _, e := range events {
		if s, ok := e.Event.(*apievents.TaskExecStarted); ok {
			pids[s.GetPid()] = true
		}
	}
	return len(pids)
}

// TestExecParallelBursts runs 200 execs of `true` in bursts of 10 at once:
// no exit may be lost, and each exec's events come in order.
func TestExecParallelBursts(t *testing.T) {
	h := requireHarness(t)
	const bursts, width = 20, 10
	id := newID(t)
	rec := h.recordEvents(t, defaultNamespace, id)
	c := h.startHost(t, h.runtime, id, discardIO(), oci.WithProcessArgs(sleeper...))

	var ids []string
	start := time.Now()
	for b := range bursts {
		prefix := fmt.Sprintf("b%02d", b)
		for i := range width {
			ids = append(ids, execID(prefix, i))
		}
		if err := c.execBatch(prefix, width); err != nil {
			t.Fatalf("burst %d: %v", b, err)
		}
	}
	t.Logf("%d execs in %d bursts of %d in %v", bursts*width, bursts, width, time.Since(start).Round(time.Millisecond))

	events, err := rec.waitUntil(eventTimeout, "exit events of every exec", execExitsSeen(ids))
	if err != nil {
		t.Error(err)
	}
	if p := execEventProblems(events, ids, 0, 20); len(p) > 0 {
		t.Error(strings.Join(p, "\n"))
	}
	c.delete(t)
}

// TestInitExitAfterExecExits ends the init of a container while execs run:
// containerd must see every exec's /tasks/exit before the init's.
func TestInitExitAfterExecExits(t *testing.T) {
	h := requireHarness(t)
	const execs = 5
	tests := []struct {
		name     string
		end      func(t *testing.T, c *execHost, stdin io.WriteCloser)
		wantCode uint32
	}{
		{
			name: "init exits 7",
			end: func(t *testing.T, c *execHost, stdin io.WriteCloser) {
				if _, err := io.WriteString(stdin, "go\n"); err != nil {
					t.Fatalf("write the init's stdin: %v", err)
				}
			},
			wantCode: 7,
		},
		{
			name:     "init killed",
			end:      func(t *testing.T, c *execHost, _ io.WriteCloser) { c.kill(t, syscall.SIGKILL) },
			wantCode: 137,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := newID(t)
			rec := h.recordEvents(t, defaultNamespace, id)
			stdinR, stdinW := io.Pipe()
			t.Cleanup(func() { stdinW.Close() })
			c := h.startHost(t, h.runtime, id, cio.NewCreator(cio.WithStreams(stdinR, io.Discard, io.Discard)),
				oci.WithProcessArgs("sh", "-c", "read x; exit 7"))

			ctx := c.ctx(t, execTimeout)
			ids := make([]string, execs)
			procs := make([]client.Process, execs)
			exits := make([]<-chan client.ExitStatus, execs)
			for i := range ids {
				ids[i] = execID("sleep", i)
				var err error
				procs[i], exits[i], err = c.startExec(ctx, ctx, ids[i], c.execSpec(false, "sleep", "100"), discardIO())
				if err != nil {
					t.Fatal(err)
				}
			}
			tc.end(t, c, stdinW)

			if code := c.waitInit(t); code != tc.wantCode {
				t.Errorf("init Wait status %d, want %d", code, tc.wantCode)
			}
			for i, exitC := range exits {
				if code, err := exitCode(exitC, exitTimeout); err != nil || code != 137 {
					t.Errorf("exec %s: Wait status %d, %v; want 137 (killed with its container)", ids[i], code, err)
				}
			}
			initExit := func(events []recordedEvent) int {
				return slices.IndexFunc(events, func(e recordedEvent) bool {
					ex, ok := e.Event.(*apievents.TaskExit)
					return ok && ex.GetID() == c.id
				})
			}
			events, err := rec.waitUntil(eventTimeout, "exit events of the init and every exec", func(events []recordedEvent) bool {
				return initExit(events) >= 0 && execExitsSeen(ids)(events)
			})
			if err != nil {
				t.Fatalf("%v; events: %s", err, topics(events))
			}
			at := initExit(events)
			if st := events[at].Event.(*apievents.TaskExit).GetExitStatus(); st != tc.wantCode {
				t.Errorf("init TaskExit status %d, want %d", st, tc.wantCode)
			}
			for i, e := range events {
				if ex, ok := e.Event.(*apievents.TaskExit); ok && ex.GetID() != c.id && i > at {
					t.Errorf("TaskExit of exec %s (event %d) after the init's TaskExit (event %d)", ex.GetID(), i, at)
				}
			}
			if p := execEventProblems(events, ids, 137, 10); len(p) > 0 {
				t.Error(strings.Join(p, "\n"))
			}
			for i, p := range procs {
				if _, err := p.Delete(ctx); err != nil {
					t.Errorf("delete exec %s: %v", ids[i], err)
				}
			}
			c.delete(t)
		})
	}
}

// BenchmarkParallelExec50 measures 50 execs of `true` started at once into
// one container, under the mine shim and containerd's runc shim, side by
// side. One op is one batch of 50, from the first Exec to the last Delete;
// a first, untimed batch warms each shim up.
func BenchmarkParallelExec50(b *testing.B) {
	h := requireHarness(b)
	const width = 50
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		b.Run(rt, func(b *testing.B) {
			h.requireShim(b, rt)
			c := h.startHost(b, rt, newID(b), discardIO(), oci.WithProcessArgs(sleeper...))
			if err := c.execBatch("warm", width); err != nil {
				b.Fatal(err)
			}
			var (
				rounds  int
				elapsed time.Duration
			)
			for b.Loop() {
				start := time.Now()
				err := c.execBatch(fmt.Sprintf("r%d", rounds), width)
				elapsed += time.Since(start)
				rounds++
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(elapsed.Microseconds())/1000/float64(rounds), "wall-ms/op")
			b.ReportMetric(float64(width*rounds)/elapsed.Seconds(), "execs/s")
			c.delete(b)
		})
	}
}
