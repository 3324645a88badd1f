package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// privateHarness starts a containerd of its own for tests that stop, kill or
// restart it, so the shared one of TestMain is never disturbed. It has the
// same binaries, shim, snapshotter and runtimes, and its own directory under
// the run's. A cleanup deletes what is left and stops it; on failure the
// tail of its log is added to t's output.
func (h *harness) privateHarness(t *testing.T, name string) *harness {
	t.Helper()
	p := &harness{
		runtime:     h.runtime,
		snapshotter: h.snapshotter,
		containerd:  h.containerd,
		ctrPath:     h.ctrPath,
		runcShim:    h.runcShim,
		shim:        h.shim,
		shimExes:    h.shimExes,
		dir:         filepath.Join(h.dir, name),
		imageTar:    h.imageTar,
		imported:    map[string]bool{},
	}
	if err := os.Mkdir(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := daemonConfig{
		Dir:         p.dir,
		Snapshotter: h.snapshotter,
		Runtimes:    h.d.cfg.Runtimes,
		PathDirs:    h.d.cfg.PathDirs,
	}
	t.Cleanup(func() {
		if t.Failed() && p.d != nil {
			t.Logf("containerd log (%s), last lines:\n%s", p.d.cfg.logPath(), p.d.logTail(60))
		}
		if err := p.teardown(); err != nil {
			t.Errorf("teardown of the private containerd: %v", err)
		}
	})
	var err error
	if p.d, err = startDaemon(h.containerd, cfg); err != nil {
		t.Fatal(err)
	}
	p.connect(t)
	return p
}

// connect (re)connects the harness's client to its containerd.
func (h *harness) connect(t *testing.T) {
	t.Helper()
	if h.client != nil {
		h.client.Close()
		h.client = nil
	}
	c, err := client.New(h.d.cfg.address(), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to containerd: %v", err)
	}
	h.client = c
}

// TestContainerdRestart kills containerd with SIGKILL while five containers
// run, starts it again with the same config, and checks that it reconnects
// to the same shims: the five still run and answer State, Exec, Kill and
// Delete. While containerd is down, an exec of the first container and the
// init process of a sixth container exit with status 7; after the restart,
// Wait, Status and Delete of the exec report 7.
//
// containerd (1.7 to 2.4, core/runtime/v2/shim_load.go) deletes on load the
// task of a shim that is no sandbox and reports no process, taking it for a
// leaked shim: the sixth container's task is gone after the restart, with
// containerd's own runc shim too. The test then checks that nothing of it is
// left; should its task still be there, it must report 7 as well.
func TestContainerdRestart(t *testing.T) {
	h := requireHarness(t)
	p := h.privateHarness(t, "restart")
	ns := defaultNamespace

	const running = 5
	type container struct {
		id    string
		pid   uint32
		shims []int
	}
	var live []container
	var first *taskRun
	for i := 0; i < running; i++ {
		r := p.startTask(t, ns, p.runtime, fmt.Sprintf("%s-%d", newID(t), i), "sleep", "1000")
		r.deleted = true // deleted below through the new connection, or by the teardown
		shims, err := shimPIDs(p.d.cfg.address(), p.shimExes, ns, r.id)
		if err != nil || len(shims) == 0 {
			t.Fatalf("no shim for %s (%v)", r.id, err)
		}
		live = append(live, container{id: r.id, pid: r.task.Pid(), shims: shims})
		if first == nil {
			first = r
		}
	}
	// Exits with 7 on SIGUSR1, sent while containerd is down. The
	// background sleep does not keep the output pipe open: an exec's exit
	// counts once its output is drained.
	trapExit7 := []string{"sh", "-c", `trap "exit 7" USR1; echo ready; exec >/dev/null 2>&1; sleep 1000 & wait`}
	const execID = "exits-while-down"
	execOut := newOutputBuffer()
	var exitExec func()
	{
		ctx := nsContext(t, ns, opTimeout)
		spec, err := first.container.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Args = trapExit7
		proc, err := first.task.Exec(ctx, execID, &pspec, cio.NewCreator(cio.WithStreams(nil, execOut, execOut)))
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		if err := proc.Start(ctx); err != nil {
			t.Fatalf("start exec: %v", err)
		}
		execOut.waitFor(t, "ready", exitTimeout)
		exitExec = exitWhileDown(t, int(proc.Pid()), syscall.SIGUSR1, "exec "+execID)
	}
	sixth := p.startTask(t, ns, p.runtime, newID(t)+"-exits", trapExit7...)
	sixth.deleted = true
	sixth.out.waitFor(t, "ready", exitTimeout)
	sixthSocket, err := shimSocket(p.bundleDir(ns, sixth.id))
	if err != nil {
		t.Fatal(err)
	}

	exitSixth := exitWhileDown(t, int(sixth.task.Pid()), syscall.SIGUSR1, "container "+sixth.id)
	if err := p.d.crash(); err != nil {
		t.Fatal(err)
	}
	exitExec()
	exitSixth()
	if err := p.d.restart(); err != nil {
		t.Fatalf("restart containerd: %v", err)
	}
	p.connect(t)

	for i, c := range live {
		t.Run(fmt.Sprintf("running %d", i), func(t *testing.T) {
			if shims, err := shimPIDs(p.d.cfg.address(), p.shimExes, ns, c.id); err != nil || !slices.Equal(shims, c.shims) {
				t.Errorf("shims of %s after the restart %v (%v), before %v; want the same processes", c.id, shims, err, c.shims)
			}
			ctx := nsContext(t, ns, opTimeout)
			cont, err := p.client.LoadContainer(ctx, c.id)
			if err != nil {
				t.Fatal(err)
			}
			task, err := cont.Task(ctx, nil)
			if err != nil {
				t.Fatalf("task of %s after the restart: %v", c.id, err)
			}
			if st, err := task.Status(ctx); err != nil || st.Status != client.Running || task.Pid() != c.pid {
				t.Errorf("after the restart: status %+v (%v), pid %d; want running, pid %d", st, err, task.Pid(), c.pid)
			}

			if i == 0 {
				proc, err := task.LoadProcess(ctx, execID, nil)
				if err != nil {
					t.Fatalf("exec %s after the restart: %v", execID, err)
				}
				waitStatus(t, proc, 7, "exec that exited while containerd was down")
				if st, err := proc.Status(ctx); err != nil || st.Status != client.Stopped || st.ExitStatus != 7 {
					t.Errorf("exec that exited while containerd was down: status %+v (%v), want stopped with exit status 7", st, err)
				}
				if st, err := proc.Delete(ctx); err != nil || st.ExitCode() != 7 {
					t.Errorf("delete of the exec that exited while containerd was down: exit status %d (%v), want 7", st.ExitCode(), err)
				}
			}

			spec, err := cont.Spec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pspec := *spec.Process
			pspec.Args = []string{"sh", "-c", "echo exec-ok; exit 4"}
			out := newOutputBuffer()
			proc, err := task.Exec(ctx, "after-restart", &pspec, cio.NewCreator(cio.WithStreams(nil, out, out)))
			if err != nil {
				t.Fatalf("exec after the restart: %v", err)
			}
			execExit, err := proc.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := proc.Start(ctx); err != nil {
				t.Fatalf("start exec after the restart: %v", err)
			}
			select {
			case st := <-execExit:
				if code, _, err := st.Result(); code != 4 || err != nil {
					t.Errorf("exec after the restart: exit %d (%v), want 4", code, err)
				}
			case <-time.After(exitTimeout):
				t.Fatalf("exec did not exit within %v", exitTimeout)
			}
			if _, err := proc.Delete(ctx); err != nil {
				t.Errorf("delete exec: %v", err)
			}
			out.waitFor(t, "exec-ok", exitTimeout)

			exitC, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatalf("kill after the restart: %v", err)
			}
			select {
			case st := <-exitC:
				if code, _, err := st.Result(); code != 137 || err != nil {
					t.Errorf("after SIGKILL: Wait status %d (%v), want 137", code, err)
				}
			case <-time.After(exitTimeout):
				t.Fatalf("no exit within %v of SIGKILL", exitTimeout)
			}
			deleteAfterRestart(t, p, cont, task, 137)
		})
	}

	t.Run("container exited while containerd was down", func(t *testing.T) {
		ctx := nsContext(t, ns, opTimeout)
		cont, err := p.client.LoadContainer(ctx, sixth.id)
		if err != nil {
			t.Fatalf("container %s after the restart: %v", sixth.id, err)
		}
		task, err := cont.Task(ctx, nil)
		if errdefs.IsNotFound(err) && p.runtime != runtimeRunc {
			t.Fatalf("containerd deleted the task of %s on load and its exit status with it: the shim must keep a stopped task until it is deleted", sixth.id)
		}
		if errdefs.IsNotFound(err) {
			t.Logf("containerd deleted the task of %s on load (a shim with no process left), as it does with the runc shim", sixth.id)
			p.assertNoTraces(t, ns, sixth.id, sixthSocket)
			if err := cont.Delete(ctx, client.WithSnapshotCleanup); err != nil {
				t.Errorf("delete container %s: %v", sixth.id, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("task of %s after the restart: %v", sixth.id, err)
		}
		waitStatus(t, task, 7, "container that exited while containerd was down")
		if st, err := task.Status(ctx); err != nil || st.Status != client.Stopped || st.ExitStatus != 7 {
			t.Errorf("after the restart: status %+v (%v); want stopped with exit status 7", st, err)
		}
		deleteAfterRestart(t, p, cont, task, 7)
	})

	if procs, err := shimProcesses(p.d.cfg.address(), p.shimExes); err != nil || len(procs) != 0 {
		t.Errorf("shims left after deleting every container: %v (%v)", shimPIDList(procs), err)
	}
}

// waitStatus checks the exit status Wait reports for a process that has
// exited already.
func waitStatus(t *testing.T, proc client.Process, want uint32, what string) {
	t.Helper()
	exitC, err := proc.Wait(nsContext(t, defaultNamespace, opTimeout))
	if err != nil {
		t.Fatalf("wait %s: %v", what, err)
	}
	select {
	case st := <-exitC:
		if code, _, err := st.Result(); code != want || err != nil {
			t.Errorf("Wait of the %s: exit %d (%v), want %d", what, code, err, want)
		}
	case <-time.After(exitTimeout):
		t.Fatalf("Wait of the %s did not return within %v", what, exitTimeout)
	}
}

// deleteAfterRestart deletes a task and its container, checks the exit
// status the delete reports, and that no trace is left.
func deleteAfterRestart(t *testing.T, h *harness, c client.Container, task client.Task, want uint32) {
	t.Helper()
	ctx := nsContext(t, defaultNamespace, opTimeout)
	st, err := task.Delete(ctx)
	if err != nil {
		t.Fatalf("delete task %s: %v", c.ID(), err)
	}
	if st.ExitCode() != want {
		t.Errorf("task delete of %s reported exit status %d, want %d", c.ID(), st.ExitCode(), want)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container %s: %v", c.ID(), err)
	}
	h.assertNoTraces(t, defaultNamespace, c.ID(), "")
}

// exitWhileDown opens a pidfd of process pid now, and returns a function
// that sends sig through it and waits until the process has exited: no
// polling, and no confusion with a reused pid.
func exitWhileDown(t *testing.T, pid int, sig syscall.Signal, what string) func() {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open of %s (pid %d): %v", what, pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() {
		t.Helper()
		if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
			t.Fatalf("send %v to %s (pid %d): %v", sig, what, pid, err)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		deadline := time.Now().Add(exitTimeout)
		for {
			left := time.Until(deadline).Milliseconds()
			if left <= 0 {
				t.Fatalf("%s (pid %d) did not exit within %v of %v", what, pid, exitTimeout, sig)
			}
			n, err := unix.Poll(fds, int(left))
			switch {
			case err == unix.EINTR:
			case err != nil:
				t.Fatalf("poll pidfd of %s: %v", what, err)
			case n > 0:
				return // readable: the process has exited
			}
		}
	}
}

// shimPIDList returns the sorted pids of procs.
func shimPIDList(procs []shimProcess) []int {
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.pid
	}
	slices.Sort(pids)
	return pids
}
