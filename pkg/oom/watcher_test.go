//go:build linux

package oom

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestNewNilNotify(t *testing.T) {
	if _, err := New(nil); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("New(nil): err = %v, want invalid argument", err)
	}
}

func TestAddErrors(t *testing.T) {
	rec := newRecorder()
	w, err := New(rec.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	good := newFakeV2(t, "")
	if err := w.AddPath("taken", good.cg); err != nil {
		t.Fatal(err)
	}
	noEvents := t.TempDir()
	noCounter := t.TempDir()
	if err := os.WriteFile(filepath.Join(noCounter, eventsFile), []byte("low 0\nhigh 0\nmax 0\noom 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(good.cg.Dir, eventsFile)

	tests := []struct {
		name    string
		id      string
		cg      CgroupPath
		wantErr func(error) bool
	}{
		{name: "empty id", id: "", cg: good.cg, wantErr: errdefs.IsInvalidArgument},
		{name: "duplicate id", id: "taken", cg: newFakeV2(t, "").cg, wantErr: errdefs.IsAlreadyExists},
		{name: "version 0", id: "a", cg: CgroupPath{Dir: good.cg.Dir}, wantErr: errdefs.IsInvalidArgument},
		{name: "version 3", id: "a", cg: CgroupPath{Version: 3, Dir: good.cg.Dir}, wantErr: errdefs.IsInvalidArgument},
		{name: "relative dir", id: "a", cg: CgroupPath{Version: 2, Dir: "sys/fs/cgroup"}, wantErr: errdefs.IsInvalidArgument},
		{name: "missing dir", id: "a", cg: CgroupPath{Version: 2, Dir: filepath.Join(noEvents, "gone")}, wantErr: errdefs.IsNotFound},
		{name: "not a dir", id: "a", cg: CgroupPath{Version: 2, Dir: notDir}, wantErr: errdefs.IsInvalidArgument},
		{name: "v2 without memory controller", id: "a", cg: CgroupPath{Version: 2, Dir: noEvents}, wantErr: errdefs.IsFailedPrecondition},
		{name: "v1 without memory controller", id: "a", cg: CgroupPath{Version: 1, Dir: noEvents}, wantErr: errdefs.IsFailedPrecondition},
		{name: "v2 without oom_kill", id: "a", cg: CgroupPath{Version: 2, Dir: noCounter}, wantErr: errdefs.IsNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := w.AddPath(tt.id, tt.cg)
			if !tt.wantErr(err) {
				t.Fatalf("AddPath(%q, %+v): err = %v", tt.id, tt.cg, err)
			}
		})
	}
	if err := w.Remove("unknown"); !errdefs.IsNotFound(err) {
		t.Fatalf("Remove(unknown): err = %v, want not found", err)
	}
	if err := w.Add("a", -1); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Add with pid -1: err = %v, want invalid argument", err)
	}
	if err := w.Add("taken", os.Getpid()); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Add of a known id: err = %v, want already exists", err)
	}
	w.Check("unknown") // does nothing
	if err := w.Remove("taken"); err != nil {
		t.Fatal(err)
	}
	if rec.total() != 0 {
		t.Fatalf("events: %v", rec.events)
	}
}

