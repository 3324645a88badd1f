package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

// The binaries under test, built once by TestMain.
var (
	binDir     string
	minimgrBin string
	shimBin    string
	// skipReason is why the tests that run containers skip.
	skipReason string
	// setupErr is why every test fails.
	setupErr error
)

const (
	buildTimeout = 5 * time.Minute
	// cmdTimeout bounds every minimgr invocation of the tests.
	cmdTimeout = 60 * time.Second
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "minimgr-cli-test-")
		if err != nil {
			setupErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		binDir = dir
		minimgrBin = filepath.Join(dir, "minimgr")
		shimBin = filepath.Join(dir, minimgr.ShimBinary)
		setupErr = build(map[string]string{
			minimgrBin: "github.com/mineshim/mine/cmd/minimgr",
			shimBin:    "github.com/mineshim/mine/cmd/containerd-shim-mine-v2",
		})
		skipReason = requirements()
		return m.Run()
	}()
	os.Exit(code)
}

// build compiles each package into its path.
func build(targets map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	for out, pkg := range targets {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	return nil
}

// requirements returns why containers cannot run here, or "".
func requirements() string {
	if os.Geteuid() != 0 {
		return "needs root: runs runc"
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "needs runc in PATH"
	}
	if err := minimgr.CheckBusybox(); err != nil {
		return err.Error()
	}
	return ""
}

// env is one test's minimgr environment: its own state dir, namespace and
// busybox bundle.
type env struct {
	t      *testing.T
	root   string
	ns     string
	bundle string
	// shim is the shim binary minimgr runs; default the one built here.
	shim string
	// environ, when set, is minimgr's environment (and so its shims').
	environ []string
}

// shimCase names a shim binary a test runs: "" is the one built here.
type shimCase struct{ name, shim string }

// bothShims is ours and containerd's runc shim, for tests that hold a
// behaviour for both.
func bothShims() []shimCase {
	runcShim := ""
	if dir := os.Getenv("MINE_CONTAINERD_BIN"); dir != "" {
		runcShim = filepath.Join(dir, "containerd-shim-runc-v2")
	} else if p, err := exec.LookPath("containerd-shim-runc-v2"); err == nil {
		runcShim = p
	} else if cache := os.Getenv("MINE_CACHE"); cache != "" {
		// Where hack/install-deps.sh puts containerd's binaries.
		runcShim = filepath.Join(cache, "bin", "containerd-shim-runc-v2")
	} else if home, err := os.UserHomeDir(); err == nil {
		runcShim = filepath.Join(home, ".cache", "mine", "bin", "containerd-shim-runc-v2")
	}
	return []shimCase{{"mine", ""}, {"runc", runcShim}}
}

// useShim makes e run shim ("" keeps ours); it skips when shim is missing.
func (e *env) useShim(shim string) {
	e.t.Helper()
	if shim == "" {
		return
	}
	if _, err := os.Stat(shim); err != nil {
		e.t.Skipf("containerd's runc shim: %v (set MINE_CONTAINERD_BIN)", err)
	}
	e.shim = shim
}

var nsSeq atomic.Int64

// newEnv skips when containers cannot run; with needContainers false only
// the binaries are needed.
func newEnv(t *testing.T, needContainers bool) *env {
	t.Helper()
	if needContainers && skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
	e := &env{
		t:    t,
		root: t.TempDir(),
		ns:   fmt.Sprintf("minimgr-cli-%d-%d", os.Getpid(), nsSeq.Add(1)),
	}
	if needContainers {
		e.bundle = filepath.Join(t.TempDir(), "bundle")
		e.mustRun("bundle", "init", e.bundle)
		t.Cleanup(e.cleanup)
	}
	return e
}

// cleanup force-deletes what a failed test left behind.
func (e *env) cleanup() {
	res := e.run(nil, "list", "-q")
	for _, id := range strings.Fields(res.stdout) {
		e.run(nil, "delete", "--force", id)
	}
	e.run(nil, "cleanup")
	// The empty directories runc leaves for the namespace (its root and
	// the /minimgr/NS cgroups): every test has its own namespace.
	os.Remove(filepath.Join("/run/containerd/runc", e.ns))
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "minimgr", e.ns))
	for _, d := range dirs {
		os.Remove(d) // rmdir: only an empty cgroup goes
	}
}

