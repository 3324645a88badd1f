package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Tests of the exit pipeline and of what containerd's runc shim also does
// there: each runs under the runtime under test and under
// io.containerd.runc.v2, with the same assertions.

// sideBySide runs f as a subtest for the runtime under test and for
// containerd's runc shim.
func (h *harness) sideBySide(t *testing.T, f func(t *testing.T, rt string)) {
	t.Helper()
	rts := []string{h.runtime}
	if h.runtime != runtimeRunc {
		rts = append(rts, runtimeRunc)
	}
	for _, rt := range rts {
		t.Run(rt, func(t *testing.T) {
			if rt == runtimeRunc && h.runcShim == "" {
				t.Skip(runcShimBinary + " not found: cannot hold the test against containerd's runc shim")
			}
			f(t, rt)
		})
	}
}

// unreadStdin is more than a pipe and a FIFO hold together: a process that
// never reads it leaves the writers blocked unless the shim lets go.
const unreadStdin = 300000

// deleteBound bounds a Delete whose process has exited: the shims wait at
// most 2 s for output, then close.
const deleteBound = 10 * time.Second

// 300 KB of stdin that the process never reads: its exit, Wait and Delete
// return within their bounds, nothing is left, and the shim still serves.
func TestUnreadStdinNeverWedges(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		t.Run("init", func(t *testing.T) {
			r := h.newContainerWith(t, defaultNamespace, rt, newID(t), nil, nil, "true")
			ctx := nsContext(t, r.ns, opTimeout)
			task, err := r.container.NewTask(ctx, cio.NewCreator(cio.WithStreams(bytes.NewReader(make([]byte, unreadStdin)), io.Discard, io.Discard)))
			if err != nil {
				t.Fatal(err)
			}
			r.task = task
			if r.exitC, err = task.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if code := r.wait(t); code != 0 {
				t.Fatalf("exit status %d", code)
			}
			dctx, cancel := context.WithTimeout(nsContext(t, r.ns, opTimeout), deleteBound)
			defer cancel()
			start := time.Now()
			if _, err := task.Delete(dctx); err != nil {
				t.Fatalf("delete after %v: %v", time.Since(start).Round(time.Millisecond), err)
			}
			if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
				t.Fatal(err)
			}
			r.deleted = true
		})
		t.Run("exec", func(t *testing.T) {
			c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
			ctx := c.ctx(t, execTimeout)
			ioc := cio.NewCreator(cio.WithStreams(bytes.NewReader(make([]byte, unreadStdin)), io.Discard, io.Discard))
			p, exitC, err := c.startExec(ctx, ctx, "unread", c.execSpec(false, "true"), ioc)
			if err != nil {
				t.Fatal(err)
			}
			if code, err := exitCode(exitC, exitTimeout); err != nil || code != 0 {
				t.Fatalf("exec: status %d, %v", code, err)
			}
			dctx, cancel := context.WithTimeout(ctx, deleteBound)
			defer cancel()
			if _, err := p.Delete(dctx); err != nil {
				t.Fatalf("delete exec: %v", err)
			}
			// The shim still serves the container.
			if code, err := c.runExec(ctx, "after", "true"); err != nil || code != 0 {
				t.Fatalf("exec after: status %d, %v", code, err)
			}
			c.kill(t, syscall.SIGKILL)
			c.waitInit(t)
			c.delete(t)
		})
	})
}

// waitReaped waits until pid is gone from /proc: the shim has reaped it.
func waitReaped(t *testing.T, pid uint32) {
	t.Helper()
	if !pollUntil(exitTimeout, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return errors.Is(err, os.ErrNotExist)
	}) {
		t.Fatalf("pid %d not reaped within %v", pid, exitTimeout)
	}
}

// A kill of an exec that has exited (its background child still holding its
// stdout) is "not found", classified, and never reaches another process.
func TestExecKillAfterExitIsNotFound(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
		ctx := c.ctx(t, execTimeout)
		out := newOutputBuffer()
		p, exitC, err := c.startExec(ctx, ctx, "bg", c.execSpec(false, "sh", "-c", "sleep 100 & echo started"),
			cio.NewCreator(cio.WithStreams(nil, out, out)))
		if err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "started", ioTimeout)
		waitReaped(t, p.Pid())
		err = p.Kill(ctx, syscall.SIGKILL)
		if !errdefs.IsNotFound(err) {
			t.Fatalf("kill of an exited exec: %v, want not found", err)
		}
		if code, err := exitCode(exitC, exitTimeout); err != nil || code != 0 {
			t.Fatalf("exec: status %d, %v", code, err)
		}
		// The init's death ends the child that holds the exec's output.
		c.kill(t, syscall.SIGKILL)
		c.waitInit(t)
		dctx, cancel := context.WithTimeout(ctx, deleteBound)
		defer cancel()
		if _, err := p.Delete(dctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		c.delete(t)
	})
}

