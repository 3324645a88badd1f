package testenv

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestDaemonOutlivesItsThread starts a daemon from a goroutine that then
// returns locked to its thread, which the Go runtime ends: the daemon must
// keep running (Pdeathsig follows the forking thread, not the process).
func TestDaemonOutlivesItsThread(t *testing.T) {
	type result struct {
		d   *daemon
		cmd *exec.Cmd
		err error
	}
	// The runtime never ends the main thread: try until the goroutine runs
	// on another one.
	var r result
	for range 100 {
		got := make(chan result)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread ends with the goroutine
			if syscall.Gettid() == syscall.Getpid() {
				got <- result{}
				return
			}
			cmd := exec.Command("sleep", "60")
			d, err := startDaemon(cmd)
			got <- result{d, cmd, err}
		}()
		if r = <-got; r.cmd != nil {
			break
		}
	}
	if r.cmd == nil {
		t.Fatal("every goroutine ran on the main thread")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.d.exited
	})
	// The locked goroutine has returned; its thread goes soon after.
	select {
	case <-r.d.exited:
		t.Fatalf("the daemon died with the thread of the goroutine that started it: %v", r.d.err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := r.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("daemon not running: %v", err)
	}
}
