package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// wantStatus fails t unless the task of r reports status want.
func (r *taskRun) wantStatus(t *testing.T, want client.ProcessStatus) {
	t.Helper()
	st, err := r.task.Status(nsContext(t, r.ns, opTimeout))
	if err != nil {
		t.Fatalf("status of %s: %v", r.id, err)
	}
	if st.Status != want {
		t.Fatalf("status of %s: %s, want %s", r.id, st.Status, want)
	}
}

// cgroupFrozen reports whether the cgroup of pid is frozen: freezer.state
// on cgroup v1, cgroup.freeze on cgroup v2.
func cgroupFrozen(t *testing.T, pid int) bool {
	t.Helper()
	if cgroupUnified() {
		dir, err := cgroupDir(pid, "")
		if err != nil {
			t.Fatal(err)
		}
		return readCgroupFile(t, dir, "cgroup.freeze") == "1"
	}
	dir, err := cgroupDir(pid, "freezer")
	if err != nil {
		t.Fatal(err)
	}
	switch st := readCgroupFile(t, dir, "freezer.state"); st {
	case "FROZEN":
		return true
	case "THAWED":
		return false
	default:
		t.Fatalf("%s/freezer.state is %q", dir, st)
	}
	return false
}

// wantTopics waits for the event last of r's container and fails t unless
// the events recorded are exactly want.
func wantTopics(t *testing.T, rec *eventRecorder, want ...string) {
	t.Helper()
	events, err := rec.waitFor(want[len(want)-1], eventTimeout)
	if err != nil {
		t.Fatalf("%v; events so far: %s", err, topics(events))
	}
	if got := topics(events); got != strings.Join(want, " ") {
		t.Fatalf("events: %s; want %s", got, strings.Join(want, " "))
	}
}

func TestPauseResume(t *testing.T) {
	h := requireHarness(t)
	ns, id := defaultNamespace, newID(t)
	rec := h.recordEvents(t, ns, id)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	ctx := nsContext(t, ns, opTimeout)
	pid := int(r.task.Pid())

	if err := r.task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	r.wantStatus(t, client.Paused)
	if !cgroupFrozen(t, pid) {
		t.Errorf("the task is paused but the cgroup of its init (pid %d) is not frozen", pid)
	}
	if err := r.task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	r.wantStatus(t, client.Running)
	if cgroupFrozen(t, pid) {
		t.Errorf("the task is resumed but the cgroup of its init (pid %d) is still frozen", pid)
	}
	wantTopics(t, rec, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed")
	r.killAndDelete(t)
}

// TestPauseFailureLeavesRunning makes runc pause fail for real: the runtime
// is a wrapper of runc that refuses the first pause. The failed pause must
// report the runtime's error, leave the task running (the shim's transient
// pausing state rolled back) and publish nothing; a second pause works.
func TestPauseFailureLeavesRunning(t *testing.T) {
	h := requireHarness(t)
	const refusal = "mine-e2e: pause refused by the runtime wrapper"
	wrapper, dir := runtimeWrapper(t, `if [ "$sub" = pause ] && [ -e "$dir/fail-pause" ]; then
	rm -f "$dir/fail-pause"
	if [ -n "$log" ]; then
		printf '{"level":"error","msg":"%s","time":"2000-01-01T00:00:00Z"}\n' '`+refusal+`' >>"$log"
	fi
	echo '`+refusal+`' >&2
	exit 1
fi`)
	marker := filepath.Join(dir, "fail-pause")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ns, id := defaultNamespace, newID(t)
	rec := h.recordEvents(t, ns, id)
	r := h.startTaskWith(t, ns, id, &options.Options{BinaryName: wrapper}, nil, "sleep", "1000")
	ctx := nsContext(t, ns, opTimeout)
	pid := int(r.task.Pid())

	err := r.task.Pause(ctx)
	if exists(marker) {
		t.Fatalf("the runtime wrapper %s was not asked to pause (pause returned %v): BinaryName not used", wrapper, err)
	}
	if err == nil {
		t.Fatal("pause succeeded although the runtime failed it")
	}
	if !strings.Contains(err.Error(), refusal) {
		t.Errorf("pause error %q does not carry the runtime's error %q", err, refusal)
	}
	r.wantStatus(t, client.Running)
	if cgroupFrozen(t, pid) {
		t.Errorf("the cgroup of pid %d is frozen after a failed pause", pid)
	}

	if err := r.task.Pause(ctx); err != nil {
		t.Fatalf("second pause: %v", err)
	}
	r.wantStatus(t, client.Paused)
	if err := r.task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	r.wantStatus(t, client.Running)
	// One /tasks/paused: the failed pause published nothing.
	wantTopics(t, rec, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed")
	r.killAndDelete(t)
}

func TestUpdateResources(t *testing.T) {
	h := requireHarness(t)
	ns, id := defaultNamespace, newID(t)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	ctx := nsContext(t, ns, opTimeout)
	pid := int(r.task.Pid())

	// limits reads the memory limit and the CPU quota and period of the
	// container's cgroup, as "LIMIT QUOTA PERIOD".
	limits := func() string {
		if cgroupUnified() {
			dir, err := cgroupDir(pid, "")
			if err != nil {
				t.Fatal(err)
			}
			return readCgroupFile(t, dir, "memory.max") + " " + readCgroupFile(t, dir, "cpu.max")
		}
		mem, err := cgroupDir(pid, "memory")
		if err != nil {
			t.Fatal(err)
		}
		cpu, err := cgroupDir(pid, "cpu")
		if err != nil {
			t.Fatal(err)
		}
		return readCgroupFile(t, mem, "memory.limit_in_bytes") + " " +
			readCgroupFile(t, cpu, "cpu.cfs_quota_us") + " " + readCgroupFile(t, cpu, "cpu.cfs_period_us")
	}
	before := limits()
	for _, u := range []struct {
		memory        int64
		quota, period int64
	}{
		{memory: 96 << 20, quota: 50000, period: 100000},
		{memory: 160 << 20, quota: 20000, period: 50000},
	} {
		res := &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: &u.memory},
			CPU:    &specs.LinuxCPU{Quota: &u.quota, Period: ptr(uint64(u.period))},
		}
		if err := r.task.Update(ctx, client.WithResources(res)); err != nil {
			t.Fatalf("update memory %d, cpu quota %d period %d: %v", u.memory, u.quota, u.period, err)
		}
		// cgroup v1: memory.limit_in_bytes, cpu.cfs_quota_us, cpu.cfs_period_us;
		// cgroup v2: memory.max, cpu.max ("QUOTA PERIOD").
		want := fmt.Sprintf("%d %d %d", u.memory, u.quota, u.period)
		if got := limits(); got != want {
			t.Errorf("after update, cgroup limits (memory, cpu quota, cpu period): %s, want %s (before: %s)", got, want, before)
		}
	}
	r.wantStatus(t, client.Running)
	r.killAndDelete(t)
}

