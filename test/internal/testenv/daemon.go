package testenv

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// daemon is a process the tests start and that must not outlive them:
// containerd, a kubelet.
type daemon struct {
	exited chan struct{} // closed once the process has exited and been reaped
	err    error         // Wait's result; written before exited is closed
}

// startDaemon starts cmd in its own process group, to be killed with
// SIGKILL if the test binary dies (Pdeathsig).
//
// The kernel sends a parent-death signal when the thread that forked the
// child exits, not the process: and the Go runtime ends a thread whenever a
// goroutine locked to it returns without unlocking it (libraries do so
// after unsharing a thread's state), on whichever thread forked a
// daemon earlier. So cmd is started, and waited for, from a goroutine
// locked to its thread until the process has exited: that thread lives as
// long as the daemon.
func startDaemon(cmd *exec.Cmd) (*daemon, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	d := &daemon{exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		d.err = cmd.Wait()
		close(d.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

// pollUntil calls done every 20 ms until it reports true or an error, the
// daemon exits, or timeout. what names the awaited state in errors.
func (d *daemon) pollUntil(what string, timeout time.Duration, done func() (bool, error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if ok, err := done(); ok || err != nil {
			return err
		}
		select {
		case <-d.exited:
			return fmt.Errorf("exited before %s: %v", what, d.err)
		case <-deadline.C:
			return fmt.Errorf("not %s within %v", what, timeout)
		case <-tick.C:
		}
	}
}
