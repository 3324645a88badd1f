package e2e

import (
	"syscall"
	"testing"

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
