package compat

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

const (
	runtimeMine = "io.containerd.mine.v2"
	shimBinary  = "containerd-shim-mine-v2"
	shimPackage = "github.com/mineshim/mine/cmd/containerd-shim-mine-v2"
	imageRef    = imagebuild.DefaultRef
	runcRoot    = "/run/containerd/runc"
	readyTopic  = "/mine-compat/ready"
	// pauseImage is CRI's sandbox image, which the CRI test imports; the
	// name points to no registry.
	pauseImage = "localhost/mine-compat/pause:1"

	callTimeout    = 30 * time.Second // one ctr run or client call sequence
	exitTimeout    = 20 * time.Second // a container's exit
	cleanupTimeout = 10 * time.Second // traces gone after a delete
)

// setup is what TestMain prepared for every release.
var setup struct {
	skip     string // why every test skips
	err      error  // why every test fails
	dir      string // temporary directory of the run
	shimDir  string // holds containerd-shim-mine-v2
	shimExe  string // its resolved path
	imageTar string
}

func TestMain(m *testing.M) {
	setup.skip, setup.err = prepare()
	code := m.Run()
	if setup.dir != "" {
		if mounts, err := mountsUnder(setup.dir); err != nil || len(mounts) > 0 {
			fmt.Fprintf(os.Stderr, "compat: %s kept: mounts %v (%v)\n", setup.dir, mounts, err)
		} else {
			os.RemoveAll(setup.dir)
		}
	}
	os.Exit(code)
}

func prepare() (string, error) {
	if os.Geteuid() != 0 {
		return "needs root: runs containerd and runc", nil
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "runc not found in PATH (Debian package runc)", nil
	}
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		return "no busybox for the test image (Debian package busybox-static): " + err.Error(), nil
	}
	var err error
	if setup.dir, err = os.MkdirTemp("/run", "mine-compat-"); err != nil {
		return "", err
	}
	setup.shimDir = filepath.Join(setup.dir, "bin")
	if err := os.Mkdir(setup.shimDir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(setup.shimDir, shimBinary)
	if p := os.Getenv("MINE_SHIM"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil || !executable(abs) {
			return "", fmt.Errorf("MINE_SHIM=%s is not an executable file", p)
		}
		if err := os.Symlink(abs, dst); err != nil {
			return "", err
		}
	} else {
		if _, err := exec.LookPath("go"); err != nil {
			return "MINE_SHIM is unset and there is no go in PATH to build " + shimPackage, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", dst, shimPackage).CombinedOutput(); err != nil {
			return fmt.Sprintf("cannot build %s (%v): %s", shimPackage, err, out), nil
		}
	}
	if setup.shimExe, err = filepath.EvalSymlinks(dst); err != nil {
		return "", err
	}
	setup.imageTar = filepath.Join(setup.dir, "busybox.tar")
	if _, err := imagebuild.WriteFile(setup.imageTar, imagebuild.Options{}); err != nil {
		return "", fmt.Errorf("build the busybox image: %w", err)
	}
	return "", nil
}

// env is one release's private containerd and a client of it.
type env struct {
	r           release
	ctr         string
	d           *daemon
	c           *client.Client
	ns          string
	snapshotter string
}

// start starts the release's containerd, imports the image with its ctr and
// connects the Go client. Cleanups delete what is left, stop containerd and
// check that no shim survived it.
func start(t *testing.T, r release) *env {
	t.Helper()
	if setup.skip != "" {
		t.Skip(setup.skip)
	}
	if setup.err != nil {
		t.Fatalf("setup: %v", setup.err)
	}
	bin, skip := r.binDir()
	if skip != "" {
		t.Skip(skip)
	}
	e := &env{r: r, ctr: filepath.Join(bin, "ctr"), ns: "mine-compat"}
	for _, b := range []string{"containerd", "ctr"} {
		v, err := binaryVersion(filepath.Join(bin, b))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(v, r.line+".") {
			t.Fatalf("%s/%s is version %s, want %s.x (%s)", bin, b, v, r.line, r.env)
		}
		t.Logf("%s %s", b, v)
	}
	dir, err := os.MkdirTemp(setup.dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	e.snapshotter = "overlayfs"
	if err := overlayWorks(dir); err != nil {
		t.Logf("overlay does not work here (%v), using the native snapshotter", err)
		e.snapshotter = "native"
	}
	cfg := daemonConfig{
		Dir:          dir,
		Version:      r.configVersion(),
		Snapshotter:  e.snapshotter,
		PathDirs:     []string{setup.shimDir, bin},
		SandboxImage: pauseImage,
	}
	if e.d, err = startDaemon(filepath.Join(bin, "containerd"), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.teardown(t) })
	if e.c, err = client.New(cfg.address(), client.WithTimeout(10*time.Second)); err != nil {
		t.Fatalf("connect to containerd %s: %v", r.line, err)
	}
	if out, code := e.runCtr(t, "-n", e.ns, "images", "import", "--snapshotter", e.snapshotter, setup.imageTar); code != 0 {
		t.Fatalf("ctr images import: exit %d: %s", code, out)
	}
	return e
}

