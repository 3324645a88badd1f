package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/process"
)

// slowHolder writes a stand-in for the holder: it marks that it runs, waits
// 3 s before it reports ready, then sits until killed.
func slowHolder(t *testing.T, dir string) (self, began string) {
	t.Helper()
	began = filepath.Join(dir, "began")
	self = filepath.Join(dir, "holder.sh")
	script := "#!/bin/sh\n: > " + began + "\nsleep 3\necho ok >&3\nexec sleep 1000\n"
	if err := os.WriteFile(self, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return self, began
}

// childOf returns the pid of the one child of this process whose command
// line contains word, waiting up to bound for it.
func childOf(t *testing.T, word string, bound time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
				continue
			}
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if strings.Contains(string(cmdline), word) {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no child running %q within %v", word, bound)
	return 0
}

// TestStopWaitsForStartingHolder: a StopSandbox that comes while the holder
// is being spawned cancels the spawn and returns once that holder is gone,
// as it does for a ready one, within its own timeout; the StartSandbox in
// flight fails as aborted.
func TestStopWaitsForStartingHolder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the holder is cloned into new namespaces")
	}
	dir := t.TempDir()
	self, began := slowHolder(t, dir)
	reaper := process.NewReaper()
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go reaper.Run(rctx)
	s := New(Config{Reaper: reaper, Self: self})
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const id = "stop-while-starting"
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSandbox(ctx, &CreateSandboxRequest{SandboxId: id, BundlePath: bundle}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	started := make(chan error, 1)
	go func() {
		_, err := s.StartSandbox(ctx, &StartSandboxRequest{SandboxId: id})
		started <- err
	}()
	pid := childOf(t, "holder.sh", 10*time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(began); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder did not begin within 10 s")
		}
	}
	// A timeout shorter than the holder's way to ready: the spawn is
	// cancelled, not waited out.
	if _, err := s.StopSandbox(ctx, &StopSandboxRequest{SandboxId: id, TimeoutSecs: 1}); err != nil {
		t.Fatalf("StopSandbox: %v", err)
	}
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("holder %d still there when StopSandbox returned (kill 0: %v)", pid, err)
	}
	err := errgrpc.ToNative(<-started)
	if !errdefs.IsAborted(err) {
		t.Errorf("StartSandbox stopped while starting: %v, want aborted", err)
	}
	if _, err := s.WaitSandbox(ctx, &WaitSandboxRequest{SandboxId: id}); err != nil {
		t.Errorf("WaitSandbox after stop: %v", err)
	}
}