func ptr[T any](v T) *T { return &v }

func TestStats(t *testing.T) {
	h := requireHarness(t)
	ns, id := defaultNamespace, newID(t)
	// Burn some CPU and memory first; then one process (pid 1) remains.
	r := h.startTask(t, ns, h.runtime, id, "sh", "-c",
		`i=0; s=; while [ $i -lt 20000 ]; do i=$((i+1)); s="$s."; done; echo ready; exec sleep 1000`)
	r.out.waitFor(t, "ready", exitTimeout)
	ctx := nsContext(t, ns, opTimeout)
	m, err := r.task.Metrics(ctx)
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
	if cgroupUnified() {
		const wantType = "io.containerd.cgroups.v2.Metrics"
		s, ok := v.(*v2stats.Metrics)
		if !ok || m.Data.GetTypeUrl() != wantType {
			t.Fatalf("metrics of type %s (%T) on cgroup v2, want %s", m.Data.GetTypeUrl(), v, wantType)
		}
		if s.GetCPU().GetUsageUsec() == 0 || s.GetMemory().GetUsage() == 0 || s.GetPids().GetCurrent() != 1 {
			t.Errorf("cpu usage %d µs, memory usage %d, pids %d; want cpu and memory > 0, 1 pid",
				s.GetCPU().GetUsageUsec(), s.GetMemory().GetUsage(), s.GetPids().GetCurrent())
		}
	} else {
		const wantType = "io.containerd.cgroups.v1.Metrics"
		s, ok := v.(*v1stats.Metrics)
		if !ok || m.Data.GetTypeUrl() != wantType {
			t.Fatalf("metrics of type %s (%T) on cgroup v1, want %s", m.Data.GetTypeUrl(), v, wantType)
		}
		if s.GetCPU().GetUsage().GetTotal() == 0 || s.GetMemory().GetUsage().GetUsage() == 0 || s.GetPids().GetCurrent() != 1 {
			t.Errorf("cpu usage %d ns, memory usage %d, pids %d; want cpu and memory > 0, 1 pid",
				s.GetCPU().GetUsage().GetTotal(), s.GetMemory().GetUsage().GetUsage(), s.GetPids().GetCurrent())
		}
		// The numbers are those of the container's cgroup.
		dir, err := cgroupDir(int(r.task.Pid()), "memory")
		if err != nil {
			t.Fatal(err)
		}
		if lim, err := strconv.ParseUint(readCgroupFile(t, dir, "memory.limit_in_bytes"), 10, 64); err != nil || lim != s.GetMemory().GetUsage().GetLimit() {
			t.Errorf("memory limit in the metrics %d, in %s/memory.limit_in_bytes %d (%v)", s.GetMemory().GetUsage().GetLimit(), dir, lim, err)
		}
	}
	r.killAndDelete(t)
}

