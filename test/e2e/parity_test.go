package e2e

import (
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	client "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// Task API answers that clients rely on, held against containerd's runc
// shim in the same test.

// TestExecIntoCreatedTask: a task that is created and not started yet takes
// an exec, which runs in its namespaces (containerd's API allows it, `ctr
// task exec` does it, and runc execs into a created container); the task
// then starts.
func TestExecIntoCreatedTask(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.newHost(t, rt, newID(t), cio.NullIO, oci.WithProcessArgs("sleep", "1000"))
		ctx := c.ctx(t, execTimeout)
		if code, err := c.runExec(ctx, "e1", "true"); err != nil || code != 0 {
			t.Fatalf("exec into the created task: status %d, %v", code, err)
		}
		if err := c.task.Start(ctx); err != nil {
			t.Fatalf("start after the exec: %v", err)
		}
		c.kill(t, syscall.SIGKILL)
		if code := c.waitInit(t); code != 137 {
			t.Errorf("init's exit status %d, want 137", code)
		}
		c.delete(t)
	})
}

// TestCreatedTaskDeletedWithExec: a created task whose exec still runs is
// deleted as it is (runc delete --force of the created init, no Kill
// first), and the exits of the exec and of the init are reported.
// containerd's runc shim is logged: here its shim ended before it answered
// the init's Wait ("ttrpc: closed").
func TestCreatedTaskDeletedWithExec(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.newHost(t, rt, newID(t), cio.NullIO, oci.WithProcessArgs("sleep", "1000"))
		ctx := c.ctx(t, execTimeout)
		_, exitC, err := c.startExec(ctx, c.base(), "e1", c.execSpec(false, "sleep", "1000"), discardIO())
		if err != nil {
			t.Fatalf("exec into the created task: %v", err)
		}
		_, err = h.client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: c.id})
		execCode, execErr := exitCode(exitC, exitTimeout)
		initCode, initErr := exitCode(c.exitC, exitTimeout)
		if rt == runtimeRunc {
			t.Logf("%s: delete %v; the exec's exit %d, %v; the init's %d, %v", rt, err, execCode, execErr, initCode, initErr)
			return
		}
		if err != nil {
			t.Fatalf("delete of the created task with its exec running: %v", err)
		}
		if execErr != nil || execCode != 137 {
			t.Errorf("exit of the exec of the deleted task: %d, %v: want 137", execCode, execErr)
		}
		if initErr != nil || initCode != 137 {
			t.Errorf("exit of the deleted created init: %d, %v: want 137", initCode, initErr)
		}
	})
}

// TestExecStatusWhilePaused: while a task is paused its execs, started or
// only created, are reported paused as the task is, and what they were once
// it is resumed.
func TestExecStatusWhilePaused(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.startHost(t, rt, newID(t), cio.NullIO, oci.WithProcessArgs("sleep", "1000"))
		ctx := c.ctx(t, execTimeout)
		running, _, err := c.startExec(ctx, c.base(), "running", c.execSpec(false, "sleep", "1000"), discardIO())
		if err != nil {
			t.Fatal(err)
		}
		created, err := c.task.Exec(ctx, "created", c.execSpec(false, "true"), discardIO())
		if err != nil {
			t.Fatal(err)
		}
		expect := func(when string, want map[client.Process]client.ProcessStatus) {
			t.Helper()
			for p, w := range want {
				st, err := p.Status(ctx)
				if err != nil || st.Status != w {
					t.Errorf("%s: exec %s: %q, %v: want %q", when, p.ID(), st.Status, err, w)
				}
			}
		}
		if err := c.task.Pause(ctx); err != nil {
			t.Fatalf("pause: %v", err)
		}
		expect("paused", map[client.Process]client.ProcessStatus{running: client.Paused, created: client.Paused})
		if err := c.task.Resume(ctx); err != nil {
			t.Fatalf("resume: %v", err)
		}
		expect("resumed", map[client.Process]client.ProcessStatus{running: client.Running, created: client.Created})
		if _, err := created.Delete(ctx); err != nil {
			t.Errorf("delete the created exec: %v", err)
		}
		c.delete(t)
	})
}

