package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/cgroup"
)

// podStats reads the metrics of the pod's cgroup parent, or of the cgroup
// of pid when there is no parent.
func podStats(parent string, pid int) (proto.Message, error) {
	s, err := podCgroup(parent, pid)
	if err != nil {
		return nil, err
	}
	return s.Read()
}

// TestPodCgroup places a process as the holder would be, under a pod
// cgroup parent, reads the pod's metrics by parent and by pid, and removes
// the holder's cgroup.
func TestPodCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	if _, err := podStats("", 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("podStats without parent or holder: %v, want a failed precondition", err)
	}
	parent := fmt.Sprintf("/mine-pod-test-%d", os.Getpid())
	if !cgroup.Unified() {
		// A v2 cgroup that does not exist reads as zeroes, as with the
		// cgroup2 manager; a v1 one is not found.
		if _, err := podStats(parent, 0); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("podStats of a missing parent: %v, want not found", err)
		}
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	p, err := joinPodCgroup(parent, "holder", cmd.Process.Pid)
	if err != nil {
		t.Fatalf("joinPodCgroup: %v", err)
	}
	defer func() { _ = cgroup.Remove(parent) }()
	if want := parent + "/holder"; p != want {
		t.Errorf("holder cgroup %q, want %q", p, want)
	}
	for _, tc := range []struct {
		name   string
		parent string
		pid    int
	}{
		{"by parent", parent, 0},
		{"by holder pid", "", cmd.Process.Pid},
	} {
		m, err := podStats(tc.parent, tc.pid)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var pids uint64
		switch m := m.(type) {
		case *v1.Metrics:
			pids = m.GetPids().GetCurrent()
		case *v2.Metrics:
			pids = m.GetPids().GetCurrent()
		}
		if pids != 1 {
			t.Errorf("%s: %d pids, want the holder's 1 (%T)", tc.name, pids, m)
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	removeCgroup(p)
	if m, err := podStats(p, 0); err == nil {
		if _, v1 := m.(*v1.Metrics); v1 {
			t.Errorf("podStats of the removed holder cgroup: %v, want not found", m)
		}
	}
}

// inPod places a process in the pod cgroup parent, where the holder would
// be; end kills it and removes its cgroup and parent.
func inPod(tb testing.TB, parent string) (end func()) {
	tb.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p, err := joinPodCgroup(parent, "holder", cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		tb.Fatal(err)
	}
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		removeCgroup(p)
		_ = cgroup.Remove(parent)
	}
}

// readyService returns a Service whose sandbox is ready, with parent as the
// pod's cgroup parent, without a holder process: enough for SandboxMetrics
// by parent.
func readyService(id, parent string) *Service {
	s := New(Config{})
	s.phase, s.id, s.pod.CgroupParent = phaseReady, id, parent
	s.stopped = make(chan struct{})
	return s
}

// BenchmarkSandboxMetrics is what containerd's CRI costs a pod's shim once
// a second (its stats collector calls the controller's Metrics for every
// sandbox): one SandboxMetrics of the pod's cgroup parent.
func BenchmarkSandboxMetrics(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("creating cgroups needs root")
	}
	parent := fmt.Sprintf("/mine-pod-bench-%d", os.Getpid())
	defer inPod(b, parent)()
	s := readyService("bench", parent)
	ctx := context.Background()
	req := &SandboxMetricsRequest{SandboxId: "bench"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.SandboxMetrics(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSandboxMetricsKeepsItsCgroup: the pod's cgroup is resolved at the
// first SandboxMetrics and kept for the next ones; once it is gone, the
// call fails and the next one resolves it again.
func TestSandboxMetricsKeepsItsCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	parent := fmt.Sprintf("/mine-pod-keep-%d", os.Getpid())
	end := inPod(t, parent)
	defer func() { end() }()

	s := readyService("keep", parent)
	ctx := context.Background()
	req := &SandboxMetricsRequest{SandboxId: "keep"}
	var first *cgroup.Stats
	for i := range 3 {
		if _, err := s.SandboxMetrics(ctx, req); err != nil {
			t.Fatalf("SandboxMetrics %d: %v", i, err)
		}
		if i == 0 {
			first = s.stats
		}
		if s.stats == nil || s.stats != first {
			t.Fatalf("call %d: cgroup reader %p, want the first call's %p", i, s.stats, first)
		}
	}
	if cgroup.Unified() {
		return // a v2 cgroup that is gone reads as zeroes: nothing to resolve again
	}
	end()
	if _, err := s.SandboxMetrics(ctx, req); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("SandboxMetrics of a removed pod cgroup: %v, want not found", err)
	}
	end = inPod(t, parent)
	if _, err := s.SandboxMetrics(ctx, req); err != nil {
		t.Errorf("SandboxMetrics of the pod cgroup made again: %v", err)
	}
}
