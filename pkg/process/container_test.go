package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/stdio"
)

var testReaper = NewReaper()

func TestMain(m *testing.M) {
	// The fake runtime's "container" processes are orphaned to us, as
	// containers are to the shim.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go testReaper.Run(ctx)
	runc.Monitor = testReaper
	code := m.Run()
	if left := leftSleeps(2 * time.Second); len(left) > 0 && code == 0 {
		// The fake runtime's processes outlive a test binary that
		// leaves them: each test's cleanup must end them.
		fmt.Fprintf(os.Stderr, "FAIL: fake runtime processes left running: %v\n", left)
		code = 1
	}
	cancel()
	os.Exit(code)
}

// leftSleeps returns the pids of this binary's children running sleep (the
// fake runtime's processes, orphaned to this subreaper) that are still
// alive after grace.
func leftSleeps(grace time.Duration) []int {
	deadline := time.Now().Add(grace)
	for {
		var left []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if zombie, ok := sleepChild(pid); ok && !zombie {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// recorder collects the events a container emits.
type recorder struct {
	mu     sync.Mutex
	events []Event
	ch     chan Event
}

func newRecorder() *recorder { return &recorder{ch: make(chan Event, 64)} }

func (r *recorder) emit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	r.ch <- e
}

// next waits (bounded) for the next event.
func (r *recorder) next(t *testing.T) Event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return Event{}
}

func (r *recorder) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		s := e.Kind.String()
		if e.ExecID != "" {
			s += ":" + e.ExecID
		}
		out = append(out, s)
	}
	return out
}

type fakeEnv struct {
	bundle string
	argv   string
	rt     Runtime
}

// newFake prepares a bundle and a runtime that is the fake script.
func newFake(t *testing.T) fakeEnv {
	t.Helper()
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"linux":{"namespaces":[{"type":"pid"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("testdata/fake-runtime.sh")
	if err != nil {
		t.Fatal(err)
	}
	argv := filepath.Join(dir, "argv")
	t.Setenv("FAKE_RUNTIME_LOG", argv)
	t.Setenv("FAKE_RUNTIME_FAIL", "")
	t.Setenv("FAKE_RUNTIME_EXIT_ON_START", "")
	t.Setenv("FAKE_RUNTIME_EXEC_BLOCK", "")
	t.Setenv("FAKE_RUNTIME_EXEC_HOLD", "")
	t.Setenv("FAKE_RUNTIME_START_HOLD", "")
	t.Setenv("FAKE_RUNTIME_RESTORE_HOLD", "")
	t.Setenv("FAKE_RUNTIME_CREATE_HOLD", "")
	t.Setenv("FAKE_RUNTIME_DELETE_KEEPS", "")
	t.Setenv("FAKE_RUNTIME_DELETE_HOLD", "")
	pids := filepath.Join(dir, "pids")
	t.Setenv("FAKE_RUNTIME_PIDS", pids)
	t.Cleanup(func() {
		// The bundle goes first, while its processes still run: the
		// exits of those killed then find no bundle to record them in,
		// rather than one that the test's temporary directory's removal
		// is emptying.
		if err := os.RemoveAll(bundle); err != nil {
			t.Errorf("remove the bundle: %v", err)
		}
		killFakeProcesses(t, pids)
	})
	return fakeEnv{bundle: bundle, argv: argv, rt: Runtime{Binary: script, Root: filepath.Join(dir, "root")}}
}

// killFakeProcesses ends the processes the fake runtime started and left
// running: those of execs (its delete kills the init alone), of a delete
// told to keep them, and of a test that ends with its container running.
// Orphaned, they are this test binary's children (it is a subreaper).
func killFakeProcesses(t *testing.T, list string) {
	data, err := os.ReadFile(list)
	if err != nil {
		return
	}
	for _, field := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(field); err == nil {
			killSleepChild(t, pid)
		}
	}
}

// killSleepChild kills pid if it is a child of this test binary running
// sleep. The pid is held by a pidfd before it is checked, and signalled
// through it: a pid whose process has exited, been reaped and whose number
// went to another process is never signalled.
func killSleepChild(t *testing.T, pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	if _, ok := sleepChild(pid); ok {
		if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			t.Logf("kill %d: %v", pid, err)
		}
	}
}

// sleepChild reports whether pid is a child of this test binary running
// sleep (a fake runtime process, orphaned to this subreaper), and whether
// it has exited and waits to be reaped.
func sleepChild(pid int) (zombie, ok bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || !bytes.Contains(stat, []byte("(sleep)")) {
		return false, false
	}
	// pid (comm) state ppid ...
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
		return false, false
	}
	return f[0] == "Z", true
}