// eofCloser is stdin as nerdctl and ctr give it: at EOF of its input it
// asks for CloseIO, through closer, which the client sets once the
// process exists (after Exec); an EOF that comes first asks nothing.
type eofCloser struct {
	r      io.Reader
	mu     sync.Mutex
	closer func() // guarded by mu
	asked  chan error
}

func (s *eofCloser) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err == io.EOF {
		s.mu.Lock()
		closer := s.closer
		s.mu.Unlock()
		if closer != nil {
			closer()
		}
	}
	return n, err
}

// TestExecStdinEndsDuringStart: `printf 'a\nb\n' | nerdctl exec -i`: the
// client's input ends, and its CloseIO comes, while the exec's Start is
// still running; the process reads the input, then EOF.
func TestExecStdinEndsDuringStart(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
		ctx := c.ctx(t, execTimeout)
		in := &eofCloser{r: strings.NewReader("a\nb\n"), asked: make(chan error, 1)}
		out := newOutputBuffer()
		p, err := c.task.Exec(ctx, "in", c.execSpec(false, "sh", "-c", "cat; echo done"), cio.NewCreator(cio.WithStreams(in, out, io.Discard)))
		if err != nil {
			t.Fatal(err)
		}
		in.mu.Lock()
		in.closer = func() { in.asked <- p.CloseIO(ctx, client.WithStdinCloser) }
		in.mu.Unlock()
		exitC, err := p.Wait(c.base())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		code, err := exitCode(exitC, exitTimeout)
		if err != nil {
			t.Fatalf("the exec did not end: its stdin never ended (output %q)", out.String())
		}
		if err := <-in.asked; err != nil {
			t.Errorf("CloseIO: %v", err)
		}
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		if _, err := p.Delete(c.ctx(t, opTimeout)); err != nil {
			t.Errorf("delete exec: %v", err)
		}
		if got := out.String(); got != "a\nb\ndone\n" {
			t.Errorf("output %q, want %q", got, "a\nb\ndone\n")
		}
	})
}

// TestExecResizeBeforeStart: clients size an exec's terminal before they
// start it (nerdctl exec -it); the process finds that size.
func TestExecResizeBeforeStart(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
		ctx := c.ctx(t, execTimeout)
		inR, inW := io.Pipe()
		defer inW.Close()
		out := newOutputBuffer()
		// It reads a line first: the size is asked once Start returned.
		p, err := c.task.Exec(ctx, "tty", c.execSpec(true, "sh", "-c", "read x; stty size"), cio.NewCreator(cio.WithStreams(inR, out, nil), cio.WithTerminal))
		if err != nil {
			t.Fatal(err)
		}
		rerr := p.Resize(ctx, 100, 30)
		exitC, err := p.Wait(c.base())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := inW.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
		code, err := exitCode(exitC, exitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = p.Delete(c.ctx(t, opTimeout))
		// Both take the size; containerd's runc shim does not apply it.
		if rerr != nil {
			t.Errorf("resize before start: %v", rerr)
		}
		if rt == runtimeRunc {
			t.Logf("%s: exit %d; output %q", rt, code, out.String())
			return
		}
		if !strings.Contains(out.String(), "30 100") {
			t.Errorf("output %q, want the size 30 100", out.String())
		}
	})
}

// TestRunningTaskHasNoExitTime: the status of a task that has not exited
// carries no exit time (nerdctl's inspect shows FinishedAt from it).
func TestRunningTaskHasNoExitTime(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.newHost(t, rt, newID(t), cio.NullIO, oci.WithProcessArgs("sleep", "1000"))
		ctx := c.ctx(t, execTimeout)
		for _, stage := range []string{"created", "running"} {
			if stage == "running" {
				if err := c.task.Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			st, err := c.task.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !st.ExitTime.IsZero() {
				t.Errorf("%s task: exit time %v, want none", stage, st.ExitTime)
			}
		}
		c.kill(t, syscall.SIGKILL)
		if code := c.waitInit(t); code != 137 {
			t.Errorf("exit %d, want 137", code)
		}
		st, err := c.task.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.ExitTime.IsZero() || time.Since(st.ExitTime) > time.Minute {
			t.Errorf("stopped task: exit time %v, want the exit's", st.ExitTime)
		}
		c.delete(t)
	})
}
