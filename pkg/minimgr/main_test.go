package minimgr

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Set by TestMain.
var (
	shimBin    string
	skipReason string // why tests that run containers skip
	setupErr   error  // why they fail
)

func TestMain(m *testing.M) {
	// The test binary is the Manager's logger (its PublishBinary).
	if len(os.Args) == 3 && os.Args[1] == LoggerArg {
		os.Exit(RunLogger(os.Args[2]))
	}
	// A stand-in shim daemon (TestEndShim): its flags are in its command
	// line; it lives as long as the environment says.
	if d, err := time.ParseDuration(os.Getenv(standInLives)); err == nil {
		time.Sleep(d)
		os.Exit(0)
	}
	os.Exit(func() int {
		skipReason = requirements()
		if skipReason != "" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "minimgr-test-")
		if err != nil {
			setupErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		shimBin = filepath.Join(dir, ShimBinary)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", shimBin, "github.com/mineshim/mine/cmd/containerd-shim-mine-v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			setupErr = fmt.Errorf("build the shim: %v\n%s", err, out)
		}
		return m.Run()
	}())
}

func requirements() string {
	if os.Geteuid() != 0 {
		return "needs root: runs runc"
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "needs runc in PATH"
	}
	if err := CheckBusybox(); err != nil {
		return err.Error()
	}
	return ""
}

var nsSeq atomic.Int64

// newTestManager returns a Manager with its own state root and namespace,
// and a busybox bundle; it skips where containers cannot run.
func newTestManager(t *testing.T) (*Manager, string) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	m, err := New(Config{
		Root:          t.TempDir(),
		Namespace:     fmt.Sprintf("minimgr-lib-%d-%d", os.Getpid(), nsSeq.Add(1)),
		RuntimeBinary: shimBin,
	})
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if err := InitBusyboxBundle(bundle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed test left: force-delete, then clean up.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		infos, _ := m.List(ctx)
		for _, i := range infos {
			_, _ = m.Delete(ctx, i.ID, true)
		}
		_, _ = m.Cleanup(ctx)
		removeNamespaceDirs(m.Namespace())
	})
	return m, bundle
}

// removeNamespaceDirs removes the empty directories runc leaves for a
// namespace (its root and the /minimgr/NS cgroups): every test has its own.
func removeNamespaceDirs(ns string) {
	os.Remove(filepath.Join("/run/containerd/runc", ns))
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "minimgr", ns))
	for _, d := range dirs {
		os.Remove(d) // rmdir: only an empty cgroup goes
	}
}

// waitGone waits, within bound, until pid no longer runs.
func waitGone(pid int, bound time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(bound)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		switch {
		case err == nil && n > 0:
			return nil
		case errors.Is(err, unix.EINTR) && time.Now().Before(deadline):
			continue
		case err != nil:
			return err
		}
		return fmt.Errorf("process %d still runs after %s", pid, bound)
	}
}
