package compat

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"
)

const runtimeRunc = "io.containerd.runc.v2"

// runtimes are the runtimes a release is tested with: the mine shim, and
// beside it the release's own runc shim when its binary directory holds one
// (hack/install-deps.sh keeps it for containerd 2.4 and 1.6; 2.4's does not
// run under 2.2 or 1.7).
func (e *env) runtimes() []string {
	rts := []string{runtimeMine}
	if executable(filepath.Join(filepath.Dir(e.ctr), "containerd-shim-runc-v2")) {
		rts = append(rts, runtimeRunc)
	}
	return rts
}

// memoryAndPids reads task's metrics: its cgroup's memory usage and pids.
func (e *env) memoryAndPids(t *testing.T, task client.Task) (memory, pids uint64) {
	t.Helper()
	m, err := task.Metrics(e.ctx(t))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	if m.Data == nil {
		t.Fatal("metrics have no data")
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		t.Fatalf("decode metrics of type %s: %v", m.Data.GetTypeUrl(), err)
	}
	switch s := v.(type) {
	case *v1stats.Metrics:
		return s.GetMemory().GetUsage().GetUsage(), s.GetPids().GetCurrent()
	case *v2stats.Metrics:
		return s.GetMemory().GetUsage(), s.GetPids().GetCurrent()
	}
	t.Fatalf("metrics of type %s (%T), want cgroup v1 or v2 metrics", m.Data.GetTypeUrl(), v)
	return 0, 0
}

// pauseResumeMetrics pauses and resumes a container under rt, checking its
// status each time, then reads its cgroup metrics.
func (e *env) pauseResumeMetrics(t *testing.T, rt string) {
	var out syncBuffer
	id := newID(t, "pause")
	task, cont, exitC := e.startTaskWith(t, rt, id, &out, "sleep", "1000")
	ctx := e.ctx(t)
	status := func(want client.ProcessStatus) {
		t.Helper()
		st, err := task.Status(ctx)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if st.Status != want {
			t.Fatalf("status %q, want %q", st.Status, want)
		}
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	status(client.Paused)
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	status(client.Running)

	// The container's cgroup holds its one process once the shim has
	// reaped what runc left there: runc's own short-lived processes count
	// in the pids controller until they are reaped (seen once, 6 pids, for
	// io.containerd.runc.v2 on cgroup v1 under load), so the count may
	// take a moment to settle. A shim that read another cgroup would not
	// settle on 1.
	var memory, pids uint64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		memory, pids = e.memoryAndPids(t, task)
		if memory > 0 && pids == 1 || time.Now().After(deadline) {
			break
		}
	}
	if memory == 0 || pids != 1 {
		t.Errorf("memory usage %d, pids %d; want memory > 0, 1 pid", memory, pids)
	}

	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if code := waitExit(t, exitC, "container"); code != 137 {
		t.Errorf("after SIGKILL: Wait status %d, want 137", code)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Errorf("task delete: %v", err)
	}
	if err := cont.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Errorf("delete container: %v", err)
	}
	if rt == runtimeMine {
		e.assertNoTraces(t, id, "")
	}
}