// calls returns the argv of every runtime call so far.
func (f fakeEnv) calls(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(f.argv)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// startedFake is a container of the fake runtime, created and started,
// with its recorder and a context for the calls.
func startedFake(t *testing.T) (fakeEnv, *recorder, *Container, context.Context) {
	t.Helper()
	f := newFake(t)
	rec := newRecorder()
	c := f.create(t, rec)
	ctx := context.Background()
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	return f, rec, c, ctx
}

func (f fakeEnv) create(t *testing.T, rec *recorder) *Container {
	t.Helper()
	c, err := Create(context.Background(), Config{
		ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: rec.emit,
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return c
}

func TestLifecycle(t *testing.T) {
	f := newFake(t)
	rec := newRecorder()
	c := f.create(t, rec)
	if e := rec.next(t); e.Kind != EventCreate || e.Pid != c.Pid() || e.Pid <= 0 {
		t.Fatalf("first event %+v, want create with pid %d", e, c.Pid())
	}
	ctx := context.Background()
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatalf("start: %v", err)
	}
	if st, _ := c.State(""); st.Status != Running {
		t.Fatalf("state after start: %s", st.Status)
	}
	killWait(t, c, "")
	saved, err := ReadExit(f.bundle)
	if err != nil || saved.Status != 137 {
		t.Fatalf("saved exit %+v, %v", saved, err)
	}
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if got, want := strings.Join(rec.kinds(), ","), "create,start,exit,delete"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	calls := f.calls(t)
	wantPrefixes := []string{"--root", "--root", "--root", "--root"}
	if len(calls) != len(wantPrefixes) {
		t.Fatalf("runtime calls %q", calls)
	}
	for i, want := range []string{"create --bundle " + f.bundle + " --pid-file", "start c1", "kill c1 9", "delete --force c1"} {
		if !strings.Contains(calls[i], want) {
			t.Errorf("call %d: %q does not contain %q", i, calls[i], want)
		}
		if !strings.Contains(calls[i], "--log "+filepath.Join(f.bundle, "log.json")+" --log-format json") {
			t.Errorf("call %d: %q does not log to the bundle's log.json", i, calls[i])
		}
	}
	if _, err := os.Stat(f.rt.StateDir("c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime state left: %v", err)
	}
}

func TestIllegalTransitions(t *testing.T) {
	_, _, c, ctx := startedFake(t)
	if _, err := c.Start(ctx, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("second start: %v, want failed precondition", err)
	}
	if _, err := c.Delete(ctx, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("delete of running: %v, want failed precondition", err)
	}
	if err := c.Kill(ctx, "", 9, false); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(ctx, "", 9, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("kill of stopped: %v, want not found", err)
	}
	// Not an empty list: containerd would take the shim for a leaked one.
	if _, err := c.Pids(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("pids of stopped: %v, want failed precondition", err)
	}
	if _, err := c.Start(ctx, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("start of stopped: %v, want failed precondition", err)
	}
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"true"}}}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("exec into stopped: %v, want failed precondition", err)
	}
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("second delete: %v, want failed precondition", err)
	}
}

func TestTransitionTable(t *testing.T) {
	for _, s := range []Status{Created, Running, Paused, Stopped, Deleted} {
		for _, o := range []op{opStart, opKill, opDelete, opPause, opResume, opExec, opCloseIO} {
			err := check(s, o)
			if allowed[s][o] {
				if err != nil {
					t.Errorf("%s of %s: %v", o, s, err)
				}
				continue
			}
			if !errors.Is(err, errdefs.ErrFailedPrecondition) && !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("%s of %s: %v, want a classified error", o, s, err)
			}
			if !strings.Contains(err.Error(), s.String()) {
				t.Errorf("%s of %s: error %q does not name the state", o, s, err)
			}
		}
	}
}

func TestCreateFailureKeepsRuntimeError(t *testing.T) {
	f := newFake(t)
	t.Setenv("FAKE_RUNTIME_FAIL", "create")
	rec := newRecorder()
	_, err := Create(context.Background(), Config{
		ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: rec.emit,
	})
	if err == nil {
		t.Fatal("create succeeded")
	}
	if !strings.Contains(err.Error(), "fake create failed on purpose") {
		t.Fatalf("error %q lacks the runtime's log text", err)
	}
	if !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("error %q lacks the runtime's exit status", err)
	}
	if k := rec.kinds(); len(k) != 0 {
		t.Fatalf("events after a failed create: %v", k)
	}
}

