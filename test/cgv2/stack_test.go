//go:build linux

package cgv2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	ctrdevents "github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
	"github.com/mineshim/mine/test/internal/testenv"
)

const (
	stackNamespace = "mine-stack"
	criNamespace   = "k8s.io"
	stackImage     = imagebuild.DefaultRef
	stackPause     = "localhost/mine-cgv2/pause:1"
	// stackTimeout bounds each subtest: the VM emulates its CPU.
	stackTimeout = 3 * time.Minute
)

// stack is a private containerd v2.4 with the mine shim and containerd's
// runc shim, and what the stack tests drive it with.
type stack struct {
	ctrd   *testenv.Containerd
	client *client.Client
	rt     cri.RuntimeServiceClient
	img    cri.ImageServiceClient
	exes   []string
	snap   string
}

// startStack starts containerd ($MINE_CONTAINERD_BIN, or the cache),
// imports the busybox image into stackNamespace and, for CRI, the busybox
// and pause ($MINE_PAUSE, or a build) images into k8s.io. systemdCgroup
// sets SystemdCgroup on both CRI runtimes; the runtime "mine" is then
// declared with runtime type io.containerd.runc.v2 and the mine shim as
// runtime_path, which is how CRI passes runc options to it.
func startStack(t *testing.T, systemdCgroup bool) *stack {
	t.Helper()
	binDir, skip := testenv.Latest().BinDir()
	if skip != "" {
		t.Skip(skip)
	}
	dir, err := os.MkdirTemp("/run", "mine-s-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := testenv.RemoveDir(dir); err != nil {
			t.Error(err)
		}
	})
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	shim, skip, err := testenv.BuildShim(bin)
	if skip != "" {
		t.Skip(skip)
	}
	if err != nil {
		t.Fatal(err)
	}
	pause := os.Getenv("MINE_PAUSE")
	if pause == "" {
		if pause, skip, err = testenv.BuildPause(bin); skip != "" {
			t.Skip(skip)
		} else if err != nil {
			t.Fatal(err)
		}
	}
	s := &stack{snap: "overlayfs"}
	for _, p := range []string{shim, filepath.Join(binDir, "containerd-shim-runc-v2")} {
		if exe, err := filepath.EvalSymlinks(p); err == nil {
			s.exes = append(s.exes, exe)
		}
	}
	if err := testenv.OverlayWorks(dir); err != nil {
		s.snap = "native"
	}
	cfg := testenv.Config{
		Dir:           filepath.Join(dir, "c"),
		Snapshotter:   s.snap,
		SandboxImage:  stackPause,
		SystemdCgroup: systemdCgroup,
		PathDirs:      []string{bin, binDir},
		LogLevel:      "info",
	}
	if systemdCgroup {
		cfg.Runtimes = map[string]string{"runc": testenv.RuntimeRunc, "mine": testenv.RuntimeRunc}
		cfg.RuntimePaths = map[string]string{"mine": s.exes[0]}
	}
	if s.ctrd, err = testenv.StartContainerd(filepath.Join(binDir, "containerd"), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log, last lines:\n%s", s.ctrd.LogTail(40))
		}
		if err := s.ctrd.Stop(); err != nil {
			t.Error(err)
		}
		if err := testenv.KillLeftoverShims(s.ctrd.Address(), s.exes); err != nil {
			t.Error(err)
		}
	})
	if s.client, err = client.New(cfg.Address(), client.WithTimeout(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.client.Close() })

	pauseOpts, err := testenv.PauseImage(stackPause, pause)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range []struct {
		ns   string
		opts imagebuild.Options
	}{
		{stackNamespace, imagebuild.Options{Ref: stackImage}},
		{criNamespace, imagebuild.Options{Ref: stackImage}},
		{criNamespace, pauseOpts},
	} {
		var buf bytes.Buffer
		if _, err := imagebuild.Write(&buf, im.opts); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), im.ns), stackTimeout)
		imgs, err := s.client.Import(ctx, &buf)
		if err == nil {
			for _, i := range imgs {
				if err = client.NewImageWithPlatform(s.client, i, nil).Unpack(ctx, s.snap); err != nil {
					break
				}
			}
		}
		cancel()
		if err != nil {
			t.Fatalf("import %s into %s: %v", im.opts.Ref, im.ns, err)
		}
	}
	conn, err := grpc.NewClient("unix://"+cfg.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.rt, s.img = cri.NewRuntimeServiceClient(conn), cri.NewImageServiceClient(conn)
	return s
}

func (s *stack) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), stackNamespace), stackTimeout)
	t.Cleanup(cancel)
	return ctx
}