// teardown deletes leftovers, stops containerd, fails t when a shim of it
// survives, and removes its directory unless something is still mounted.
func (e *env) teardown(t *testing.T) {
	if t.Failed() {
		t.Logf("containerd %s log (%s), last lines:\n%s", e.r.line, e.d.cfg.logPath(), e.d.logTail(50))
	}
	if e.c != nil {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), e.ns), callTimeout)
		defer cancel()
		if cs, err := e.c.Containers(ctx); err == nil {
			for _, c := range cs {
				if task, err := c.Task(ctx, nil); err == nil {
					task.Delete(ctx, client.WithProcessKill)
				}
				c.Delete(ctx, client.WithSnapshotCleanup)
			}
		}
		e.c.Close()
	}
	if err := e.d.stop(); err != nil {
		t.Error(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err := e.shims()
		if err != nil {
			t.Error(err)
			break
		}
		if len(procs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, p := range procs {
				syscall.Kill(p.pid, syscall.SIGKILL)
			}
			t.Errorf("shims of containerd %s still running after every container was deleted and containerd stopped (killed): %v", e.r.line, procs)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	os.Remove(filepath.Join(runcRoot, e.ns))
	mounts, err := mountsUnder(e.d.cfg.Dir)
	if err != nil {
		t.Errorf("%s kept: %v", e.d.cfg.Dir, err)
		return
	}
	if len(mounts) > 0 {
		t.Errorf("mounts left under %s after containerd stopped: %q", e.d.cfg.Dir, mounts)
		// Never remove through a mount point: unmount, deepest first.
		slices.Reverse(mounts)
		for _, mp := range mounts {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
				t.Errorf("%s kept: unmount %s: %v", e.d.cfg.Dir, mp, err)
				return
			}
		}
	}
	os.RemoveAll(e.d.cfg.Dir)
}

// runCtr runs the release's ctr against its containerd and returns stdout
// (stderr too when ctr fails) and the exit code.
func (e *env) runCtr(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctr, append([]string{"--address", e.d.cfg.address()}, args...)...)
	cmd.Env = cleanEnv(nil)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("ctr %s: no exit within %v; output: %s%s", strings.Join(args, " "), callTimeout, stdout.String(), stderr.String())
	case errors.As(err, &exitErr):
		return stdout.String() + stderr.String(), exitErr.ExitCode()
	case err != nil:
		t.Fatalf("ctr %s: %v", strings.Join(args, " "), err)
	}
	return stdout.String(), 0
}