// TestFakeV2 drives the real loop with memory.events files rewritten by
// the test: inotify reports plain files as it reports cgroup files.
func TestFakeV2(t *testing.T) {
	setup := func(t *testing.T) (*Watcher, *recorder, *pollLog) {
		rec := newRecorder()
		polls := newPollLog()
		w, err := newWatcher(rec.notify, hooks{afterPoll: polls.afterPoll})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := w.Close(); err != nil {
				t.Error(err)
			}
		})
		return w, rec, polls
	}

	t.Run("max only", func(t *testing.T) {
		w, rec, polls := setup(t)
		f := newFakeV2(t, "")
		if err := w.AddPath("max", f.cg); err != nil {
			t.Fatal(err)
		}
		f.bump(1, fakeMax)
		polls.waitFor(t, "max", func(polled) bool { return true })
		f.bump(5, 0, 1, fakeMax, fakeOOM) // low, high, max, oom: no kill
		polls.waitFor(t, "max", func(polled) bool { return true })
		w.Check("max")
		if n := rec.count("max"); n != 0 {
			t.Fatalf("%d events without a kill", n)
		}
		if err := w.Remove("max"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("one kill", func(t *testing.T) {
		w, rec, polls := setup(t)
		f := newFakeV2(t, "")
		f.bump(3, fakeOOMKill) // history before Add is not reported
		if err := w.AddPath("kill", f.cg); err != nil {
			t.Fatal(err)
		}
		f.bump(1, fakeMax, fakeOOM, fakeOOMKill)
		p := polls.waitFor(t, "kill", func(p polled) bool { return p.kills > 0 })
		if p.kills != 1 {
			t.Fatalf("loop reported %d kills, want 1", p.kills)
		}
		w.Check("kill")
		f.bump(1, fakeMax) // another wake-up, no kill
		polls.waitFor(t, "kill", func(p polled) bool { return p.kills == 0 })
		if n := rec.count("kill"); n != 1 {
			t.Fatalf("%d events, want 1", n)
		}
		if err := w.Remove("kill"); err != nil {
			t.Fatal(err)
		}
		f.bump(1, fakeOOMKill) // after Remove
		w.Check("kill")
		if n := rec.count("kill"); n != 1 {
			t.Fatalf("%d events after Remove, want 1", n)
		}
	})

	t.Run("two kills in one write", func(t *testing.T) {
		w, rec, polls := setup(t)
		f := newFakeV2(t, "")
		if err := w.AddPath("two", f.cg); err != nil {
			t.Fatal(err)
		}
		f.bump(2, fakeOOMKill)
		polls.waitFor(t, "two", func(p polled) bool { return p.kills > 0 })
		if n := rec.count("two"); n != 2 {
			t.Fatalf("%d events, want 2", n)
		}
		if err := w.Remove("two"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("same file under two ids", func(t *testing.T) {
		w, rec, _ := setup(t)
		f := newFakeV2(t, "")
		if err := w.AddPath("a", f.cg); err != nil {
			t.Fatal(err)
		}
		if err := w.AddPath("b", f.cg); err != nil {
			t.Fatal(err)
		}
		f.bump(1, fakeOOMKill)
		rec.wait(t, 2)
		if rec.count("a") != 1 || rec.count("b") != 1 {
			t.Fatalf("events: a %d, b %d; want 1 each", rec.count("a"), rec.count("b"))
		}
		// The watch must outlive the first id removed.
		if err := w.Remove("a"); err != nil {
			t.Fatal(err)
		}
		f.bump(1, fakeOOMKill)
		rec.wait(t, 1)
		w.Check("a")
		w.Check("b")
		if rec.count("a") != 1 || rec.count("b") != 2 {
			t.Fatalf("events: a %d, b %d; want 1 and 2", rec.count("a"), rec.count("b"))
		}
		if err := w.Remove("b"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("file deleted", func(t *testing.T) {
		w, rec, polls := setup(t)
		f := newFakeV2(t, "")
		if err := w.AddPath("deleted", f.cg); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(f.cg.Dir, eventsFile)); err != nil {
			t.Fatal(err)
		}
		// IN_IGNORED: the kernel dropped the watch; a last reading finds nothing.
		polls.waitFor(t, "deleted", func(p polled) bool { return p.gone })
		w.Check("deleted")
		if err := w.Remove("deleted"); err != nil {
			t.Fatal(err)
		}
		if n := rec.count("deleted"); n != 0 {
			t.Fatalf("%d events", n)
		}
	})

	t.Run("another cgroup at the path", func(t *testing.T) {
		w, rec, _ := setup(t)
		dir := filepath.Join(t.TempDir(), "cg")
		f := newFakeV2(t, dir)
		if err := w.AddPath("replaced", f.cg); err != nil {
			t.Fatal(err)
		}
		// Keep the old directory alive elsewhere, so that the new one
		// cannot get its inode number.
		if err := os.Rename(dir, dir+".old"); err != nil {
			t.Fatal(err)
		}
		g := newFakeV2(t, dir)
		g.bump(1, fakeOOMKill)
		w.Check("replaced")
		if n := rec.count("replaced"); n != 0 {
			t.Fatalf("%d events for a kill in another cgroup", n)
		}
		if err := w.Remove("replaced"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCheckReportsBeforeReturning holds the loop after it woke for a kill,
// calls Check, and checks that Check reported the kill before returning and
// that the loop, released, does not report it again.
func TestCheckReportsBeforeReturning(t *testing.T) {
	rec := newRecorder()
	polls := newPollLog()
	entered := make(chan string, 16)
	release := make(chan struct{})
	w, err := newWatcher(rec.notify, hooks{
		beforePoll: func(id string) {
			entered <- id
			<-release
		},
		afterPoll: polls.afterPoll,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	f := newFakeV2(t, "")
	if err := w.AddPath("ctr", f.cg); err != nil {
		t.Fatal(err)
	}
	f.bump(1, fakeMax, fakeOOM, fakeOOMKill)
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("the loop did not wake")
	}
	w.Check("ctr")
	if n := rec.count("ctr"); n != 1 {
		t.Fatalf("after Check: %d events, want 1", n)
	}
	close(release)
	p := polls.waitFor(t, "ctr", func(polled) bool { return true })
	if p.kills != 0 {
		t.Fatalf("the loop reported %d kills already reported by Check", p.kills)
	}
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := rec.count("ctr"); n != 1 {
		t.Fatalf("after Close: %d events, want 1", n)
	}
}

// TestCheckRacesLoop increments the counter while several goroutines call
// Check: every kill is reported exactly once.
func TestCheckRacesLoop(t *testing.T) {
	const kills = 200
	rec := newRecorder()
	w, err := New(rec.notify)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeV2(t, "")
	if err := w.AddPath("ctr", f.cg); err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				select {
				case <-stop:
					return
				default:
					w.Check("ctr")
				}
			}
		}()
	}
	close(start)
	for range kills {
		f.bump(1, fakeMax, fakeOOMKill)
	}
	rec.wait(t, kills)
	close(stop)
	wg.Wait()
	w.Check("ctr")
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := rec.count("ctr"); n != kills {
		t.Fatalf("%d events, want %d", n, kills)
	}
}

// TestNotifyMayRemoveAndAdd calls Remove and Add from notify.
func TestNotifyMayRemoveAndAdd(t *testing.T) {
	f, g := newFakeV2(t, ""), newFakeV2(t, "")
	var w *Watcher
	errc := make(chan error, 2)
	got := make(chan Event, 2)
	w, err := New(func(ev Event) {
		if ev.ID == "first" {
			errc <- w.Remove("first")
			errc <- w.AddPath("second", g.cg)
		}
		got <- ev
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.AddPath("first", f.cg); err != nil {
		t.Fatal(err)
	}
	f.bump(1, fakeOOMKill)
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if ev := <-got; ev.ID != "first" {
		t.Fatalf("event %+v", ev)
	}
	g.bump(1, fakeOOMKill)
	select {
	case ev := <-got:
		if ev.ID != "second" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(testTimeout):
		t.Fatal("no event for the id added from notify")
	}
}

func TestClose(t *testing.T) {
	rec := newRecorder()
	before := fdCount(t)
	w, err := New(rec.notify)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeV2(t, "")
	if err := w.AddPath("left", f.cg); err != nil {
		t.Fatal(err)
	}
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.AddPath("after", newFakeV2(t, "").cg); !errors.Is(err, ErrClosed) || !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("AddPath after Close: err = %v, want ErrClosed", err)
	}
	if err := w.Add("after", os.Getpid()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: err = %v, want ErrClosed", err)
	}
	if err := w.Remove("left"); !errdefs.IsNotFound(err) {
		t.Fatalf("Remove after Close: err = %v, want not found", err)
	}
	f.bump(1, fakeOOMKill)
	w.Check("left")
	if n := rec.total(); n != 0 {
		t.Fatalf("%d events after Close", n)
	}
	if after := fdCount(t); after != before {
		t.Fatalf("fds: %d before New, %d after Close", before, after)
	}
}

// TestCloseFromManyGoroutines calls Close concurrently: one call returns the
// loop's error, all return once the loop has ended.
func TestCloseFromManyGoroutines(t *testing.T) {
	w, err := New(func(Event) {})
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- w.Close()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestManyAddRemove adds and removes many cgroups from many goroutines in
// random order, with kills in some, and checks that each kill is reported
// once and that no fd or goroutine is left after Close.
func TestManyAddRemove(t *testing.T) {
	tests := []struct {
		name        string
		realVersion int // hierarchy of the real cgroups
		nReal       int
		nFake       int
	}{
		{name: "v2 fake", nFake: 200},
		{name: "v1 real and v2 fake", realVersion: 1, nReal: 50, nFake: 200},
		{name: "v2 real and v2 fake", realVersion: 2, nReal: 50, nFake: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testManyAddRemove(t, tt.realVersion, tt.nReal, tt.nFake)
		})
	}
}

func testManyAddRemove(t *testing.T, realVersion, nReal, nFake int) {
	type target struct {
		id   string
		cg   CgroupPath
		fake *fakeV2
	}
	var targets []target
	if nReal > 0 {
		h := requireHierarchy(t, realVersion)
		for i := range nReal {
			cg := newRealCgroup(t, h, 0)
			targets = append(targets, target{id: fmt.Sprintf("real-%d", i), cg: cg})
		}
	}
	for i := range nFake {
		f := newFakeV2(t, "")
		targets = append(targets, target{id: fmt.Sprintf("fake-%d", i), cg: f.cg, fake: f})
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("%d real cgroups (v%d), %d fake v2 cgroups, seed %d", nReal, realVersion, nFake, seed)

	rec := newRecorder()
	fds := fdCount(t)
	goroutines := runtime.NumGoroutine()
	w, err := New(rec.notify)
	if err != nil {
		t.Fatal(err)
	}

	// Add from 8 goroutines, released together.
	parallel := func(items []target, do func(target) error) {
		t.Helper()
		start := make(chan struct{})
		work := make(chan target)
		errs := make(chan error, len(items))
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for it := range work {
					if err := do(it); err != nil {
						errs <- fmt.Errorf("%s: %w", it.id, err)
					}
				}
			}()
		}
		close(start)
		for _, it := range items {
			work <- it
		}
		close(work)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	rng.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
	parallel(targets, func(it target) error { return w.AddPath(it.id, it.cg) })
	if t.Failed() {
		t.FailNow()
	}

	// A kill in a third of the fake cgroups, with Checks racing the loop.
	want := make(map[string]int)
	for _, it := range targets {
		if it.fake != nil && rng.IntN(3) == 0 {
			it.fake.bump(1, fakeMax, fakeOOM, fakeOOMKill)
			want[it.id] = 1
		}
	}
	parallel(targets, func(it target) error { w.Check(it.id); return nil })
	rec.wait(t, len(want))

	// Half of the real cgroups are removed while still watched (a v1
	// eventfd fires for the removal, which is not a kill).
	for _, it := range targets {
		if it.fake == nil && rng.IntN(2) == 0 {
			if err := os.Remove(it.cg.Dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	rng.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
	keep := targets[:20]
	parallel(targets[20:], func(it target) error {
		w.Check(it.id)
		return w.Remove(it.id)
	})

	// Close releases what is still watched.
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.AddPath("late", keep[0].cg); !errors.Is(err, ErrClosed) {
		t.Fatalf("AddPath after Close: err = %v", err)
	}
	if got := rec.perID(); !mapsEqual(got, want) {
		t.Fatalf("events per id: got %v, want %v", got, want)
	}
	if after := fdCount(t); after != fds {
		t.Fatalf("fds: %d before New, %d after Close:\n%v", fds, after, openFDs())
	}
	waitGoroutines(t, goroutines)
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestLoopKeepsGoroutineStacksSmall: the loop's buffers must not sit on its
// stack in a size that raises the runtime's starting stack size of every
// goroutine (the average of the stacks it scans). A 64 KiB inotify buffer
// on the loop's stack once made every goroutine of the shim start at 8 KiB
// instead of 2 KiB.
func TestLoopKeepsGoroutineStacksSmall(t *testing.T) {
	w, err := New(func(Event) {})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f := newFakeV2(t, t.TempDir())
	if err := w.AddPath("ctr", f.cg); err != nil {
		t.Fatal(err)
	}
	f.bump(1, fakeMax) // the loop reads inotify at least once
	sample := []metrics.Sample{{Name: "/gc/stack/starting-size:bytes"}}
	var size uint64
	for range 3 {
		runtime.GC()
		metrics.Read(sample)
		size = sample[0].Value.Uint64()
	}
	if size > 4096 {
		t.Fatalf("goroutines start with %d-byte stacks while the loop runs, want at most 4096", size)
	}
}

const noInotifyEnv = "MINE_OOM_TEST_NO_INOTIFY"

// withoutInotify is the child of TestStartsWithoutInotify: it takes every
// inotify instance its user may have, then starts a Watcher and watches
// the fake v2 cgroup at dir. It prints what happened.
func withoutInotify(dir string) int {
	for n := 0; ; n++ {
		if _, err := unix.InotifyInit1(unix.IN_CLOEXEC); err != nil {
			if !errors.Is(err, unix.EMFILE) {
				fmt.Println("inotify_init1:", err)
				return 2
			}
			break
		}
		if n > 1<<16 {
			fmt.Println("no limit on inotify instances")
			return 3
		}
	}
	w, err := New(func(Event) {})
	if err != nil {
		fmt.Println("New:", err)
		return 1
	}
	defer w.Close()
	err = w.AddPath("v2", CgroupPath{Version: 2, Dir: dir})
	fmt.Println("v2 watch:", err, errdefs.IsResourceExhausted(err))
	return 0
}

// TestStartsWithoutInotify: a node has run out of inotify instances
// (fs.inotify.max_user_instances is per user, 128 by default, and every
// shim runs as root). The watcher starts all the same, as a cgroup v1 host
// needs none; only a v2 watch fails, as resource exhausted. The instances
// are taken in a child running as another user, so that nothing else of
// root's on the machine runs short meanwhile.
func TestStartsWithoutInotify(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the child as another user")
	}
	dir := filepath.Join(t.TempDir(), "cg")
	newFakeV2(t, dir)
	for d := filepath.Dir(dir); d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil { // t.TempDir makes them root's alone
			t.Fatal(err)
		}
	}
	// The test binary's own directory is root's alone: the child runs a copy.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(dir), "oom.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run", "^$")
	cmd.Env = append(os.Environ(), noInotifyEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, "v2 watch: ") || !strings.HasSuffix(got, " true") {
		t.Fatalf("child said %q, want a v2 watch failed as resource exhausted", got)
	}
}

// TestMaySpin: a cgroup's signal starts a spin at most once per
// pendingWindow, and never where the process has a single P (read at the
// signal) or a single processor.
func TestMaySpin(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one processor: the loop never spins here")
	}
	w := &Watcher{spinFor: pendingSpinFor}
	a, b := &entry{id: "a"}, &entry{id: "b"}
	at := time.Now()
	if !w.maySpin(a, at) {
		t.Fatal("the first signal of a cgroup did not spin")
	}
	if w.maySpin(a, at.Add(pendingWindow-time.Millisecond)) {
		t.Error("a second spin of a cgroup within pendingWindow")
	}
	if !w.maySpin(b, at.Add(time.Millisecond)) {
		t.Error("another cgroup's first signal did not spin")
	}
	if !w.maySpin(a, at.Add(pendingWindow)) {
		t.Error("no spin once pendingWindow had passed")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if w.maySpin(a, at.Add(3*pendingWindow)) {
		t.Error("a spin with a single P")
	}
	if w := (&Watcher{}); w.maySpin(&entry{}, at) {
		t.Error("a spin with spinFor 0")
	}
}
