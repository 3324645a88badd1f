package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/mineshim/mine/pkg/minimgr"
)

// screen is minimgr run in a pseudo-terminal of the test's, as a user's
// terminal would run it: what it prints is read from the master.
type screen struct {
	t      *testing.T
	master console.Console
	cmd    *exec.Cmd
	mu     sync.Mutex
	buf    bytes.Buffer // guarded by mu
	more   chan struct{}
	done   chan struct{}
	waited chan error
}

func (e *env) inTerminal(ctx context.Context, args ...string) *screen {
	e.t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		e.t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := master.Resize(console.WinSize{Width: 80, Height: 24}); err != nil {
		e.t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		e.t.Fatal(err)
	}
	s := &screen{t: e.t, master: master, more: make(chan struct{}, 1), done: make(chan struct{}), waited: make(chan error, 1)}
	s.cmd = e.command(ctx, args...)
	s.cmd.Stdin, s.cmd.Stdout, s.cmd.Stderr = slave, slave, slave
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := s.cmd.Start(); err != nil {
		slave.Close()
		master.Close()
		e.t.Fatal(err)
	}
	slave.Close()
	go func() {
		defer close(s.done)
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			if n > 0 {
				s.mu.Lock()
				s.buf.Write(b[:n])
				s.mu.Unlock()
				select {
				case s.more <- struct{}{}:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { s.waited <- s.cmd.Wait() }()
	e.t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		master.Close()
	})
	return s
}

func (s *screen) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// expect waits, within bound, until the screen shows want (after what an
// earlier expect consumed) and consumes up to it.
func (s *screen) expect(want string, bound time.Duration) {
	s.t.Helper()
	if !s.seen(want, bound) {
		s.t.Fatalf("no %q on the screen within %s; screen: %q", want, bound, s.text())
	}
}

// seen reports whether the screen shows want within bound, and consumes up
// to it when it does.
func (s *screen) seen(want string, bound time.Duration) bool {
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		i := strings.Index(s.buf.String(), want)
		if i >= 0 {
			s.buf.Next(i + len(want))
			s.mu.Unlock()
			return true
		}
		s.mu.Unlock()
		select {
		case <-s.more:
		case <-s.done:
			return strings.Contains(s.text(), want)
		case <-deadline.C:
			return false
		}
	}
}

func (s *screen) typeIn(text string) {
	s.t.Helper()
	if _, err := s.master.Write([]byte(text)); err != nil {
		s.t.Fatal(err)
	}
}

// typeUntil types a command line and waits for want, typing it again every
// second until want shows or bound passes. A shell that is still starting
// can lose a line that reached its terminal before it read it: a CI run
// showed the line echoed by the container's terminal, in canonical mode,
// and never run. What this test checks is that typed lines reach the
// shell once it reads, not a shell's start-up.
func (s *screen) typeUntil(text, want string, bound time.Duration) {
	s.t.Helper()
	for deadline := time.Now().Add(bound); ; {
		select {
		case <-s.done:
			// Nothing reads the terminal any more: typing would fill it
			// and block.
			s.t.Fatalf("minimgr ended before %q showed; screen: %q", want, s.text())
		default:
		}
		s.typeIn(text)
		if s.seen(want, time.Second) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q on the screen within %s; screen: %q", want, bound, s.text())
		}
	}
}

// exitCode waits, within bound, for minimgr to end.
func (s *screen) exitCode(bound time.Duration) int {
	s.t.Helper()
	select {
	case <-s.waited:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(bound):
		s.t.Fatalf("minimgr did not end within %s; screen: %q", bound, s.text())
	}
	return -1
}

// TestRunInteractiveTerminal: run -it in a real terminal: a shell that sees
// a terminal of our size, follows a resize, and exits with its status;
// through both shims.
func TestRunInteractiveTerminal(t *testing.T) {
	for _, sc := range bothShims() {
		t.Run(sc.name, func(t *testing.T) { runInteractiveTerminal(t, sc.shim) })
	}
}

func runInteractiveTerminal(t *testing.T, shim string) {
	e := newEnv(t, true)
	e.useShim(shim)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	s := e.inTerminal(ctx, "run", "--rm", "-it", e.bundle, "itty", "sh")
	s.typeIn("stty size; tty\r")
	s.expect("24 80", 20*time.Second)
	s.expect("/dev/pts/", 10*time.Second)
	if err := s.master.Resize(console.WinSize{Width: 100, Height: 30}); err != nil {
		t.Fatal(err)
	}
	// The resize reaches minimgr as SIGWINCH, the container as ResizePty,
	// a moment later: ask until the shell sees it.
	resized := false
	for i := 0; i < 20 && !resized; i++ {
		s.typeIn("stty size\r")
		resized = s.seen("30 100", 500*time.Millisecond)
	}
	if !resized {
		t.Fatalf("the container's terminal did not follow the resize; screen %q", s.text())
	}
	s.typeIn("exit 5\r")
	if code := s.exitCode(20 * time.Second); code != 5 {
		t.Errorf("exit %d, want 5; screen %q", code, s.text())
	}
	e.assertNoLeftovers("itty")
}

// TestDetachAndAttach: ctrl-p ctrl-q detaches from run -it, the container
// runs on; attach comes back to the same shell; run -d -t makes a detached
// terminal that attach reaches too; through both shims.
func TestDetachAndAttach(t *testing.T) {
	for _, sc := range bothShims() {
		t.Run(sc.name, func(t *testing.T) { detachAndAttach(t, sc.shim) })
	}
}

func detachAndAttach(t *testing.T, shim string) {
	e := newEnv(t, true)
	e.useShim(shim)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	s := e.inTerminal(ctx, "run", "-it", e.bundle, "att", "sh")
	s.typeUntil("echo one-$((40+2))\r", "one-42", 20*time.Second)
	s.typeIn("\x10\x11")
	if code := s.exitCode(20 * time.Second); code != 0 {
		t.Fatalf("detach: exit %d; screen %q", code, s.text())
	}
	if got := e.list()["att"]; got.Status != minimgr.StatusRunning {
		t.Fatalf("after detach: %+v", got)
	}
	a := e.inTerminal(ctx, "attach", "att")
	a.typeUntil("echo two-$((40+3))\r", "two-43", 20*time.Second)
	a.typeIn("exit 6\r")
	if code := a.exitCode(20 * time.Second); code != 6 {
		t.Errorf("attach: exit %d, want 6; screen %q", code, a.text())
	}
	e.mustRun("delete", "att")

	e.mustRun("run", "-dt", e.bundle, "dt", "sh")
	b := e.inTerminal(ctx, "attach", "dt")
	b.typeUntil("echo three-$((40+4))\r", "three-44", 20*time.Second)
	b.typeIn("\x10\x11")
	if code := b.exitCode(20 * time.Second); code != 0 {
		t.Fatalf("detach from attach: exit %d; screen %q", code, b.text())
	}
	e.mustRun("delete", "dt", "-f")
	e.assertNoLeftovers("dt")
}