// TestStatsAfterExit: a task whose process has exited, and that is not yet
// deleted, still answers Metrics from its cgroup (both runtimes). CRI reads
// them after an exit with 137 to tell an OOM kill from another SIGKILL
// when the exit reaches it before the TaskOOM event.
func TestStatsAfterExit(t *testing.T) {
	h := requireHarness(t)
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			ns, id := defaultNamespace, newID(t)
			r := h.startTask(t, ns, rt, id, "sh", "-c", "exit 3")
			if code := r.wait(t); code != 3 {
				t.Fatalf("exit status %d, want 3", code)
			}
			m, err := r.task.Metrics(nsContext(t, ns, opTimeout))
			if err != nil {
				t.Fatalf("metrics of the exited task: %v", err)
			}
			v, err := typeurl.UnmarshalAny(m.Data)
			if err != nil {
				t.Fatalf("decode metrics of type %s: %v", m.Data.GetTypeUrl(), err)
			}
			switch s := v.(type) {
			case *v1stats.Metrics:
				if s.GetMemory().GetUsage().GetLimit() == 0 || s.GetMemoryOomControl() == nil {
					t.Errorf("v1 metrics of the exited task without the memory limit or the OOM control: %v", s)
				}
			case *v2stats.Metrics:
				if s.GetMemoryEvents() == nil {
					t.Errorf("v2 metrics of the exited task without the memory events: %v", s)
				}
			default:
				t.Fatalf("metrics of type %T", v)
			}
			if code := r.delete(t); code != 3 {
				t.Errorf("delete reported %d, want 3", code)
			}
		})
	}
}

func TestPids(t *testing.T) {
	h := requireHarness(t)
	ns, id := defaultNamespace, newID(t)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	ctx := nsContext(t, ns, opTimeout)
	spec, err := r.container.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps := *spec.Process
	ps.Args = []string{"sleep", "1001"}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	eid := "pids-exec-" + hex.EncodeToString(b[:])
	out := newOutputBuffer()
	p, err := r.task.Exec(ctx, eid, &ps, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	pexit, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start exec: %v", err)
	}

	infos, err := r.task.Pids(ctx)
	if err != nil {
		t.Fatalf("pids: %v", err)
	}
	got := map[uint32]string{} // pid to exec ID
	var listing []string
	for _, pi := range infos {
		var execOf string
		if pi.Info != nil {
			v, err := typeurl.UnmarshalAny(pi.Info)
			if err != nil {
				t.Fatalf("decode the info of pid %d (%s): %v", pi.Pid, pi.Info.GetTypeUrl(), err)
			}
			d, ok := v.(*options.ProcessDetails)
			if !ok {
				t.Fatalf("info of pid %d is %T, want runc options ProcessDetails", pi.Pid, v)
			}
			execOf = d.GetExecID()
		}
		got[pi.Pid] = execOf
		listing = append(listing, fmt.Sprintf("%d:%q", pi.Pid, execOf))
	}
	want := map[uint32]string{r.task.Pid(): "", p.Pid(): eid}
	if len(got) != len(want) || got[r.task.Pid()] != "" || got[p.Pid()] != eid {
		slices.Sort(listing)
		t.Errorf("pids (pid:exec ID) %v; want the init %d with no exec ID and the exec %d with %q",
			listing, r.task.Pid(), p.Pid(), eid)
	}

	if err := p.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill exec: %v", err)
	}
	select {
	case <-pexit:
	case <-ctx.Done():
		t.Fatalf("exec %s did not exit after SIGKILL: %v", eid, ctx.Err())
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatalf("delete exec: %v", err)
	}
	r.killAndDelete(t)
}

// TestExitAtResume: a task paused while it sleeps, whose sleep ends while it
// is frozen, exits as soon as it is thawed: during the Resume. Mine
// publishes /tasks/exit after the resume's /tasks/resumed; containerd's
// runc shim may publish them the other way round, and its order is logged.
func TestExitAtResume(t *testing.T) {
	h := requireHarness(t)
	const want = "/tasks/create /tasks/start /tasks/paused /tasks/resumed /tasks/exit"
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			ns, id := defaultNamespace, newID(t)
			rec := h.recordEvents(t, ns, id)
			r := h.startTask(t, ns, rt, id, "sleep", "2")
			ctx := nsContext(t, ns, opTimeout)
			if err := r.task.Pause(ctx); err != nil {
				t.Fatalf("pause: %v", err)
			}
			time.Sleep(2500 * time.Millisecond) // the sleep ends, frozen
			if err := r.task.Resume(ctx); err != nil {
				t.Fatalf("resume: %v", err)
			}
			events, err := rec.waitFor("/tasks/exit", eventTimeout)
			if err != nil {
				t.Fatalf("%v; events so far: %s", err, topics(events))
			}
			if got := topics(events); got != want {
				if rt == runtimeRunc {
					t.Logf("%s: events %s", rt, got)
				} else {
					t.Errorf("events %s, want %s", got, want)
				}
			}
			if code := r.delete(t); code != 0 {
				t.Errorf("exit status %d, want 0", code)
			}
		})
	}
}
