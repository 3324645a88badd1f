package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/mineshim/mine/pkg/cgroup"
)

// The floor answers Stats with the metrics of its process's cgroup, holds a
// Wait until its caller gives up, and knows no other method.
func TestFloorServesStatsAndWait(t *testing.T) {
	stats, err := cgroup.ForPid(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup to read here: %v", err)
	}
	c := serve(t, stats, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var resp taskAPI.StatsResponse
	if err := c.Call(ctx, "containerd.task.v3.Task", "Stats", &taskAPI.StatsRequest{ID: "x"}, &resp); err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if resp.Stats == nil || resp.Stats.TypeUrl == "" || len(resp.Stats.Value) == 0 {
		t.Errorf("Stats answered %v, want metrics", resp.Stats)
	}

	wctx, wcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer wcancel()
	var wresp taskAPI.WaitResponse
	begin := time.Now()
	err = c.Call(wctx, "containerd.task.v3.Task", "Wait", &taskAPI.WaitRequest{ID: "x"}, &wresp)
	// The server's copy of the caller's deadline may end the call first.
	if !errors.Is(err, context.DeadlineExceeded) && !errdefs.IsDeadlineExceeded(errgrpc.ToNative(err)) || time.Since(begin) < 150*time.Millisecond {
		t.Errorf("Wait returned %v after %v, before its caller gave up", err, time.Since(begin))
	}

	var sresp taskAPI.StateResponse
	err = c.Call(ctx, "containerd.task.v3.Task", "State", &taskAPI.StateRequest{ID: "x"}, &sresp)
	if err == nil || !(errdefs.IsNotFound(errgrpc.ToNative(err)) || errdefs.IsNotImplemented(errgrpc.ToNative(err))) {
		t.Errorf("State: %v, want an unknown method", err)
	}
}

// serve serves the floor's methods on a fresh socket and connects to it.
func serve(t *testing.T, stats *cgroup.Stats, x *execs) *ttrpc.Client {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	register(srv, stats, x)
	sock := filepath.Join(t.TempDir(), "f.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

// With a container, the floor runs execs in it through runc, reaps them and
// reports their exit status, as a shim's exec probes need.
func TestFloorRunsExecs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a container")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc in PATH")
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("needs a static busybox (Debian's busybox-static): %v", err)
	}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", busybox, filepath.Join(bundle, "rootfs", "bin")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	cfgPath := filepath.Join(bundle, "config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"/bin/busybox", "sleep", "1000"}
	if raw, err = json.Marshal(&spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "runc")
	id := fmt.Sprintf("floor-exec-%d", os.Getpid())
	// The container keeps runc's stdio: not a pipe that the test waits on.
	run := exec.Command("runc", "--root", root, "--log", filepath.Join(dir, "runc.log"), "run", "--detach", "--bundle", bundle, id)
	if err := run.Run(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "runc.log"))
		t.Fatalf("runc run: %v: %s", err, log)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("runc", "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
			t.Errorf("runc delete: %v: %s", err, out)
		}
	})

	x, err := newExecs(root, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(x.dir)
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	})
	stats, err := cgroup.ForPid(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup to read here: %v", err)
	}
	c := serve(t, stats, x)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const svc = "containerd.task.v3.Task"
	for _, tc := range []struct {
		execID string
		args   []string
		status uint32
	}{{"true", []string{"/bin/busybox", "true"}, 0}, {"exit-3", []string{"/bin/busybox", "sh", "-c", "exit 3"}, 3}} {
		p := *spec.Process
		p.Args = tc.args
		body, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		execID := tc.execID
		req := &taskAPI.ExecProcessRequest{ID: id, ExecID: execID, Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: body}}
		if err := c.Call(ctx, svc, "Exec", req, &emptypb.Empty{}); err != nil {
			t.Fatalf("Exec %v: %v", tc.args, err)
		}
		err = c.Call(ctx, svc, "Exec", req, &emptypb.Empty{})
		if !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
			t.Errorf("Exec of a known exec ID: %v, want already exists", err)
		}
		var started taskAPI.StartResponse
		if err := c.Call(ctx, svc, "Start", &taskAPI.StartRequest{ID: id, ExecID: execID}, &started); err != nil {
			t.Fatalf("Start %v: %v", tc.args, err)
		}
		if started.Pid == 0 {
			t.Errorf("Start %v answered no pid", tc.args)
		}
		var waited taskAPI.WaitResponse
		if err := c.Call(ctx, svc, "Wait", &taskAPI.WaitRequest{ID: id, ExecID: execID}, &waited); err != nil {
			t.Fatalf("Wait %v: %v", tc.args, err)
		}
		if waited.ExitStatus != tc.status {
			t.Errorf("Wait %v: status %d, want %d", tc.args, waited.ExitStatus, tc.status)
		}
		var deleted taskAPI.DeleteResponse
		if err := c.Call(ctx, svc, "Delete", &taskAPI.DeleteRequest{ID: id, ExecID: execID}, &deleted); err != nil {
			t.Fatalf("Delete %v: %v", tc.args, err)
		}
		if deleted.Pid != started.Pid || deleted.ExitStatus != tc.status {
			t.Errorf("Delete %v: pid %d status %d, want %d and %d", tc.args, deleted.Pid, deleted.ExitStatus, started.Pid, tc.status)
		}
		err = c.Call(ctx, svc, "Wait", &taskAPI.WaitRequest{ID: id, ExecID: execID}, &waited)
		if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Errorf("Wait after Delete: %v, want not found", err)
		}
	}

	execReq := func(execID string, args ...string) *taskAPI.ExecProcessRequest {
		p := *spec.Process
		p.Args = args
		body, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		return &taskAPI.ExecProcessRequest{ID: id, ExecID: execID, Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: body}}
	}

	// Start returns once the process runs, not once it exits: a running
	// exec cannot be deleted, and one Start waited for could.
	if err := c.Call(ctx, svc, "Exec", execReq("sleep", "/bin/busybox", "sleep", "5"), &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	var started taskAPI.StartResponse
	if err := c.Call(ctx, svc, "Start", &taskAPI.StartRequest{ID: id, ExecID: "sleep"}, &started); err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctx, svc, "Delete", &taskAPI.DeleteRequest{ID: id, ExecID: "sleep"}, &taskAPI.DeleteResponse{})
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("Delete of a running exec: %v, want failed precondition", err)
	}
	var waited taskAPI.WaitResponse
	if err := c.Call(ctx, svc, "Wait", &taskAPI.WaitRequest{ID: id, ExecID: "sleep"}, &waited); err != nil || waited.ExitStatus != 0 {
		t.Errorf("Wait of sleep: status %d, %v", waited.ExitStatus, err)
	}
	if err := c.Call(ctx, svc, "Delete", &taskAPI.DeleteRequest{ID: id, ExecID: "sleep"}, &taskAPI.DeleteResponse{}); err != nil {
		t.Errorf("Delete of sleep after its exit: %v", err)
	}

	// A Wait in flight ends when its exec is deleted before any Start, and
	// that exec can no longer be started.
	if err := c.Call(ctx, svc, "Exec", execReq("never", "/bin/busybox", "true"), &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- c.Call(ctx, svc, "Wait", &taskAPI.WaitRequest{ID: id, ExecID: "never"}, &taskAPI.WaitResponse{})
	}()
	time.Sleep(50 * time.Millisecond)
	if err := c.Call(ctx, svc, "Delete", &taskAPI.DeleteRequest{ID: id, ExecID: "never"}, &taskAPI.DeleteResponse{}); err != nil {
		t.Errorf("Delete before Start: %v", err)
	}
	select {
	case err := <-waitErr:
		if err != nil && !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Errorf("Wait of an exec deleted before Start: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Wait of an exec deleted before Start did not return")
	}
	err = c.Call(ctx, svc, "Start", &taskAPI.StartRequest{ID: id, ExecID: "never"}, &taskAPI.StartResponse{})
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("Start after Delete: %v, want not found", err)
	}

	// Unknown IDs and an exec without an ID are refused.
	err = c.Call(ctx, svc, "Wait", &taskAPI.WaitRequest{ID: id, ExecID: "nobody"}, &taskAPI.WaitResponse{})
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("Wait of an unknown exec: %v, want not found", err)
	}
	bad := execReq("x", "/bin/busybox", "true")
	bad.ID = "other"
	if err := c.Call(ctx, svc, "Exec", bad, &emptypb.Empty{}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("Exec in another container: %v, want not found", err)
	}
	if err := c.Call(ctx, svc, "Exec", execReq("", "/bin/busybox", "true"), &emptypb.Empty{}); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("Exec without an exec ID: %v, want invalid argument", err)
	}
}