func (e *env) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), e.ns), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newID(t *testing.T, prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// TestLifecycle runs the same lifecycle against each containerd release,
// side by side.
func TestLifecycle(t *testing.T) {
	for _, r := range releases {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, r)

			t.Run("CRI plugin loads with the mine runtime", func(t *testing.T) {
				resp, err := e.c.IntrospectionService().Plugins(e.ctx(t), `type=="io.containerd.grpc.v1"`, `id=="cri"`)
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, p := range resp.GetPlugins() {
					if p.GetType() == "io.containerd.grpc.v1" && p.GetID() == "cri" {
						found = true
						if p.GetInitErr() != nil {
							t.Errorf("CRI plugin failed to load with the config of docs/kubernetes.md: %s", p.GetInitErr().GetMessage())
						}
					}
				}
				if !found {
					t.Error("containerd has no CRI plugin (io.containerd.grpc.v1.cri)")
				}
			})

			t.Run("ctr run output", func(t *testing.T) {
				id := newID(t, "echo")
				out, code := e.runCtr(t, "-n", e.ns, "run", "--rm", "--runtime", runtimeMine, "--snapshotter", e.snapshotter,
					imageRef, id, "echo", "hello", "from", "mine")
				if out != "hello from mine\n" || code != 0 {
					t.Errorf("ctr run echo: output %q, exit %d; want %q, 0", out, code, "hello from mine\n")
				}
				e.assertNoTraces(t, id, "")
			})

			t.Run("ctr run exit code", func(t *testing.T) {
				id := newID(t, "exit3")
				out, code := e.runCtr(t, "-n", e.ns, "run", "--rm", "--runtime", runtimeMine, "--snapshotter", e.snapshotter,
					imageRef, id, "sh", "-c", "echo out; exit 3")
				if out != "out\n" || code != 3 {
					t.Errorf("ctr run sh -c 'echo out; exit 3': output %q, exit %d; want \"out\\n\", 3", out, code)
				}
				e.assertNoTraces(t, id, "")
			})

			t.Run("exec and kill", func(t *testing.T) {
				id := newID(t, "exec")
				var initOut syncBuffer
				task, cont, exitC := e.startTask(t, id, &initOut, "sleep", "1000")
				ctx := e.ctx(t)
				socket := shimSocket(e.bundle(id))
				if socket == "" {
					t.Errorf("no shim address in the bundle %s", e.bundle(id))
				}
				spec, err := cont.Spec(ctx)
				if err != nil {
					t.Fatal(err)
				}
				pspec := *spec.Process
				pspec.Args = []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}
				var out syncBuffer
				proc, err := task.Exec(ctx, "x1", &pspec, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
				if err != nil {
					t.Fatalf("exec: %v", err)
				}
				execExit, err := proc.Wait(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := proc.Start(ctx); err != nil {
					t.Fatalf("start exec: %v", err)
				}
				if code := waitExit(t, execExit, "exec"); code != 5 {
					t.Errorf("exec exit %d, want 5", code)
				}
				if st, err := proc.Delete(ctx); err != nil || st.ExitCode() != 5 {
					t.Errorf("delete exec: exit status %d (%v), want 5", st.ExitCode(), err)
				}
				if got := sortedLines(out.String()); !slices.Equal(got, []string{"exec-err", "exec-out"}) {
					t.Errorf("exec output %q, want the lines exec-out and exec-err", out.String())
				}
				if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
					t.Fatalf("kill: %v", err)
				}
				if code := waitExit(t, exitC, "container"); code != 137 {
					t.Errorf("after SIGKILL: Wait status %d, want 137", code)
				}
				if st, err := task.Delete(ctx); err != nil || st.ExitCode() != 137 {
					t.Errorf("task delete: exit status %d (%v), want 137", st.ExitCode(), err)
				}
				if err := cont.Delete(ctx, client.WithSnapshotCleanup); err != nil {
					t.Errorf("delete container: %v", err)
				}
				e.assertNoTraces(t, id, socket)
			})

			t.Run("pause, resume and metrics", func(t *testing.T) {
				for _, rt := range e.runtimes() {
					t.Run(rt, func(t *testing.T) { e.pauseResumeMetrics(t, rt) })
				}
			})

			t.Run("event order", func(t *testing.T) {
				id := newID(t, "events")
				rec := e.recordEvents(t, id)
				var out syncBuffer
				task, cont, exitC := e.startTask(t, id, &out, "sh", "-c", "echo hi; exit 3")
				if code := waitExit(t, exitC, "container"); code != 3 {
					t.Errorf("Wait status %d, want 3", code)
				}
				ctx := e.ctx(t)
				if st, err := task.Delete(ctx); err != nil || st.ExitCode() != 3 {
					t.Errorf("task delete: exit status %d (%v), want 3", st.ExitCode(), err)
				}
				if err := cont.Delete(ctx, client.WithSnapshotCleanup); err != nil {
					t.Errorf("delete container: %v", err)
				}
				if out.String() != "hi\n" {
					t.Errorf("output %q, want \"hi\\n\"", out.String())
				}
				events, err := rec.waitFor("/tasks/delete", 5*time.Second)
				if err != nil {
					t.Error(err)
				}
				for _, p := range eventProblems(events, id, 3) {
					t.Error(p)
				}
				e.assertNoTraces(t, id, "")
			})
		})
	}
}

// startTask creates a container of the image running args under the mine
// runtime, subscribes to its exit and starts it. Its output goes to out. A
// cleanup removes what the test did not.
func (e *env) startTask(t *testing.T, id string, out *syncBuffer, args ...string) (client.Task, client.Container, <-chan client.ExitStatus) {
	t.Helper()
	return e.startTaskWith(t, runtimeMine, id, out, args...)
}