// runtimes are the runtimes every behaviour is asserted for: the mine shim
// and containerd's runc shim.
var runtimes = []string{testenv.RuntimeMine, testenv.RuntimeRunc}

// TestStack drives containerd v2.4 with the mine shim and with containerd's
// runc shim on cgroup v2: lifecycle, exec, pause and resume (the cgroup v2
// freezer), update, Stats (cgroup v2 metrics), OOM (the /tasks/oom event
// and exit 137), the ShimCgroup option, and a CRI pod whose container is
// OOM-killed (reason OOMKilled).
func TestStack(t *testing.T) {
	requireCgroupV2(t)
	requireStaticBusybox(t)
	s := startStack(t, false)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			t.Run("lifecycle", func(t *testing.T) { s.lifecycle(t, rt) })
			t.Run("exec-pause-update-stats", func(t *testing.T) { s.running(t, rt) })
			t.Run("oom", func(t *testing.T) { s.oom(t, rt) })
			t.Run("exec-oom", func(t *testing.T) { s.execOOM(t, rt) })
			t.Run("shim-cgroup", func(t *testing.T) { s.shimCgroup(t, rt) })
		})
	}
	for _, h := range []string{"mine", "runc"} {
		t.Run("cri-"+h, func(t *testing.T) { s.criPod(t, h, "") })
	}
}

// syncBuffer is an io.Writer safe for the shim's copy goroutine and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTask creates a container of the busybox image running sh -c script
// under runtime rt, and its task; cleanups delete both.
func (s *stack) newTask(t *testing.T, rt, script string, out *syncBuffer, opts ...any) (client.Container, client.Task) {
	t.Helper()
	ctx := s.ctx(t)
	img, err := s.client.GetImage(ctx, stackImage)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.NewReplacer("io.containerd.", "", ".", "-").Replace(rt) + "-" + randomHex(t)
	specOpts := []oci.SpecOpts{oci.WithImageConfig(img), oci.WithProcessArgs("sh", "-c", script)}
	var rtOpts any
	for _, o := range opts {
		switch o := o.(type) {
		case oci.SpecOpts:
			specOpts = append(specOpts, o)
		case *runcoptions.Options:
			rtOpts = o
		}
	}
	c, err := s.client.NewContainer(ctx, id, client.WithImage(img), client.WithSnapshotter(s.snap),
		client.WithNewSnapshot(id, img), client.WithRuntime(rt, rtOpts), client.WithNewSpec(specOpts...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), stackNamespace), stackTimeout)
		defer cancel()
		if task, err := c.Task(ctx, nil); err == nil {
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
				t.Errorf("delete task %s: %v", id, err)
			}
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Errorf("delete container %s: %v", id, err)
		}
	})
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		t.Fatal(err)
	}
	return c, task
}

