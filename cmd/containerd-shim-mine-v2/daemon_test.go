package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

const (
	testNamespace   = "mine-test"
	testAddress     = "/run/mine-test/containerd.sock"
	shimCallTimeout = 10 * time.Second
)

// testShim is a shim daemon started by startTestShim.
type testShim struct {
	path   string // its socket
	pid    int
	client *ttrpc.Client
	task   taskAPI.TTRPCTaskService
}

// startTestShim runs `start` for id in bundle, as containerd >= 2.3 does,
// with the socket under sockDir, connects to the daemon and returns it. A
// cleanup kills a daemon still running at the end of the test.
func startTestShim(t *testing.T, bundle, sockDir, id string, opts *runcoptions.Options) *testShim {
	t.Helper()
	params := &bootapi.BootstrapParams{
		InstanceID:            id,
		Namespace:             testNamespace,
		ContainerdGrpcAddress: testAddress,
		SocketDir:             &sockDir,
	}
	if opts != nil {
		if err := params.AddExtension(opts); err != nil {
			t.Fatal(err)
		}
	}
	in, err := proto.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-namespace", testNamespace, "-id", id, "-address", testAddress, "start")
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), envTestAsShim+"=1")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("shim start: %v: %s", err, stderr.String())
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &res); err != nil {
		t.Fatalf("shim start answered %q: %v", out, err)
	}
	s := &testShim{path: strings.TrimPrefix(res.Address, "unix://")}
	conn, err := net.DialTimeout("unix", s.path, shimCallTimeout)
	if err != nil {
		t.Fatal(err)
	}
	s.client = ttrpc.NewClient(conn)
	t.Cleanup(func() { s.client.Close() })
	s.task = taskAPI.NewTTRPCTaskClient(s.client)
	cctx, ccancel := context.WithTimeout(context.Background(), shimCallTimeout)
	defer ccancel()
	resp, err := s.task.Connect(cctx, &taskAPI.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	s.pid = int(resp.GetShimPid())
	t.Cleanup(func() {
		if s.waitExit(0) != nil {
			syscall.Kill(s.pid, syscall.SIGKILL)
		}
	})
	return s
}

// shutdown calls Shutdown. As containerd does, a connection closed before
// the answer counts as done: the shim is ending.
func (s *testShim) shutdown(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
	defer cancel()
	if _, err := s.task.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: id}); err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("shutdown: %v", err)
	}
}

// waitExit waits up to timeout for the daemon to exit; the daemon is not
// our child (start detached it), so its pidfd tells.
func (s *testShim) waitExit(timeout time.Duration) error {
	fd, err := unix.PidfdOpen(s.pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(time.Until(deadline).Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("shim still running")
		}
		return nil
	}
}