// A config.json that is JSON but not a runtime spec reaches the runtime
// (the shim decodes only the fields it needs), and the runtime's refusal is
// then classified as bad input; a valid spec the runtime refuses is not.
func TestCreateClassifiesSpecTheRuntimeRefused(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		invalid      bool
	}{
		{"args not a list", `{"process":{"args":"sh"},"linux":{"namespaces":[{"type":"pid"}]}}`, true},
		{"valid spec", `{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"}]}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			t.Setenv("FAKE_RUNTIME_FAIL", "create")
			if err := os.WriteFile(filepath.Join(f.bundle, "config.json"), []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Create(context.Background(), Config{
				ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
				Reaper: testReaper, Emit: func(Event) {},
			})
			if err == nil {
				t.Fatal("create succeeded")
			}
			if got := errors.Is(err, errdefs.ErrInvalidArgument); got != tc.invalid {
				t.Fatalf("create: %v; invalid argument %v, want %v", err, got, tc.invalid)
			}
			if !strings.Contains(err.Error(), "fake create failed on purpose") {
				t.Fatalf("error %q lacks the runtime's log text", err)
			}
		})
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	f := newFake(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
	}{
		{"empty id", Config{ID: "", Bundle: f.bundle}, errdefs.ErrInvalidArgument},
		{"id with slash", Config{ID: "a/b", Bundle: f.bundle}, errdefs.ErrInvalidArgument},
		{"id with dots", Config{ID: "..", Bundle: f.bundle}, errdefs.ErrInvalidArgument},
		{"relative bundle", Config{ID: "c", Bundle: "bundle"}, errdefs.ErrInvalidArgument},
		{"bundle without config", Config{ID: "c", Bundle: t.TempDir()}, errdefs.ErrInvalidArgument},
		{"missing runtime", Config{ID: "c", Bundle: f.bundle, Runtime: Runtime{Binary: "/nonexistent/runc"}}, errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Reaper, tc.cfg.Emit = testReaper, func(Event) {}
			if _, err := Create(context.Background(), tc.cfg); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// An exit that happens while Start is in flight is published after the
// start event, never before it.
func TestExitDuringStartComesAfterStart(t *testing.T) {
	f := newFake(t)
	rec := newRecorder()
	c := f.create(t, rec)
	t.Setenv("FAKE_RUNTIME_EXIT_ON_START", "1")
	if _, err := c.Start(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(rec.kinds(), ","), "create,start,exit"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

// An exit that happens while Resume is in flight (a process whose sleep
// ended while it was frozen exits as soon as it is thawed) is published
// after the resumed event, never before it.
func TestExitDuringResumeComesAfterResumed(t *testing.T) {
	_, rec, c, ctx := startedFake(t)
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_RUNTIME_EXIT_ON_RESUME", "1")
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(rec.kinds(), ","), "create,start,paused,resumed,exit"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

// A runtime whose pause or resume never returns holds the container for
// freezeBound at most, whatever the caller's context: the call fails, the
// container keeps its state, and an exit that came during a resume is
// published once the resume has ended (the sequencer's rule 4).
func TestHungFreezeIsBounded(t *testing.T) {
	defer func(d time.Duration) { freezeBound = d }(freezeBound)
	freezeBound = 500 * time.Millisecond
	timed := func(what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			return err
		case <-time.After(freezeBound + 5*time.Second):
			t.Fatalf("%s did not return within %s of its bound", what, 5*time.Second)
			return nil
		}
	}

	_, rec, c, ctx := startedFake(t)
	newHold(t, "FAKE_RUNTIME_PAUSE_HOLD") // never released
	if err := timed("pause", func() error { return c.Pause(ctx) }); err == nil {
		t.Fatal("a pause whose runtime never returned succeeded")
	}
	if st, _ := c.State(""); st.Status != Running {
		t.Fatalf("status %s after a failed pause, want running", st.Status)
	}

	t.Setenv("FAKE_RUNTIME_PAUSE_HOLD", "")
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	newHold(t, "FAKE_RUNTIME_RESUME_HOLD")
	t.Setenv("FAKE_RUNTIME_EXIT_ON_RESUME", "1") // the init dies during the resume
	if err := timed("resume", func() error { return c.Resume(ctx) }); err == nil {
		t.Fatal("a resume whose runtime never returned succeeded")
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatalf("the exit that came during the resume: %v", err)
	}
	if got, want := strings.Join(rec.kinds(), ","), "create,start,paused,exit"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

// The init's exit is published after the exit of every exec process, and an
// exec cannot start once the init has exited.
func TestInitExitAfterExecExits(t *testing.T) {
	_, rec, c, ctx := startedFake(t)
	for _, id := range []string{"e1", "e2"} {
		if err := c.AddExec(ctx, ExecConfig{ID: id, Spec: &specs.Process{Args: []string{"sleep", "1000"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Start(ctx, id); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"true"}}}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate exec: %v, want already exists", err)
	}
	if err := c.Kill(ctx, "nope", 9, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("kill of unknown exec: %v, want not found", err)
	}
	if err := c.AddExec(ctx, ExecConfig{ID: "late", Spec: &specs.Process{Args: []string{"true"}}}); err != nil {
		t.Fatal(err)
	}
	// The init dies; the shim kills the execs, whose exits go out first.
	if err := c.Kill(ctx, "", 9, false); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	kinds := rec.kinds()
	if last := kinds[len(kinds)-1]; last != "exit" {
		t.Fatalf("events %v: the init's exit is not last", kinds)
	}
	for _, id := range []string{"e1", "e2"} {
		found := false
		for _, k := range kinds {
			found = found || k == "exit:"+id
		}
		if !found {
			t.Fatalf("events %v: no exit of %s", kinds, id)
		}
	}
	if _, err := c.Start(ctx, "late"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("exec start after init exit: %v, want failed precondition", err)
	}
}

func TestReaperMarkRejectsStaleExit(t *testing.T) {
	r := NewReaper()
	r.deliver(Exit{Pid: 4242, Status: 1})
	m := r.Mark()
	ch := r.Claim(4242, m)
	select {
	case e := <-ch:
		t.Fatalf("stale exit delivered: %+v", e)
	default:
	}
	r.deliver(Exit{Pid: 4242, Status: 2})
	if e := <-ch; e.Status != 2 {
		t.Fatalf("got %+v, want status 2", e)
	}
	// An exit reaped after the mark but before the claim is kept.
	m = r.Mark()
	r.deliver(Exit{Pid: 4243, Status: 3})
	if e := <-r.Claim(4243, m); e.Status != 3 {
		t.Fatalf("got %+v, want status 3", e)
	}
}

// Checkpoint plumbing with the fake runtime; the real CRIU path is covered
// by the end-to-end tests where the kernel lets CRIU dump.
func TestCheckpointAndRestore(t *testing.T) {
	f := newFake(t)
	rec := newRecorder()
	c := f.create(t, rec)
	ctx := context.Background()
	if err := c.Checkpoint(ctx, CheckpointConfig{ImagePath: "/img"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("checkpoint of a created container: %v, want failed precondition", err)
	}
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Checkpoint(ctx, CheckpointConfig{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("checkpoint without image: %v, want invalid argument", err)
	}
	img := t.TempDir()
	if err := c.Checkpoint(ctx, CheckpointConfig{ImagePath: img, WorkPath: "/work", OpenTCP: true}); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	calls := f.calls(t)
	last := calls[len(calls)-1]
	for _, want := range []string{"checkpoint", "--image-path " + img, "--work-path /work", "--tcp-established", "--leave-running", "c1"} {
		if !strings.Contains(last, want) {
			t.Errorf("checkpoint call %q lacks %q", last, want)
		}
	}
	t.Setenv("FAKE_RUNTIME_FAIL", "checkpoint")
	if err := c.Checkpoint(ctx, CheckpointConfig{ImagePath: img}); err == nil || !strings.Contains(err.Error(), "fake checkpoint failed on purpose") {
		t.Fatalf("failed checkpoint: %v", err)
	}
	t.Setenv("FAKE_RUNTIME_FAIL", "")
	if st, _ := c.State(""); st.Status != Running {
		t.Fatalf("state after failed checkpoint: %s", st.Status)
	}
	c.Kill(ctx, "", 9, false)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c.Wait(wctx, "")
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}

	// Restore into a new container: created without a process, restored
	// and running at Start.
	rec2 := newRecorder()
	r, err := Create(ctx, Config{
		ID: "c2", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: rec2.emit, Checkpoint: img,
	})
	if err != nil {
		t.Fatalf("create from checkpoint: %v", err)
	}
	if r.Pid() != 0 {
		t.Fatalf("restored container has pid %d before start", r.Pid())
	}
	pid, err := r.Start(ctx, "")
	if err != nil || pid <= 0 {
		t.Fatalf("restore: %d %v", pid, err)
	}
	calls = f.calls(t)
	if last := calls[len(calls)-1]; !strings.Contains(last, "restore") || !strings.Contains(last, "--image-path "+img) || !strings.Contains(last, "--detach") {
		t.Fatalf("restore call %q", last)
	}
	r.Kill(ctx, "", 9, false)
	if _, err := r.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(rec.kinds(), ","), "create,start,checkpointed,exit,delete"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if got, want := strings.Join(rec2.kinds(), ","), "create,start,exit"; got != want {
		t.Fatalf("restored events %s, want %s", got, want)
	}
	r.Delete(ctx, "")
}

// A create of an ID the runtime already has state for must not touch that
// other container (the cleanup of a failed create deletes by ID).
func TestCreateRefusesForeignRuntimeState(t *testing.T) {
	f := newFake(t)
	other := f.rt.StateDir("c1")
	if err := os.MkdirAll(other, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Create(context.Background(), Config{
		ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: func(Event) {},
	})
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("got %v, want already exists", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("the other container's state is gone: %v", err)
	}
	if _, err := os.Stat(f.argv); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the runtime was called: %v", f.calls(t))
	}
}

func TestValidateID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"c1", true}, {"a.b-c_d", true}, {"0", true}, {strings.Repeat("x", 76), true},
		{"", false}, {".", false}, {"..", false}, {"-x", false}, {"_x", false}, {"a/b", false},
		{"a b", false}, {"a\x00", false}, {strings.Repeat("x", 77), false}, {"é", false},
	} {
		err := ValidateID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateID(%q): unclassified %v", tc.id, err)
		}
	}
}

// A container without a PID namespace of its own: the init's exit kills
// every other process of the container (runc kill --all) before the exit is
// published.
func TestSharedPIDInitExitKillsAll(t *testing.T) {
	f := newFake(t)
	if err := os.WriteFile(filepath.Join(f.bundle, "config.json"), []byte(`{"linux":{"namespaces":[{"type":"network"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	c := f.create(t, rec)
	ctx := context.Background()
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(ctx, "", 9, false); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	calls := f.calls(t)
	if !strings.Contains(calls[len(calls)-1], "kill --all c1 9") && !strings.Contains(strings.Join(calls, "\n"), "kill --all c1 9") {
		t.Fatalf("no kill --all after the init's exit: %q", calls)
	}
	// Kill with all of a stopped init still reaches the runtime.
	n := len(f.calls(t))
	_ = c.Kill(ctx, "", 9, true)
	if got := f.calls(t); len(got) <= n || !strings.Contains(got[n], "kill --all c1 9") {
		t.Fatalf("kill --all of a stopped init did not reach the runtime: %q", got[n:])
	}
	if err := c.Kill(ctx, "", 9, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("kill of a stopped init: %v, want not found", err)
	}
}

// plantPid starts a process that gets pid, through ns_last_pid; it skips
// the test when another process took the pid first.
func plantPid(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for try := 0; try < 20; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose a pid: %v", err)
		}
		cmd := exec.Command("sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			return cmd
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Skipf("pid %d kept being taken by other processes", pid)
	return nil
}

// A kill of an exec whose exit has been reaped never reaches the process
// that got its pid afterwards: it reports not found.
func TestExecKillNeverReachesRecycledPid(t *testing.T) {
	_, _, c, ctx := startedFake(t)
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"sleep", "1000"}}}); err != nil {
		t.Fatal(err)
	}
	pid, err := c.Start(ctx, "e1")
	if err != nil {
		t.Fatal(err)
	}
	// The exec dies and is reaped by the shim's reaper.
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("exec not reaped")
		}
		time.Sleep(time.Millisecond)
	}
	planted := plantPid(t, pid)
	if err := c.Kill(ctx, "e1", int(unix.SIGKILL), false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("kill of a reaped exec: %v, want not found", err)
	}
	if err := planted.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process that took pid %d was signalled: %v", pid, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if e, err := c.Wait(wctx, "e1"); err != nil || e.Status != 137 {
		t.Fatalf("exec wait: %+v, %v", e, err)
	}
}