// cgroupDir is the cgroup v2 directory of container c (its spec's
// cgroupsPath, which containerd sets to /NAMESPACE/ID).
func (s *stack) cgroupDir(t *testing.T, c client.Container) string {
	t.Helper()
	spec, err := c.Spec(s.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if spec.Linux == nil || spec.Linux.CgroupsPath == "" {
		t.Fatal("the container's spec has no cgroupsPath")
	}
	return filepath.Join("/sys/fs/cgroup", spec.Linux.CgroupsPath)
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func (s *stack) lifecycle(t *testing.T, rt string) {
	ctx := s.ctx(t)
	var out syncBuffer
	c, task := s.newTask(t, rt, "echo hello from $(cat /proc/self/cgroup); exit 3", &out)
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := <-wait
	if st.ExitCode() != 3 {
		t.Errorf("exit status %d, want 3", st.ExitCode())
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	// The container runs in the cgroup its spec names.
	cg := s.cgroupDir(t, c)
	if got, want := strings.TrimSpace(out.String()), "hello from 0::"+strings.TrimPrefix(cg, "/sys/fs/cgroup"); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup of the deleted task still there: %v", err)
	}
}

func (s *stack) running(t *testing.T, rt string) {
	ctx := s.ctx(t)
	var out syncBuffer
	c, task := s.newTask(t, rt, `trap "exit 0" TERM; while true; do sleep 1; done`, &out)
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cg := s.cgroupDir(t, c)

	// exec
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"sh", "-c", "echo exec in $(cat /proc/self/cgroup); exit 5"}
	code, execOut := s.runExec(t, task, "e1", &pspec)
	if code != 5 {
		t.Errorf("exec exit status %d, want 5", code)
	}
	if got, want := strings.TrimSpace(execOut), "exec in 0::"+strings.TrimPrefix(cg, "/sys/fs/cgroup"); got != want {
		t.Errorf("exec output %q, want %q", got, want)
	}

	// pause and resume: the cgroup v2 freezer
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != client.Paused {
		t.Errorf("after Pause: status %v (%v), want paused", st.Status, err)
	}
	if v := readTrim(t, filepath.Join(cg, "cgroup.freeze")); v != "1" {
		t.Errorf("after Pause: cgroup.freeze %s, want 1", v)
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != client.Running {
		t.Errorf("after Resume: status %v (%v), want running", st.Status, err)
	}
	if v := readTrim(t, filepath.Join(cg, "cgroup.freeze")); v != "0" {
		t.Errorf("after Resume: cgroup.freeze %s, want 0", v)
	}

	// update
	const limit = 48 << 20
	if err := task.Update(ctx, client.WithResources(&specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: ptr(int64(limit))},
		Pids:   &specs.LinuxPids{Limit: ptr(int64(77))},
	})); err != nil {
		t.Fatal(err)
	}
	if v := readTrim(t, filepath.Join(cg, "memory.max")); v != strconv.Itoa(limit) {
		t.Errorf("after Update: memory.max %s, want %d", v, limit)
	}
	if v := readTrim(t, filepath.Join(cg, "pids.max")); v != "77" {
		t.Errorf("after Update: pids.max %s, want 77", v)
	}

	// Stats: cgroup v2 metrics
	m, err := task.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := v.(*v2stats.Metrics)
	if !ok {
		t.Fatalf("Metrics: %T (%s), want cgroup v2 metrics", v, m.Data.GetTypeUrl())
	}
	if st.GetPids().GetCurrent() < 1 || st.GetPids().GetLimit() != 77 || st.GetMemory().GetUsage() == 0 ||
		st.GetMemory().GetUsageLimit() != limit || st.GetCPU().GetUsageUsec() == 0 {
		t.Errorf("Metrics: pids %d (limit %d), memory %d (limit %d), cpu %d us; want pids >= 1 (limit 77), memory > 0 (limit %d), cpu > 0",
			st.GetPids().GetCurrent(), st.GetPids().GetLimit(), st.GetMemory().GetUsage(), st.GetMemory().GetUsageLimit(),
			st.GetCPU().GetUsageUsec(), limit)
	}

	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := <-wait; st.ExitCode() != 0 {
		t.Errorf("exit status after SIGTERM %d, want 0 (the trap)", st.ExitCode())
	}
}

func ptr[T any](v T) *T { return &v }

func (s *stack) oom(t *testing.T, rt string) {
	ctx := s.ctx(t)
	events, errs := s.client.EventService().Subscribe(ctx, `topic=="/tasks/oom"`, `topic=="/tasks/exit"`)
	var out syncBuffer
	c, task := s.newTask(t, rt, allocator, &out, oci.SpecOpts(oci.WithMemoryLimit(memoryLimit)))
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st := <-wait; st.ExitCode() != oomExitStatus {
		t.Errorf("exit status %d, want %d; output %q", st.ExitCode(), oomExitStatus, out.String())
	}
	// One /tasks/oom per OOM kill the cgroup counted (the shell and the
	// pipeline's processes may each be killed), every one before the exit.
	order := oomEvents(t, ctx, events, errs, c, func(order []string) bool {
		return len(order) > 0 && order[len(order)-1] == "exit:"+c.ID()
	})
	ok := len(order) > 1
	for _, o := range order[:len(order)-1] {
		ok = ok && o == "oom"
	}
	if !ok {
		t.Errorf("events %v, want oom (one or more) then the exit", order)
	}
}

// oomEvents reads the /tasks/oom and /tasks/exit events of container c from
// a subscription until done holds for what was read: "oom" for a TaskOOM,
// "exit:ID" for a TaskExit (ID the container's, or an exec's).
func oomEvents(t *testing.T, ctx context.Context, events <-chan *ctrdevents.Envelope, errs <-chan error, c client.Container, done func([]string) bool) []string {
	t.Helper()
	var order []string
	for !done(order) {
		select {
		case e := <-events:
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				t.Fatal(err)
			}
			switch ev := v.(type) {
			case *eventstypes.TaskOOM:
				if ev.ContainerID == c.ID() {
					order = append(order, "oom")
				}
			case *eventstypes.TaskExit:
				if ev.ContainerID == c.ID() {
					order = append(order, "exit:"+ev.ID)
				}
			}
		case err := <-errs:
			t.Fatalf("events: %v", err)
		case <-ctx.Done():
			t.Fatalf("events of %s: %v, then %v", c.ID(), order, ctx.Err())
		}
	}
	return order
}

