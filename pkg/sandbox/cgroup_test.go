package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"

	"github.com/mineshim/mine/pkg/cgroup"
)

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