// startTaskWith is startTask under runtime rt.
func (e *env) startTaskWith(t *testing.T, rt, id string, out *syncBuffer, args ...string) (client.Task, client.Container, <-chan client.ExitStatus) {
	t.Helper()
	ctx := e.ctx(t)
	image, err := e.c.GetImage(ctx, imageRef)
	if err != nil {
		t.Fatalf("get image: %v", err)
	}
	cont, err := e.c.NewContainer(ctx, id,
		client.WithImage(image),
		client.WithSnapshotter(e.snapshotter),
		client.WithNewSnapshot(id+"-snapshot", image),
		client.WithRuntime(rt, nil),
		client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(args...)),
	)
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), e.ns), callTimeout)
		defer cancel()
		if task, err := cont.Task(ctx, nil); err == nil {
			task.Delete(ctx, client.WithProcessKill)
		}
		cont.Delete(ctx, client.WithSnapshotCleanup)
	})
	task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		t.Fatalf("create task: %v", err)
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start task: %v", err)
	}
	return task, cont, exitC
}

func waitExit(t *testing.T, c <-chan client.ExitStatus, what string) uint32 {
	t.Helper()
	select {
	case st := <-c:
		code, _, err := st.Result()
		if err != nil {
			t.Fatalf("wait %s: %v", what, err)
		}
		return code
	case <-time.After(exitTimeout):
		t.Fatalf("%s did not exit within %v", what, exitTimeout)
	}
	return 0
}

// syncBuffer is a bytes.Buffer safe for the copy goroutines of cio.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func sortedLines(s string) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	slices.Sort(lines)
	return lines
}

// eventRecorder records the /tasks/* events of one container.
type eventRecorder struct {
	id      string
	mu      sync.Mutex
	events  []recorded
	err     error
	changed chan struct{}
}

type recorded struct {
	topic string
	event any
}