// shortTempDir is a temporary directory with a path short enough for a
// socket in it (t.TempDir's paths carry the test name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// A shim that ends must not remove a socket or address file a new shim for
// the same container has put at the same paths since: the old shim's late
// removal broke the new one ("shim dead: unavailable" when an ID is reused
// right after delete).
func TestShimRemovesOnlyItsOwnSocket(t *testing.T) {
	bundle := t.TempDir()
	sockDir := filepath.Join(shortTempDir(t), "s")
	old := startTestShim(t, bundle, sockDir, "c1", nil)
	addrPath := filepath.Join(bundle, addressFile)
	if _, err := os.Stat(addrPath); err != nil {
		t.Fatalf("no address file: %v", err)
	}

	// What a new shim does while the old one ends: bind the same path and
	// write the address file anew.
	if err := os.Remove(old.path); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: old.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	newSock, err := lstatID(old.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileNew(addrPath, []byte("unix://"+old.path), 0o600); err != nil {
		t.Fatal(err)
	}
	newAddr, err := lstatID(addrPath)
	if err != nil {
		t.Fatal(err)
	}

	old.shutdown(t, "c1")
	if err := old.waitExit(shutdownTimeout + 5*time.Second); err != nil {
		t.Fatalf("old shim after Shutdown: %v", err)
	}
	if id, err := lstatID(old.path); err != nil || id != newSock {
		t.Errorf("the new shim's socket was removed or replaced by the old shim (%v)", err)
	}
	if id, err := lstatID(addrPath); err != nil || id != newAddr {
		t.Errorf("the new shim's address file was removed or replaced by the old shim (%v)", err)
	}
}

// A shim removes its own socket and address file when it ends.
func TestShimRemovesItsSocket(t *testing.T) {
	bundle := t.TempDir()
	sockDir := filepath.Join(shortTempDir(t), "s")
	s := startTestShim(t, bundle, sockDir, "c1", nil)
	s.shutdown(t, "c1")
	if err := s.waitExit(shutdownTimeout + 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{s.path, filepath.Join(bundle, addressFile)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// A shim whose state directory is removed while it still holds a container
// (its manager deleted the container, or gave up on the shim) exits on its
// own, within a bound, instead of living on with nobody able to reach it.
func TestShimExitsWhenStateRemoved(t *testing.T) {
	runcBin, bundle := sleepingBundle(t)
	runcRoot := t.TempDir()
	sockDir := filepath.Join(shortTempDir(t), "s")
	s := startTestShim(t, bundle, sockDir, "c1", &runcoptions.Options{Root: runcRoot})
	runc := func(args ...string) {
		out, err := exec.Command(runcBin, append([]string{"--root", filepath.Join(runcRoot, testNamespace)}, args...)...).CombinedOutput()
		if err != nil {
			t.Logf("runc %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { runc("delete", "--force", "c1") })

	ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
	defer cancel()
	if _, err := s.task.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: bundle}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := s.task.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}

	// What `shim delete` and the manager do after losing the shim: the
	// container is removed behind the shim's back, then its state.
	runc("delete", "--force", "c1")
	if err := os.RemoveAll(bundle); err != nil {
		t.Fatal(err)
	}
	bound := 2*idleCheckInterval + 3*time.Second
	if err := s.waitExit(bound); err != nil {
		t.Fatalf("%v %v after its state directory was removed", err, bound)
	}
	if _, err := os.Lstat(s.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s left behind (%v)", s.path, err)
	}
}

// sleepingBundle makes the bundle of a container c1 that runs `sleep 1000`
// from busybox, and returns it with the runc binary to run it, or skips the
// test for what it lacks.
func sleepingBundle(t *testing.T) (runcBin, bundle string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a container with runc")
	}
	runcBin, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not found in PATH (Debian package runc)")
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("no static busybox for the container (Debian package busybox-static): %v", err)
	}
	bundle = filepath.Join(t.TempDir(), "c1")
	writeBusyboxBundle(t, runcBin, busybox, bundle, "sleep", "1000")
	return runcBin, bundle
}

// writeBusyboxBundle makes an OCI bundle at dir whose rootfs holds busybox
// and its applets, running args without a terminal.
func writeBusyboxBundle(t *testing.T, runcBin, busybox, dir string, args ...string) {
	t.Helper()
	bin := filepath.Join(dir, "rootfs", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(runcBin, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	path := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = args
	if raw, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The daemon's own runtime settings hold: GOGC 25 when the environment sets
// none, and the GOMAXPROCS of the environment (containerd puts one in every
// shim's) obeyed, not replaced by the daemon's own cap (trim.go), read back
// from the memory dump it writes on SIGUSR1 beside its stacks.
func TestDaemonRuntimeSettings(t *testing.T) {
	if _, ok := os.LookupEnv("GOGC"); ok {
		t.Skip("GOGC is set in the environment, which the daemon inherits and obeys")
	}
	t.Setenv("GOMAXPROCS", "3")
	bundle := t.TempDir()
	s := startTestShim(t, bundle, filepath.Join(shortTempDir(t), "s"), "c1", nil)
	defer s.shutdown(t, "c1")
	// The GC target is the runtime's default until the first Start call
	// (gcPercent): none of the daemon's start-up and of its first
	// container's create pays a collection.
	got := readMemoryDump(t, s.pid, bundle)
	for k, want := range map[string]string{
		"/sched/gomaxprocs:threads": "3",
		"/gc/gogc:percent":          "100",
	} {
		if got[k] != want {
			t.Errorf("before any Start: %s = %q, want %q", k, got[k], want)
		}
	}
	if got["/memory/classes/total:bytes"] == "" {
		t.Errorf("no /memory/classes/total:bytes in %s: %v", memoryFile, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
	defer cancel()
	// No container c1 was created: the call fails, and still ends the
	// start-up spell.
	if _, err := s.task.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("start of a task never created: %v, want not found", err)
	}
	if got := readMemoryDump(t, s.pid, bundle)["/gc/gogc:percent"]; got != "25" {
		t.Errorf("after the first Start: /gc/gogc:percent = %q, want 25", got)
	}
}

// The daemon takes the OOM score of whoever started it plus one, read from
// what it inherited: start, its parent, has exited by then (or soon).
func TestDaemonOOMScore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to lower and restore oom_score_adj")
	}
	const self = "/proc/self/oom_score_adj"
	old, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(self, old, 0)
	if err := os.WriteFile(self, []byte("100"), 0); err != nil {
		t.Fatal(err)
	}
	s := startTestShim(t, t.TempDir(), filepath.Join(shortTempDir(t), "s"), "c1", nil)
	defer s.shutdown(t, "c1")
	got, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", s.pid))
	if err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(string(got)); v != "101" {
		t.Errorf("daemon oom_score_adj %s, want 101 (its starter's 100 + 1)", v)
	}
}