// command is a minimgr invocation in e's environment.
func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	shim := shimBin
	if e.shim != "" {
		shim = e.shim
	}
	full := append([]string{"--state-dir", e.root, "--namespace", e.ns, "--runtime-binary", shim}, args...)
	cmd := exec.CommandContext(ctx, minimgrBin, full...)
	cmd.Env = e.environ
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs minimgr to its end (bounded) with stdin.
func (e *env) run(stdin io.Reader, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := e.command(ctx, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("minimgr %v: %v", args, err)
	}
	if ctx.Err() != nil {
		e.t.Fatalf("minimgr %v: no end within %s", args, cmdTimeout)
	}
	return result{stdout.String(), stderr.String(), code}
}

// mustRun runs minimgr and fails the test unless it exits 0.
func (e *env) mustRun(args ...string) result {
	e.t.Helper()
	r := e.run(nil, args...)
	if r.code != 0 {
		e.t.Fatalf("minimgr %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// list returns `list --json` by ID.
func (e *env) list() map[string]minimgr.Info {
	e.t.Helper()
	r := e.mustRun("list", "--json")
	var infos []minimgr.Info
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil {
		e.t.Fatalf("list --json: %v: %s", err, r.stdout)
	}
	out := map[string]minimgr.Info{}
	for _, i := range infos {
		out[i.ID] = i
	}
	return out
}

// state returns `state ID`.
func (e *env) state(id string) minimgr.Info {
	e.t.Helper()
	r := e.mustRun("state", id)
	var info minimgr.Info
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		e.t.Fatalf("state: %v: %s", err, r.stdout)
	}
	return info
}

// waitRuns waits (10 s at most) until the init of container id runs its
// program: args[0] of its command line is prog. runc start returns once
// runc's init was told to exec the program, a moment before it has: a
// signal in between reaches runc's init (a Go program, which as the PID 1
// of its namespace exits 2 on SIGTERM) instead of the program.
func (e *env) waitRuns(id, prog string) {
	e.t.Helper()
	pid := e.state(id).Pid
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if args := procCmdline(pid); len(args) > 0 && args[0] == prog {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the init of %s (pid %d) does not run %s: %q", id, pid, prog, procCmdline(pid))
		}
	}
}

// procCmdline is the command line of pid, nil when it is gone.
func procCmdline(pid int) []string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// readLine reads one line from r within bound.
func readLine(t *testing.T, r *bufio.Reader, bound time.Duration) string {
	t.Helper()
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := r.ReadString('\n')
		ch <- res{l, err}
	}()
	select {
	case got := <-ch:
		if got.err != nil {
			t.Fatalf("read line: %v (got %q)", got.err, got.line)
		}
		return strings.TrimRight(got.line, "\n")
	case <-time.After(bound):
		t.Fatalf("no line within %s", bound)
	}
	return ""
}

// pidfd opens a pidfd on pid; the test fails when pid is gone.
func pidfd(t *testing.T, pid int) int {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// exited reports whether the process of fd exits within bound (0: now).
func exited(fd int, bound time.Duration) bool {
	deadline := time.Now().Add(bound)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		if errors.Is(err, unix.EINTR) && time.Now().Before(deadline) {
			continue
		}
		return err == nil && n > 0
	}
}

// waitGone waits, within bound, until pid no longer exists.
func waitGone(t *testing.T, pid int, bound time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	if !exited(fd, bound) {
		t.Fatalf("process %d still there after %s", pid, bound)
	}
}

// assertNoLeftovers checks that nothing of container id is left: state
// directory, runc state, mounts of the state directory.
func (e *env) assertNoLeftovers(id string) {
	e.t.Helper()
	if _, err := os.Stat(filepath.Join(e.root, e.ns, id)); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("state dir of %s left: %v", id, err)
	}
	runcState := filepath.Join("/run/containerd/runc", e.ns, id)
	if _, err := os.Stat(runcState); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("runc state %s left: %v", runcState, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		e.t.Fatal(err)
	}
	if strings.Contains(string(mi), e.root) {
		e.t.Errorf("mounts under %s left:\n%s", e.root, mi)
	}
}
