//go:build linux

package cgv2

import (
	"os"
	"strings"
	"testing"
)

// TestSystemdCRI runs a CRI pod through the mine shim and through
// containerd's runc shim with SystemdCgroup = true, on a cgroup v2 host
// whose PID 1 is systemd (hack/cgv2/test.sh boots such a VM): the pod's
// containers run in systemd scopes under the pod's slice, ExecSync, Stats
// and OOMKilled work, and nothing of the pod is left after its removal.
func TestSystemdCRI(t *testing.T) {
	requireCgroupV2(t)
	requireStaticBusybox(t)
	comm, err := os.ReadFile("/proc/1/comm")
	if err != nil {
		t.Fatal(err)
	}
	if c := strings.TrimSpace(string(comm)); c != "systemd" {
		t.Skipf("PID 1 is %q, not systemd: the systemd cgroup driver needs systemd (hack/cgv2/test.sh runs this test in a VM booted with systemd)", c)
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Fatalf("PID 1 is systemd but /run/systemd/system is missing: %v", err)
	}
	s := startStack(t, true)
	for _, h := range []string{"mine", "runc"} {
		t.Run("cri-"+h, func(t *testing.T) {
			s.criPod(t, h, "mine-"+h+".slice")
		})
	}
}
