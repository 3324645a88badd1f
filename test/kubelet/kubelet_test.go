package kubelet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/internal/testenv"
)

func int64p(v int64) *int64 { return &v }

// TestTwoContainers runs a static pod of two containers: both run in the one
// mine shim of the pod, their output reaches the kubelet's log files, and
// CRI and the kubelet's /stats/summary report their CPU and memory.
func TestTwoContainers(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	name := staticPod(t, "two", podSpec{
		TerminationGracePeriodSeconds: int64p(5),
		Containers: []container{
			// Some CPU work first, so its CPU time is not zero.
			busybox("a", `echo hello from a; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; `+sleeper),
			busybox("b", `echo hello from b; `+sleeper),
		},
	})
	p := waitPod(t, name, "both containers running", running("a", "b"))
	sb := sandboxOf(t, name)
	podShim(t, sb)
	procs, err := testenv.ShimProcesses(env.ctrd.Address(), []string{env.shim})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range p.Status.ContainerStatuses {
		ids = append(ids, criID(c.ContainerID))
	}
	for _, proc := range procs {
		if id, _ := proc.Flag("id"); strings.Contains(strings.Join(ids, " "), id) {
			t.Errorf("container %s has a shim of its own (pid %d): the pod's containers belong in the sandbox's shim", id, proc.Pid)
		}
	}

	logDir := filepath.Join(env.kube.Config.PodLogsDir(), fmt.Sprintf("default_%s_%s", name, p.Metadata.UID))
	for _, c := range []string{"a", "b"} {
		path := filepath.Join(logDir, c, "0.log")
		want := "hello from " + c
		if err := poll(podTimeout, func() (bool, string) {
			data, err := os.ReadFile(path)
			if err != nil {
				return false, err.Error()
			}
			// CRI log format: TIMESTAMP stdout F LINE
			for _, line := range strings.Split(string(data), "\n") {
				if f := strings.SplitN(line, " ", 4); len(f) == 4 && f[1] == "stdout" && f[3] == want {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%s holds %q", path, data)
		}); err != nil {
			t.Errorf("container %s's output in the kubelet's log file: %v", c, err)
		}
	}

	// CRI: containerd >= 2.3 collects the statistics once a second.
	if err := poll(podTimeout, func() (bool, string) {
		resp, err := env.rt.ListContainerStats(ctx(t), &cri.ListContainerStatsRequest{
			Filter: &cri.ContainerStatsFilter{PodSandboxId: sb}})
		if err != nil {
			return false, err.Error()
		}
		var state []string
		ok := len(resp.GetStats()) == 2
		for _, s := range resp.GetStats() {
			cpu, mem := s.GetCpu().GetUsageCoreNanoSeconds().GetValue(), s.GetMemory().GetWorkingSetBytes().GetValue()
			state = append(state, fmt.Sprintf("%s: cpu %d ns, memory %d B", s.GetAttributes().GetMetadata().GetName(), cpu, mem))
			ok = ok && cpu > 0 && mem > 0
		}
		return ok, fmt.Sprintf("%d containers: %s", len(resp.GetStats()), strings.Join(state, "; "))
	}); err != nil {
		t.Errorf("CRI ListContainerStats, non-zero CPU and memory for both containers: %v", err)
	}

	// The kubelet's summary, CPU and memory only (what metrics-server
	// asks for): the full summary also wants the statistics of the
	// filesystem of the kubelet's root, which cAdvisor cannot find for
	// every kind of root device.
	if err := poll(podTimeout, func() (bool, string) {
		var sum struct {
			Pods []struct {
				PodRef     metadata `json:"podRef"`
				Containers []struct {
					Name string `json:"name"`
					CPU  struct {
						UsageCoreNanoSeconds uint64 `json:"usageCoreNanoSeconds"`
					} `json:"cpu"`
					Memory struct {
						WorkingSetBytes uint64 `json:"workingSetBytes"`
					} `json:"memory"`
				} `json:"containers"`
			} `json:"pods"`
		}
		if err := env.kube.Get("/stats/summary?only_cpu_and_memory=true", &sum); err != nil {
			return false, err.Error()
		}
		for _, ps := range sum.Pods {
			if ps.PodRef.Name != name {
				continue
			}
			var state []string
			ok := len(ps.Containers) == 2
			for _, c := range ps.Containers {
				state = append(state, fmt.Sprintf("%s: cpu %d ns, memory %d B", c.Name, c.CPU.UsageCoreNanoSeconds, c.Memory.WorkingSetBytes))
				ok = ok && c.CPU.UsageCoreNanoSeconds > 0 && c.Memory.WorkingSetBytes > 0
			}
			return ok, strings.Join(state, "; ")
		}
		return false, "pod not in the summary"
	}); err != nil {
		t.Errorf("kubelet /stats/summary?only_cpu_and_memory=true, non-zero CPU and memory for both containers: %v", err)
	}
}

// execSyncs is how many ExecSync calls the liveness test makes itself, on
// top of the kubelet's probes.
const execSyncs = 300

// TestLivenessProbe runs a container with a liveness exec probe every
// second. While the probe passes, hundreds of ExecSync calls go through the
// pod's mine shim and leave no descriptor or goroutine behind. Then the
// probe starts failing and the kubelet restarts the container.
func TestLivenessProbe(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	c := busybox("app", `touch /tmp/healthy; `+sleeper)
	c.LivenessProbe = &probe{
		Exec:          &execAction{Command: []string{"cat", "/tmp/healthy"}},
		PeriodSeconds: 1, FailureThreshold: 1, TimeoutSeconds: 10,
	}
	name := staticPod(t, "liveness", podSpec{TerminationGracePeriodSeconds: int64p(5), Containers: []container{c}})
	p := waitPod(t, name, "running", running("app"))
	id := criID(p.Status.ContainerStatuses[0].ContainerID)
	shim := podShim(t, sandboxOf(t, name))

	exec := func(cmd ...string) *cri.ExecSyncResponse {
		t.Helper()
		resp, err := env.rt.ExecSync(ctx(t), &cri.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 10})
		if err != nil {
			t.Fatalf("ExecSync %v: %v", cmd, err)
		}
		return resp
	}
	// Warm up: the first execs start what the shim keeps for later ones.
	for range 10 {
		exec("true")
	}
	fds0, gr0 := shimUsage(t, shim)
	for i := range execSyncs {
		r := exec("sh", "-c", fmt.Sprintf("echo out %d; echo err %d >&2; exit %d", i, i, i%3))
		if got, want := string(r.GetStdout()), fmt.Sprintf("out %d\n", i); got != want || r.GetExitCode() != int32(i%3) ||
			string(r.GetStderr()) != fmt.Sprintf("err %d\n", i) {
			t.Fatalf("ExecSync %d: stdout %q stderr %q exit %d; want %q, \"err %d\\n\", exit %d",
				i, got, r.GetStderr(), r.GetExitCode(), want, i, i%3)
		}
	}
	// The kubelet's probes run meanwhile: wait (bounded) until the shim is
	// back to what it used before, give or take one probe in flight.
	var fds, gr int
	if err := poll(30*time.Second, func() (bool, string) {
		fds, gr = shimUsage(t, shim)
		return fds <= fds0+3 && gr <= gr0+4, fmt.Sprintf("%d fds, %d goroutines", fds, gr)
	}); err != nil {
		t.Errorf("after %d ExecSync calls the shim uses more than before (%d fds, %d goroutines): %v", execSyncs, fds0, gr0, err)
	}
	t.Logf("shim pid %d after %d ExecSync calls and the probes: %d fds (%d before), %d goroutines (%d before)",
		shim, execSyncs, fds, fds0, gr, gr0)

	exec("rm", "/tmp/healthy")
	p = waitPod(t, name, "restarted by the failing liveness probe", func(p *pod) bool {
		c, ok := p.container("app")
		return ok && c.RestartCount >= 1 && c.LastState.Terminated != nil && c.State.Running != nil
	})
	st, _ := p.container("app")
	if newID := criID(st.ContainerID); newID == id {
		t.Errorf("container ID %s unchanged after the restart", id)
	}
	t.Logf("after the probe failed: %s", p.describe())
}

// shimUsage returns the open descriptors and goroutines of the mine shim
// daemon pid.
func shimUsage(t *testing.T, pid int) (fds, goroutines int) {
	t.Helper()
	fds, err := testenv.FDCount(pid)
	if err != nil {
		t.Fatal(err)
	}
	if goroutines, err = testenv.ShimGoroutines(pid, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return fds, goroutines
}

// TestRestartPolicy runs a pod with restartPolicy OnFailure: the container
// that exits 3 is restarted, the one that exits 0 is not.
func TestRestartPolicy(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	name := staticPod(t, "restart", podSpec{
		RestartPolicy:                 "OnFailure",
		TerminationGracePeriodSeconds: int64p(5),
		Containers: []container{
			busybox("fails", `echo run; exit 3`),
			busybox("completes", `exit 0`),
		},
	})
	p := waitPod(t, name, "the failing container restarted", func(p *pod) bool {
		c, ok := p.container("fails")
		return ok && c.RestartCount >= 1 && c.LastState.Terminated != nil
	})
	f, _ := p.container("fails")
	if f.LastState.Terminated.ExitCode != 3 || f.LastState.Terminated.Reason != "Error" {
		t.Errorf("failing container's last state: %s, want exit 3, reason Error", f.LastState)
	}
	c, _ := p.container("completes")
	if c.RestartCount != 0 || c.State.Terminated == nil || c.State.Terminated.ExitCode != 0 || c.State.Terminated.Reason != "Completed" {
		t.Errorf("completed container: %s, %d restarts; want terminated with exit 0, Completed, and no restart", c.State, c.RestartCount)
	}
}

// TestOOMKilled runs a container that allocates far beyond its 16 MiB
// memory limit: the kernel kills it, and the kubelet and CRI report the
// reason OOMKilled.
func TestOOMKilled(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	c := busybox("hog", `x=$(head -c 200000000 /dev/zero | tr "\0" a); echo "not killed, kept ${#x} bytes"`)
	c.Resources = &resources{Limits: map[string]string{"memory": "16Mi"}}
	name := staticPod(t, "oom", podSpec{RestartPolicy: "Never", TerminationGracePeriodSeconds: int64p(5), Containers: []container{c}})
	p := waitPod(t, name, "container terminated", func(p *pod) bool {
		c, ok := p.container("hog")
		return ok && c.State.Terminated != nil
	})
	st, _ := p.container("hog")
	if st.State.Terminated.Reason != "OOMKilled" || st.State.Terminated.ExitCode != 128+int(syscall.SIGKILL) {
		t.Errorf("kubelet: %s, want terminated with exit 137, OOMKilled", st.State)
	}
	resp, err := env.rt.ContainerStatus(ctx(t), &cri.ContainerStatusRequest{ContainerId: criID(st.ContainerID)})
	if err != nil {
		t.Fatal(err)
	}
	if s := resp.GetStatus(); s.GetReason() != "OOMKilled" || s.GetExitCode() != 137 {
		t.Errorf("CRI container status: reason %q, exit %d; want OOMKilled, 137", s.GetReason(), s.GetExitCode())
	}
}

// TestRemoveManifest removes the manifest of a running pod whose container
// ignores SIGTERM (sleep as PID 1): the kubelet stops the pod within its
// terminationGracePeriodSeconds, and no shim, mount or cgroup of the pod
// is left.
func TestRemoveManifest(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	const grace = 5
	name := staticPod(t, "remove", podSpec{
		TerminationGracePeriodSeconds: int64p(grace),
		Containers: []container{
			busybox("stubborn", `exec sleep 3600`),
			busybox("polite", sleeper),
		},
	})
	p := waitPod(t, name, "running", running("stubborn", "polite"))
	sb := sandboxOf(t, name)
	podShim(t, sb)
	ids := []string{sb}
	for _, c := range p.Status.ContainerStatuses {
		ids = append(ids, criID(c.ContainerID))
	}
	if cg, err := env.kube.CgroupsOf(p.Metadata.UID); err != nil || len(cg) == 0 {
		t.Fatalf("no cgroup of pod %s under the kubelet's cgroup root (%v): the leftover check below would prove nothing", p.Metadata.UID, err)
	}

	removed := time.Now()
	if err := os.Remove(filepath.Join(env.kube.Config.ManifestDir(), strings.TrimSuffix(name, "-"+nodeName)+".json")); err != nil {
		t.Fatal(err)
	}
	// The kubelet notices the removal within its fileCheckFrequency (1 s),
	// sends SIGTERM, and SIGKILL after the grace period; then it stops the
	// sandbox. The slack covers that on a busy machine.
	const slack = 10 * time.Second
	limit := grace*time.Second + slack
	if err := poll(limit, func() (bool, string) {
		ready, err := sandboxes(name, true)
		if err != nil {
			return false, err.Error()
		}
		resp, err := env.rt.ListContainers(ctx(t), &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
			PodSandboxId: sb, State: &cri.ContainerStateValue{State: cri.ContainerState_CONTAINER_RUNNING}}})
		if err != nil {
			return false, err.Error()
		}
		return len(ready) == 0 && len(resp.GetContainers()) == 0,
			fmt.Sprintf("%d ready sandboxes, %d running containers", len(ready), len(resp.GetContainers()))
	}); err != nil {
		t.Fatalf("pod not stopped within its grace period %ds (+%v): %v", grace, slack, err)
	}
	t.Logf("pod stopped %v after its manifest was removed (grace period %ds)", time.Since(removed).Round(time.Millisecond), grace)

	if err := poll(30*time.Second, func() (bool, string) {
		var left []string
		procs, err := testenv.ShimProcesses(env.ctrd.Address(), []string{env.shim})
		if err != nil {
			return false, err.Error()
		}
		for _, proc := range procs {
			if id, _ := proc.Flag("id"); id == sb {
				left = append(left, fmt.Sprintf("shim pid %d", proc.Pid))
			}
		}
		for _, dir := range []string{env.ctrd.Config.State(), env.ctrd.Config.Root()} {
			mounts, err := testenv.MountsUnder(dir)
			if err != nil {
				return false, err.Error()
			}
			for _, m := range mounts {
				for _, id := range ids {
					if strings.Contains(m, id) {
						left = append(left, "mount "+m)
					}
				}
			}
		}
		for _, s := range append([]string{p.Metadata.UID}, ids...) {
			cg, err := env.kube.CgroupsOf(s)
			if err != nil {
				return false, err.Error()
			}
			for _, c := range cg {
				left = append(left, "cgroup "+c)
			}
		}
		return len(left) == 0, strings.Join(left, ", ")
	}); err != nil {
		t.Errorf("left behind by the removed pod: %v", err)
	}
}