// recordEvents subscribes to the task events of id and returns once the
// subscription is live: a sentinel event published until it comes back.
func (e *env) recordEvents(t *testing.T, id string) *eventRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), e.ns))
	r := &eventRecorder{id: id, changed: make(chan struct{})}
	ready, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	envelopes, errs := e.c.EventService().Subscribe(ctx,
		fmt.Sprintf(`namespace==%q,topic~="^/tasks/"`, e.ns),
		fmt.Sprintf(`namespace==%q,topic==%q`, e.ns, readyTopic))
	go func() {
		defer close(done)
		var readyClosed bool
		for {
			select {
			case env := <-envelopes:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					r.set(nil, fmt.Errorf("decode %s: %w", env.Topic, err))
					return
				}
				if env.Topic == readyTopic {
					if u, ok := ev.(*apievents.ContainerUpdate); ok && u.GetID() == id && !readyClosed {
						readyClosed = true
						close(ready)
					}
					continue
				}
				if c, ok := ev.(interface{ GetContainerID() string }); ok && c.GetContainerID() == id {
					r.set(&recorded{topic: env.Topic, event: ev}, nil)
				}
			case err := <-errs:
				if ctx.Err() == nil {
					r.set(nil, fmt.Errorf("event stream ended: %w", err))
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := e.c.EventService().Publish(ctx, readyTopic, &apievents.ContainerUpdate{ID: id}); err != nil {
			t.Fatalf("publish %s: %v", readyTopic, err)
		}
		select {
		case <-ready:
			return r
		case <-done:
			t.Fatal("event subscription ended before it was live")
		case <-deadline.C:
			t.Fatal("event subscription not live after 10s")
		case <-tick.C:
		}
	}
}

func (r *eventRecorder) set(ev *recorded, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev != nil {
		r.events = append(r.events, *ev)
	}
	if err != nil {
		r.err = err
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// waitFor waits until an event with topic was recorded and returns the
// events so far.
func (r *eventRecorder) waitFor(topic string, timeout time.Duration) ([]recorded, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		events, err, changed := slices.Clone(r.events), r.err, r.changed
		r.mu.Unlock()
		if slices.ContainsFunc(events, func(e recorded) bool { return e.topic == topic }) {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		select {
		case <-changed:
		case <-deadline.C:
			return events, fmt.Errorf("no %s event for %s within %v", topic, r.id, timeout)
		}
	}
}

// eventProblems checks create, start, exit, delete in that order, one pid,
// the init process in TaskExit, and the exit status.
func eventProblems(events []recorded, id string, want uint32) []string {
	var topics []string
	for _, e := range events {
		topics = append(topics, e.topic)
	}
	if got := strings.Join(topics, " "); got != "/tasks/create /tasks/start /tasks/exit /tasks/delete" {
		return []string{fmt.Sprintf("events of %s: %q; want /tasks/create /tasks/start /tasks/exit /tasks/delete", id, got)}
	}
	var problems []string
	create := events[0].event.(*apievents.TaskCreate)
	start := events[1].event.(*apievents.TaskStart)
	exit := events[2].event.(*apievents.TaskExit)
	del := events[3].event.(*apievents.TaskDelete)
	if create.GetPid() == 0 || start.GetPid() != create.GetPid() || exit.GetPid() != create.GetPid() || del.GetPid() != create.GetPid() {
		problems = append(problems, fmt.Sprintf("pids: create %d, start %d, exit %d, delete %d",
			create.GetPid(), start.GetPid(), exit.GetPid(), del.GetPid()))
	}
	if exit.GetID() != id {
		problems = append(problems, fmt.Sprintf("TaskExit names process %q, want the init process %q", exit.GetID(), id))
	}
	if exit.GetExitStatus() != want || del.GetExitStatus() != want {
		problems = append(problems, fmt.Sprintf("exit status: TaskExit %d, TaskDelete %d; want %d", exit.GetExitStatus(), del.GetExitStatus(), want))
	}
	return problems
}

// shimProc is a shim process of this release's containerd.
type shimProc struct {
	pid  int
	argv []string
}

func (p shimProc) String() string { return fmt.Sprintf("pid %d: %s", p.pid, strings.Join(p.argv, " ")) }

// flag returns the value of -name in argv.
func (p shimProc) flag(name string) (string, bool) {
	for i, a := range p.argv {
		if (a == "-"+name || a == "--"+name) && i+1 < len(p.argv) {
			return p.argv[i+1], true
		}
		for _, d := range []string{"-", "--"} {
			if v, ok := strings.CutPrefix(a, d+name+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// shims lists the shim processes whose -address is this containerd's.
func (e *env) shims() ([]shimProc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var procs []shimProc
	for _, ent := range entries {
		if ent.Name()[0] < '0' || ent.Name()[0] > '9' {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		p := shimProc{argv: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")}
		fmt.Sscan(ent.Name(), &p.pid)
		if exe, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe")); err != nil || exe != setup.shimExe {
			continue
		}
		if a, ok := p.flag("address"); !ok || (a != e.d.cfg.address() && a != "unix://"+e.d.cfg.address()) {
			continue
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// bundle is the directory containerd keeps the bundle of task id in.
func (e *env) bundle(id string) string {
	return filepath.Join(e.d.cfg.state(), "io.containerd.runtime.v2.task", e.ns, id)
}

// traces lists what the host still holds of container id; socket is its
// shim socket, "" when not known.
func (e *env) traces(id, socket string) ([]string, error) {
	var left []string
	procs, err := e.shims()
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		if v, _ := p.flag("id"); v == id {
			left = append(left, "shim "+p.String())
		}
	}
	bundle := e.bundle(id)
	mounts, err := mountsUnder(bundle)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		left = append(left, "mount "+m)
	}
	for _, p := range []string{bundle, filepath.Join(runcRoot, e.ns, id), socket} {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	return left, nil
}

// assertNoTraces waits up to cleanupTimeout for every trace of container id
// to go: its shim, socket, bundle, runc state and mounts.
func (e *env) assertNoTraces(t *testing.T, id, socket string) {
	t.Helper()
	deadline := time.Now().Add(cleanupTimeout)
	for {
		left, err := e.traces(id, socket)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%v after deleting %s, left: %q", cleanupTimeout, id, left)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountsUnder lists the mount points at or under dir.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := strings.ReplaceAll(f[4], `\040`, " ")
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	return mounts, sc.Err()
}

// shimSocket returns the shim socket a bundle records (bootstrap.json from
// containerd 2.3 on, the address file before).
func shimSocket(bundle string) string {
	var addr string
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var res struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &res) == nil {
			addr = res.Address
		}
	} else if data, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
		addr = strings.TrimSpace(string(data))
	}
	return strings.TrimPrefix(addr, "unix://")
}