// Delete gives up waiting for the exit of an init it killed; the exit that
// comes later neither panics nor publishes anything after the delete.
func TestDeleteTimeoutThenLateExit(t *testing.T) {
	f := newFake(t)
	t.Setenv("FAKE_RUNTIME_DELETE_KEEPS", "1")
	old := deleteExitBound
	deleteExitBound = 200 * time.Millisecond
	defer func() { deleteExitBound = old }()
	rec := newRecorder()
	c := f.create(t, rec)
	pid := c.Pid()
	if _, err := c.Delete(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the late exit goes through the pipeline
	if got, want := strings.Join(rec.kinds(), ","), "create,delete"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	wctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if e, err := c.Wait(wctx, ""); err != nil || e.Status != 137 {
		t.Fatalf("wait after delete: %+v, %v", e, err)
	}
}

// An Exec request while the init's exit is held behind a starting exec is
// accepted (State still says running); its Start fails, classified; the
// starting exec is killed once it runs, and everything is published.
func TestExecWhileInitExitPending(t *testing.T) {
	f := newFake(t)
	block := filepath.Join(t.TempDir(), "block")
	if err := unix.Mkfifo(block, 0o600); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	c := f.create(t, rec)
	ctx := context.Background()
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_RUNTIME_EXEC_BLOCK", block)
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"sleep", "1000"}}}); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { _, err := c.Start(ctx, "e1"); started <- err }()
	// Wait until runc exec blocks, then kill the init.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.Join(f.calls(t), "\n"), " exec ") {
		if time.Now().After(deadline) {
			t.Fatal("exec never called")
		}
		time.Sleep(5 * time.Millisecond)
	}
	initPid := c.Pid()
	if err := unix.Kill(initPid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", initPid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("init not reaped")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the exit reaches the sequencer
	if st, _ := c.State(""); st.Status != Running {
		t.Fatalf("state with the init's exit held: %s", st.Status)
	}
	if err := c.AddExec(ctx, ExecConfig{ID: "e2", Spec: &specs.Process{Args: []string{"true"}}}); err != nil {
		t.Fatalf("exec while the init's exit is held: %v", err)
	}
	if _, err := c.Start(ctx, "e2"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("start of e2: %v, want failed precondition", err)
	}
	// Unblock runc exec: e1 starts, is killed, and its exit goes first.
	w, err := os.OpenFile(block, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("go\n"))
	w.Close()
	if err := <-started; err != nil {
		t.Fatalf("start of e1: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	kinds := rec.kinds()
	if got := strings.Join(kinds[len(kinds)-2:], ","); got != "exit:e1,exit" {
		t.Fatalf("events %v", kinds)
	}
	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	if _, err := c.Delete(dctx, ""); err != nil {
		t.Fatal(err)
	}
}

// Execs left undeleted release their I/O when the container is deleted.
func TestUndeletedExecsReleasedWithContainer(t *testing.T) {
	_, _, c, ctx := startedFake(t)
	logs := t.TempDir()
	// What the process keeps once made (pkg/stdio's idle poller) is made
	// by an exec with output, deleted before the count.
	out := "file://" + filepath.Join(logs, "first")
	if err := c.AddExec(ctx, ExecConfig{ID: "first", Spec: &specs.Process{Args: []string{"sleep", "1000"}}, Stdio: stdio.Config{Stdout: out}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	killWait(t, c, "first")
	if _, err := c.Delete(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	before := countFDs(t)
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("e%d", i)
		out := "file://" + filepath.Join(logs, id)
		if err := c.AddExec(ctx, ExecConfig{ID: id, Spec: &specs.Process{Args: []string{"sleep", "1000"}}, Stdio: stdio.Config{Stdout: out, Stderr: out}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if during := countFDs(t); during <= before {
		t.Fatalf("fds %d with 5 execs, %d before: the test sees nothing", during, before)
	}
	if err := c.Kill(ctx, "", 9, false); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := c.Wait(wctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if after := countFDs(t); after > before {
		t.Fatalf("fds %d after delete, %d before", after, before)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// The runtime adapter classifies a failed call from the runtime's state:
// a kill of a container that no longer runs is not found, a pause of it a
// failed precondition, a call on a container the runtime does not know not
// found.
func TestRuntimeErrorsClassified(t *testing.T) {
	f := newFake(t)
	rec := newRecorder()
	c := f.create(t, rec)
	ctx := context.Background()
	pid := c.Pid()
	// The process dies behind the runtime's back, so that a kill fails.
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for pidAliveUnreaped(pid) {
		time.Sleep(time.Millisecond)
	}
	if err := c.rt.kill(ctx, 9, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("kill of a stopped container: %v, want not found", err)
	}
	t.Setenv("FAKE_RUNTIME_FAIL", "pause")
	if err := c.rt.pause(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("pause of a stopped container: %v, want failed precondition", err)
	}
	if err := os.RemoveAll(f.rt.StateDir("c1")); err != nil {
		t.Fatal(err)
	}
	if err := c.rt.resume(ctx); err != nil {
		t.Logf("resume: %v", err)
	}
	t.Setenv("FAKE_RUNTIME_FAIL", "resume")
	if err := c.rt.resume(ctx); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("resume of a container the runtime lost: %v, want not found", err)
	}
	if err := c.rt.resume(ctx); !strings.Contains(err.Error(), "fake resume failed on purpose") {
		t.Fatalf("the runtime's own words are lost: %v", err)
	}
}

// pidAliveUnreaped reports whether pid exists and is not a zombie.
func pidAliveUnreaped(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i > 0 && !strings.HasPrefix(strings.TrimSpace(string(data[i+1:])), "Z")
}

// A caller that goes away while the runtime starts its exec (the call's
// context canceled once the process runs, before runc exec has returned),
// as a killed attached client does, leaves no untracked process: the start
// completes, and the exec can be signalled and waited for.
func TestExecStartOutlivesCanceledCaller(t *testing.T) {
	f, _, c, ctx := startedFake(t)
	hold := newHold(t, "FAKE_RUNTIME_EXEC_HOLD")
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"sleep", "1000"}}}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	started := make(chan error, 1)
	go func() { _, err := c.Start(cctx, "e1"); started <- err }()
	waitWritten(t, filepath.Join(f.rt.Root, "c1", "execs"), "the exec's process")
	cancel()
	releaseHold(hold, 10*time.Second)
	select {
	case err := <-started:
		t.Logf("start returned %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("start did not return")
	}
	st, err := c.State("e1")
	if err != nil || st.Status != Running || st.Pid <= 0 {
		t.Fatalf("exec after its caller went away: %+v, %v: want running with its pid", st, err)
	}
	killWait(t, c, "e1")
}

// killWait kills the process execID of c with SIGKILL and requires its
// exit, status 137, within 10 s.
func killWait(t *testing.T, c *Container, execID string) {
	t.Helper()
	ctx := context.Background()
	if err := c.Kill(ctx, execID, int(unix.SIGKILL), false); err != nil {
		t.Fatalf("kill %q: %v", execID, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if exit, err := c.Wait(wctx, execID); err != nil || exit.Status != 137 {
		t.Fatalf("wait %q: %+v, %v: want status 137", execID, exit, err)
	}
}

// waitWritten waits up to 10 s for the fake runtime to record the pid of
// what in path, and returns the file's content, trimmed.
func waitWritten(t *testing.T, path, what string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, _ := os.ReadFile(path); len(bytes.TrimSpace(data)) > 0 {
			return string(bytes.TrimSpace(data))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runtime never started %s (%s)", what, path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// releaseHold lets a fake runtime blocked on the FIFO hold go on, once it
// has opened it, waiting for that at most bound: a runtime on its way may
// be scheduled late on a loaded machine, one killed meanwhile never comes.
func releaseHold(hold string, bound time.Duration) {
	time.Sleep(100 * time.Millisecond) // a runtime killed for a cancellation is gone by now
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		if w, err := os.OpenFile(hold, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			w.Close() // its reader, the runtime, returns
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The init's start outlives its caller too: the caller going away while
// runc start runs leaves the container running, not "created".
func TestInitStartOutlivesCanceledCaller(t *testing.T) {
	f := newFake(t)
	c := f.create(t, newRecorder())
	startCanceledWhileHeld(t, f, c, "FAKE_RUNTIME_START_HOLD", " start ")
}

// createFromCheckpoint creates c1 from an (empty) checkpoint: its Start is a
// restore.
func createFromCheckpoint(t *testing.T, f fakeEnv) *Container {
	t.Helper()
	c, err := Create(context.Background(), Config{
		ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: newRecorder().emit, Checkpoint: t.TempDir(),
	})
	if err != nil {
		t.Fatalf("create from checkpoint: %v", err)
	}
	return c
}

// A container created from a checkpoint has no process before its restore:
// it takes no exec until then (a created container from a bundle does).
func TestNoExecBeforeRestore(t *testing.T) {
	f := newFake(t)
	c := createFromCheckpoint(t, f)
	err := c.AddExec(context.Background(), ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"true"}}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("exec into a container created from a checkpoint, before its restore: %v, want failed precondition", err)
	}
}

// So does a restore: its process runs before runc restore returns.
func TestRestoreOutlivesCanceledCaller(t *testing.T) {
	f := newFake(t)
	c := createFromCheckpoint(t, f)
	startCanceledWhileHeld(t, f, c, "FAKE_RUNTIME_RESTORE_HOLD", " restore ")
	killWait(t, c, "")
}

// A Delete of a container whose restore still runs ends the restore rather
// than wait for it: the restore holds the init's operation lock until the
// runtime returns, which a stuck CRIU makes up to its ten-minute bound.
// What the runtime had restored is removed by the Delete.
func TestDeleteEndsHeldRestore(t *testing.T) {
	f := newFake(t)
	c := createFromCheckpoint(t, f)
	hold := newHold(t, "FAKE_RUNTIME_RESTORE_HOLD")
	t.Cleanup(func() { releaseHold(hold, 2*time.Second) })
	started := make(chan error, 1)
	go func() { _, err := c.Start(context.Background(), ""); started <- err }()
	pid, err := strconv.Atoi(waitWritten(t, filepath.Join(f.rt.Root, "c1", "pid"), "the restored process"))
	if err != nil {
		t.Fatal(err)
	}
	deleted := make(chan error, 1)
	go func() { _, err := c.Delete(context.Background(), ""); deleted <- err }()
	select {
	case err := <-deleted:
		if err != nil {
			t.Fatalf("delete during the restore: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("delete waited for the restore")
	}
	select {
	case err := <-started:
		if err == nil {
			t.Error("the restore ended by the delete succeeded")
		}
		t.Logf("start: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("start did not return")
	}
	for deadline := time.Now().Add(5 * time.Second); pidAliveUnreaped(pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the restored process %d still runs after the delete", pid)
		}
	}
}

// A Delete that comes after Start took the init's operation lock but before
// Start recorded how to end its runtime call still ends that call: the
// call's context is cancelled the moment it is made.
func TestDeleteBeforeStartRecordsItsCancel(t *testing.T) {
	c := &Container{id: "c1", init: newProc("", nil, stdio.Config{})}
	p := c.init
	p.opMu.Lock() // Start holds the lock, and has not reached beginStart
	locked := make(chan struct{})
	go func() {
		c.lockForDelete(p)
		close(locked)
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		waiting := p.doomed
		c.mu.Unlock()
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delete did not begin to wait for the operation lock")
		}
	}
	sctx, end := c.beginStart(context.Background(), p, startBound)
	if sctx.Err() == nil {
		t.Error("a start begun while a delete waited was not cancelled")
	}
	end()
	select {
	case <-locked:
		t.Fatal("the delete took the lock while the start held it")
	default:
	}
	p.opMu.Unlock()
	select {
	case <-locked:
	case <-time.After(5 * time.Second):
		t.Fatal("the delete did not take the lock once the start let it go")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.doomed != 0 || p.abort != nil {
		t.Errorf("after the delete: doomed %d, abort set %v; want 0, false", p.doomed, p.abort != nil)
	}
	p.opMu.Unlock()
}

// A create whose caller goes away is abandoned, unlike a start: nothing of
// the container runs yet, and the cleanup of the failed create removes what
// the runtime had made (its process and its state).
func TestCreateCanceledLeavesNothing(t *testing.T) {
	f := newFake(t)
	hold := newHold(t, "FAKE_RUNTIME_CREATE_HOLD")
	cctx, cancel := context.WithCancel(context.Background())
	created := f.createInBackground(cctx)
	pidFile := filepath.Join(f.rt.Root, "c1", "pid")
	pid, err := strconv.Atoi(waitWritten(t, pidFile, "the container's process"))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	releaseHold(hold, 2*time.Second) // the cancel killed the runtime
	select {
	case err := <-created:
		if err == nil {
			t.Fatal("create succeeded after its caller went away")
		}
		t.Logf("create: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("create did not return")
	}
	if _, err := os.Stat(filepath.Dir(pidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the runtime's state of the abandoned create is left (%v)", err)
	}
	for deadline := time.Now().Add(5 * time.Second); pidAliveUnreaped(pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned create's process %d still runs", pid)
		}
	}
}

// The cleanup of a failed create is bounded: a runtime whose delete hangs
// (a poststop hook that never ends) does not hold the Create call, and with
// it the shim, for good.
func TestCreateCleanupBounded(t *testing.T) {
	f := newFake(t)
	defer func(b time.Duration) { createCleanupBound = b }(createCleanupBound)
	createCleanupBound = time.Second
	newHold(t, "FAKE_RUNTIME_CREATE_HOLD") // never released: the cancel ends the create
	newHold(t, "FAKE_RUNTIME_DELETE_HOLD") // never released
	cctx, cancel := context.WithCancel(context.Background())
	created := f.createInBackground(cctx)
	waitWritten(t, filepath.Join(f.rt.Root, "c1", "pid"), "the container's process")
	begin := time.Now()
	cancel() // kills the runtime's create, held on its FIFO
	select {
	case err := <-created:
		if err == nil {
			t.Fatal("create succeeded after its caller went away")
		}
		t.Logf("create returned %s after the cancel: %v", time.Since(begin).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("create did not return: its cleanup waits for the hung delete")
	}
}

// createInBackground runs the Create of container c1 with f's runtime under
// ctx in a goroutine; its error comes on the channel.
func (f fakeEnv) createInBackground(ctx context.Context) <-chan error {
	created := make(chan error, 1)
	go func() {
		_, err := Create(ctx, Config{
			ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
			Reaper: testReaper, Emit: newRecorder().emit,
		})
		created <- err
	}()
	return created
}

// newHold makes a FIFO for the fake runtime to hold on and names it in env.
func newHold(t *testing.T, env string) string {
	t.Helper()
	hold := filepath.Join(t.TempDir(), "hold")
	if err := unix.Mkfifo(hold, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(env, hold)
	return hold
}

// startCanceledWhileHeld starts c's init with the fake runtime held on a
// FIFO named in holdEnv, cancels the Start's context once the runtime's
// call (a substring of its argv) has begun, releases the runtime, and
// requires the Start to succeed and the init to run.
func startCanceledWhileHeld(t *testing.T, f fakeEnv, c *Container, holdEnv, call string) {
	t.Helper()
	hold := newHold(t, holdEnv)
	cctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() { _, err := c.Start(cctx, ""); started <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.Join(f.calls(t), "\n"), call) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never called", call)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	releaseHold(hold, 10*time.Second)
	select {
	case err := <-started:
		if err != nil {
			t.Errorf("start after its caller went away: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("start did not return")
	}
	if st, err := c.State(""); err != nil || st.Status != Running || st.Pid <= 0 {
		t.Fatalf("init after its caller went away: %+v, %v: want running with its pid", st, err)
	}
}

// TestStatsAfterExit: the metrics are there after the init's exit, until
// Delete, from the cgroup the init was in (read as it was created: the
// exited process can no longer be looked up), as CRI needs to tell an OOM
// kill after an exit with 137. None is asked before the exit here.
func TestStatsAfterExit(t *testing.T) {
	_, _, c, ctx := startedFake(t)
	killWait(t, c, "")
	if st, _ := c.State(""); st.Status != Stopped {
		t.Fatalf("state after the exit: %s", st.Status)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", c.Pid())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the init is still in /proc: %v", err)
	}
	if _, err := c.Stats(ctx); err != nil {
		t.Fatalf("stats after the exit: %v", err)
	}
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.Stats(ctx); err == nil {
		t.Error("stats of a deleted container succeeded")
	}
}

// A Kill of an exec whose start is in flight waits for the start, bounded
// by the Kill's own context, and then signals the started exec.
func TestKillWaitsForExecStart(t *testing.T) {
	f, _, c, ctx := startedFake(t)
	block := newHold(t, "FAKE_RUNTIME_EXEC_BLOCK")
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"sleep", "1000"}}}); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { _, err := c.Start(ctx, "e1"); started <- err }()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(strings.Join(f.calls(t), "\n"), " exec "); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("exec never called")
		}
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.Kill(short, "e1", int(unix.SIGKILL), false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("kill with a 100 ms context during the exec's start: %v, want its deadline", err)
	}
	killed := make(chan error, 1)
	go func() { killed <- c.Kill(ctx, "e1", int(unix.SIGKILL), false) }()
	select {
	case err := <-killed:
		t.Fatalf("kill returned during the exec's start: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	releaseHold(block, 10*time.Second)
	for _, ch := range []chan error{started, killed} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("start or kill did not return once the start went on")
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if exit, err := c.Wait(wctx, "e1"); err != nil || exit.Status != 137 {
		t.Fatalf("wait: %+v, %v: want the KILL's 137", exit, err)
	}
}

// An exec whose I/O fails once the runtime has run its process (here its
// stdin FIFO gone before Started opens it) does not leave that process
// running, unwatched: the failed start kills it.
func TestExecFailedAfterRuntimeIsKilled(t *testing.T) {
	_, _, c, ctx := startedFake(t)
	fifoPath := filepath.Join(t.TempDir(), "stdin")
	if err := unix.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.AddExec(ctx, ExecConfig{ID: "e1", Spec: &specs.Process{Args: []string{"sleep", "1000"}}, Stdio: stdio.Config{Stdin: fifoPath}}); err != nil {
		t.Fatal(err)
	}
	hold := newHold(t, "FAKE_RUNTIME_EXEC_HOLD")
	started := make(chan error, 1)
	go func() { _, err := c.Start(ctx, "e1"); started <- err }()
	pidFile := filepath.Join(c.cfg.Bundle, "e1.pid")
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(5 * time.Millisecond) {
		pid, _ = readPidFile(pidFile)
		if time.Now().After(deadline) {
			t.Fatal("the runtime never ran the exec's process")
		}
	}
	if err := os.Remove(fifoPath); err != nil {
		t.Fatal(err)
	}
	releaseHold(hold, 10*time.Second)
	select {
	case err := <-started:
		if err == nil {
			t.Fatal("the start succeeded without its stdin")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("start did not return")
	}
	for deadline := time.Now().Add(5 * time.Second); unix.Kill(pid, 0) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the exec's process %d still runs after its start failed", pid)
		}
	}
}
