package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	"github.com/mineshim/mine/pkg/cgroup"
)

// The floor answers Stats with the metrics of its process's cgroup, holds a
// Wait until its caller gives up, and knows no other method.
func TestFloorServesStatsAndWait(t *testing.T) {
	stats, err := cgroup.ForPid(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup to read here: %v", err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	register(srv, stats)
	sock := filepath.Join(t.TempDir(), "f.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()

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
	if err := c.Call(wctx, "containerd.task.v3.Task", "Wait", &taskAPI.WaitRequest{ID: "x"}, &wresp); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait returned %v before its caller gave up", err)
	}

	var sresp taskAPI.StateResponse
	err = c.Call(ctx, "containerd.task.v3.Task", "State", &taskAPI.StateRequest{ID: "x"}, &sresp)
	if err == nil || !(errdefs.IsNotFound(errgrpc.ToNative(err)) || errdefs.IsNotImplemented(errgrpc.ToNative(err))) {
		t.Errorf("State: %v, want an unknown method", err)
	}
}