// runExec runs exec process id of task with pspec, from Exec to Delete, and
// returns its exit status and output.
func (s *stack) runExec(t *testing.T, task client.Task, id string, pspec *specs.Process) (uint32, string) {
	t.Helper()
	ctx := s.ctx(t)
	var out syncBuffer
	proc, err := task.Exec(ctx, id, pspec, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
	if err != nil {
		t.Fatal(err)
	}
	ew, err := proc.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := <-ew
	if _, err := proc.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	return st.ExitCode(), out.String()
}

// execOOM: exec processes OOM-killed in a container whose init lives.
// Each exec's /tasks/exit (137) must come after a /tasks/oom that no earlier
// exit took. cgroup v2 tells of a change of memory.events at most once per
// 10 ms, so the notification of a kill can come after its victim's exit:
// mine reads the counter once more before it publishes any exit. For
// containerd's runc shim the order is logged, not asserted: its exec's exit
// came first here too, and in 2 runs of 20 on cgroup v1 (test/e2e).
func (s *stack) execOOM(t *testing.T, rt string) {
	const rounds = 3
	ctx := s.ctx(t)
	events, errs := s.client.EventService().Subscribe(ctx, `topic=="/tasks/oom"`, `topic=="/tasks/exit"`)
	var out syncBuffer
	// The init must outlive the rounds: it is not the OOM killer's choice
	// (a shell was, once, for containerd's runc shim), and it forks
	// nothing (a shell's loop, forking its sleep while an exec held the
	// memory, ended once in CI for mine).
	keepInit := func(_ context.Context, _ oci.Client, _ *containers.Container, sp *oci.Spec) error {
		sp.Process.OOMScoreAdj = ptr(-900)
		return nil
	}
	c, task := s.newTask(t, rt, "exec sleep 100000", &out,
		oci.SpecOpts(oci.WithMemoryLimit(memoryLimit)), oci.SpecOpts(keepInit))
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for round := range rounds {
		pspec := *spec.Process
		pspec.Args = []string{"sh", "-c", allocator}
		pspec.OOMScoreAdj = ptr(900)
		if code, out := s.runExec(t, task, fmt.Sprintf("oom-%d", round), &pspec); code != oomExitStatus {
			t.Fatalf("round %d: exec exit status %d, want %d; output %q", round, code, oomExitStatus, out)
		}
	}
	order := oomEvents(t, ctx, events, errs, c, func(order []string) bool {
		exits := 0
		for _, o := range order {
			if strings.HasPrefix(o, "exit:") {
				exits++
			}
		}
		return exits == rounds
	})
	ooms := 0
	for _, o := range order {
		if o == "oom" {
			ooms++
			continue
		}
		if ooms == 0 {
			if rt == testenv.RuntimeRunc {
				t.Logf("%s: %s before its /tasks/oom: %v", rt, o, order)
				return
			}
			t.Errorf("%s before its /tasks/oom: %v", o, order)
			return
		}
		ooms--
	}
	t.Logf("events: %v", order)
}

func (s *stack) shimCgroup(t *testing.T, rt string) {
	ctx := s.ctx(t)
	cg := "/mine-shim-" + randomHex(t)
	if err := os.Mkdir(filepath.Join("/sys/fs/cgroup", cg), 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before newTask's cleanups, so it runs after them: the
	// cgroup can go once the shim has exited.
	t.Cleanup(func() {
		err := poll(30*time.Second, func() bool { return syscall.Rmdir(filepath.Join("/sys/fs/cgroup", cg)) == nil })
		if err != nil {
			t.Errorf("remove %s: %v", cg, err)
		}
	})
	var out syncBuffer
	_, task := s.newTask(t, rt, `trap "exit 0" TERM; while true; do sleep 1; done`, &out,
		&runcoptions.Options{ShimCgroup: cg})
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	procs := readTrim(t, filepath.Join("/sys/fs/cgroup", cg, "cgroup.procs"))
	shims, err := testenv.ShimProcesses(s.ctrd.Address(), s.exes)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, p := range shims {
		if id, _ := p.Flag("id"); id == task.ID() {
			pid = p.Pid
		}
	}
	if pid == 0 {
		t.Fatalf("no shim process with -id %s", task.ID())
	}
	if !strings.Contains("\n"+procs+"\n", "\n"+strconv.Itoa(pid)+"\n") {
		t.Errorf("shim pid %d not in %s (cgroup.procs %q)", pid, cg, procs)
	}
}

// poll calls f every 50 ms until it returns true, or timeout passes: for
// states nothing signals (a cgroup emptied, a process gone).
func poll(timeout time.Duration, f func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !f() {
		select {
		case <-deadline.C:
			return fmt.Errorf("not done within %v", timeout)
		case <-tick.C:
		}
	}
	return nil
}