// Output is never cut while the process that writes it exists: a background
// child of an exec writes a line 4 s after the exec exited, and the attached
// client gets it. The exit itself is not held for the child. (With a
// terminal neither shim keeps it: the exec's terminal goes with the exec.)
func TestExecBackgroundChildOutputAfterExit(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
		for i := range 2 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				ctx := c.ctx(t, execTimeout)
				out := newOutputBuffer()
				p, exitC, err := c.startExec(ctx, ctx, execID("late", i), c.execSpec(false, "sh", "-c", "(sleep 4; echo late) & echo early"),
					cio.NewCreator(cio.WithStreams(nil, out, out)))
				if err != nil {
					t.Fatal(err)
				}
				code, err := exitCode(exitC, exitTimeout)
				exited := time.Now()
				if err != nil || code != 0 {
					t.Fatalf("exec: status %d, %v", code, err)
				}
				out.waitFor(t, "early", ioTimeout)
				if strings.Contains(out.String(), "late") {
					t.Fatalf("the exit waited for the background child: output %q", out.String())
				}
				out.waitFor(t, "late", 10*time.Second)
				t.Logf("the child's line came %v after the exit", time.Since(exited).Round(time.Millisecond))
				dctx, cancel := context.WithTimeout(ctx, deleteBound)
				defer cancel()
				if _, err := p.Delete(dctx); err != nil {
					t.Errorf("delete exec: %v", err)
				}
			})
		}
		c.kill(t, syscall.SIGKILL)
		c.waitInit(t)
		c.delete(t)
	})
}

// hostPIDMarker is the argument that finds the leftover process of a
// host-PID container in the host's process table.
func hostPIDProcs(t *testing.T, marker string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmd), marker) {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			continue // dead, not yet reaped
		}
		pids = append(pids, pid)
	}
	return pids
}

// The init of a container in the host's PID namespace is killed: every
// other process of the container is killed with it, not left running (each
// is given 5 s after the exit event to be scheduled and end).
func TestHostPIDInitExitKillsAll(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		marker := fmt.Sprintf("%d", 200000+time.Now().UnixNano()%100000)
		r := h.newContainerWith(t, defaultNamespace, rt, newID(t), nil,
			[]oci.SpecOpts{oci.WithHostNamespace(specs.PIDNamespace)},
			"sh", "-c", "sleep "+marker+" && exit 0")
		if err := r.newTask(t); err != nil {
			t.Fatal(err)
		}
		r.start(t)
		if !pollUntil(exitTimeout, func() bool { return len(hostPIDProcs(t, marker)) > 0 }) {
			t.Fatal("the container's sleep never showed up")
		}
		r.kill(t, syscall.SIGKILL)
		if code := r.wait(t); code != 137 {
			t.Fatalf("exit status %d, want 137", code)
		}
		exited := time.Now()
		if !pollUntil(5*time.Second, func() bool { return len(hostPIDProcs(t, marker)) == 0 }) {
			t.Fatalf("processes %v of the container still alive %v after the exit event", hostPIDProcs(t, marker), time.Since(exited))
		}
		r.delete(t)
	})
}

// execBlockWrapper blocks `runc exec` until the FIFO $dir/go is written.
const execBlockWrapper = `if [ "$sub" = exec ]; then touch "$dir/exec-waiting"; read _ < "$dir/go"; fi`

// An Exec requested while the init's exit is held behind a starting exec is
// accepted; its Start fails, classified; every cleanup returns within its
// bound and the container's exit comes.
func TestExecWhileInitExitPending(t *testing.T) {
	h := requireHarness(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		wrapper, dir := runtimeWrapper(t, execBlockWrapper)
		if err := syscall.Mkfifo(dir+"/go", 0o600); err != nil {
			t.Fatal(err)
		}
		r := h.newContainerWith(t, defaultNamespace, rt, newID(t), runcOptions(wrapper), nil, sleeper...)
		if err := r.newTask(t); err != nil {
			t.Fatal(err)
		}
		r.start(t)
		ctx := nsContext(t, r.ns, opTimeout)
		spec, err := r.container.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p1, err := r.task.Exec(ctx, "starting", spec.Process, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan error, 1)
		go func() { started <- p1.Start(ctx) }()
		if !pollUntil(exitTimeout, func() bool { _, err := os.Stat(dir + "/exec-waiting"); return err == nil }) {
			t.Fatal("runc exec was never called")
		}
		// The init dies while the exec is starting.
		if err := syscall.Kill(int(r.task.Pid()), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitReaped(t, r.task.Pid())
		p2, err := r.task.Exec(ctx, "late", spec.Process, cio.NullIO)
		if err != nil {
			t.Fatalf("exec while the init's exit is held: %v", err)
		}
		if err := p2.Start(ctx); err == nil {
			t.Fatal("an exec started after its init was killed")
		} else if errdefs.IsUnknown(err) {
			t.Errorf("start of the late exec: unclassified error %v", err)
		} else {
			t.Logf("start of the late exec: %v", err)
		}
		// Let the first exec go.
		w, err := os.OpenFile(dir+"/go", os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("go\n"))
		w.Close()
		select {
		case err := <-started:
			t.Logf("start of the starting exec: %v", err)
		case <-time.After(exitTimeout):
			t.Fatal("start of the starting exec did not return")
		}
		if code := r.wait(t); code != 137 {
			t.Fatalf("exit status %d, want 137", code)
		}
		dctx, cancel := context.WithTimeout(ctx, deleteBound)
		defer cancel()
		for _, p := range []client.Process{p2, p1} {
			if _, err := p.Delete(dctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				t.Errorf("delete exec %s: %v", p.ID(), err)
			}
		}
		r.delete(t)
	})
}

// runcOptions are the runtime options that run bin instead of runc.
func runcOptions(bin string) *options.Options { return &options.Options{BinaryName: bin} }
