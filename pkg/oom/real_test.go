//go:build linux

package oom

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// allocatorEnv makes the test binary, re-executed by startAllocator, an
// allocator instead of running tests. Its value is the mode: "oom"
// allocates until killed, "small" allocates 4 MiB and exits 0.
const allocatorEnv = "MINE_OOM_TEST_ALLOCATOR"

func TestMain(m *testing.M) {
	if mode := os.Getenv(allocatorEnv); mode != "" {
		os.Exit(allocate(mode))
	}
	if dir := os.Getenv(noInotifyEnv); dir != "" {
		os.Exit(withoutInotify(dir))
	}
	os.Exit(m.Run())
}

// allocate waits for one byte on stdin (the test moves the process into its
// cgroup and arms the watch first), then allocates and touches memory.
func allocate(mode string) int {
	var b [1]byte
	if _, err := io.ReadFull(os.Stdin, b[:]); err != nil {
		fmt.Fprintln(os.Stderr, "allocator: read stdin:", err)
		return 2
	}
	limit := 4 << 20
	if mode == "oom" {
		limit = 1 << 30 // never reached below a 16 MiB limit
	}
	var keep [][]byte
	for total := 0; total < limit; total += 1 << 20 {
		chunk := make([]byte, 1<<20)
		for i := 0; i < len(chunk); i += 4096 {
			chunk[i] = 1
		}
		keep = append(keep, chunk)
	}
	runtime.KeepAlive(keep)
	if mode == "oom" {
		fmt.Fprintln(os.Stderr, "allocator: allocated", limit, "bytes without being killed")
		return 3
	}
	return 0
}

// hierarchy is a mounted cgroup hierarchy with the memory controller.
type hierarchy struct {
	version int
	mount   string
}

// requireHierarchy returns the cgroup hierarchy of that version with the
// memory controller, or skips the test saying why there is none.
func requireHierarchy(t testing.TB, version int) hierarchy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := parseMountinfo(data)
	if err != nil {
		t.Fatal(err)
	}
	reason := fmt.Sprintf("no cgroup v%d hierarchy mounted", version)
	for _, m := range mounts {
		switch {
		case version == 1 && m.fstype == "cgroup" && hasOption(m.superOptions, "memory"):
			if _, err := os.Stat(filepath.Join(m.point, eventControlFile)); err != nil {
				reason = fmt.Sprintf("cgroup v1 memory hierarchy at %s has no %s (kernel without CONFIG_MEMCG_V1 events?): %v", m.point, eventControlFile, err)
				continue
			}
			return hierarchy{version: 1, mount: m.point}
		case version == 2 && m.fstype == "cgroup2":
			controllers, err := os.ReadFile(filepath.Join(m.point, "cgroup.controllers"))
			if err != nil {
				reason = fmt.Sprintf("cgroup2 at %s: %v", m.point, err)
				continue
			}
			if !hasWord(string(controllers), "memory") {
				reason = fmt.Sprintf("cgroup2 at %s has no memory controller (hybrid host: memory is bound to a v1 hierarchy)", m.point)
				continue
			}
			// The test cgroups are children of the mount's root: it must
			// hand the memory controller down.
			subtree := filepath.Join(m.point, "cgroup.subtree_control")
			enabled, err := os.ReadFile(subtree)
			if err != nil {
				reason = fmt.Sprintf("cgroup2 at %s: %v", m.point, err)
				continue
			}
			if !hasWord(string(enabled), "memory") {
				if err := os.WriteFile(subtree, []byte("+memory"), 0); err != nil {
					reason = fmt.Sprintf("cannot enable the memory controller in %s: %v", subtree, err)
					continue
				}
			}
			return hierarchy{version: 2, mount: m.point}
		}
	}
	t.Skip(reason)
	return hierarchy{}
}

func hasWord(s, word string) bool {
	for _, f := range strings.Fields(s) {
		if f == word {
			return true
		}
	}
	return false
}

// newRealCgroup creates a cgroup under the root of h, with a memory limit
// (no swap) when limit > 0. It is removed when the test ends.
func newRealCgroup(t testing.TB, h hierarchy, limit int64) CgroupPath {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(h.mount, fmt.Sprintf("mine-oom-test-%d-%s", os.Getpid(), hex.EncodeToString(b[:])))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	if limit > 0 {
		files := []struct{ name, value string }{
			{"memory.limit_in_bytes", strconv.FormatInt(limit, 10)},
			{"memory.memsw.limit_in_bytes", strconv.FormatInt(limit, 10)}, // with swap accounting only
		}
		if h.version == 2 {
			files = []struct{ name, value string }{
				{"memory.max", strconv.FormatInt(limit, 10)},
				{"memory.swap.max", "0"}, // with swap accounting only
			}
		}
		for i, f := range files {
			err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.value), 0)
			if err != nil && !(i == 1 && errors.Is(err, os.ErrNotExist)) {
				t.Fatal(err)
			}
		}
	}
	return CgroupPath{Version: h.version, Dir: dir}
}

// removeCgroup kills what is left in dir and removes it.
func removeCgroup(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		err = os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v", dir, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// allocator is a re-executed copy of the test binary, placed in a cgroup and
// waiting for the word to allocate.
type allocator struct {
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	out   *bytes.Buffer
	exit  chan *os.ProcessState
}

// startAllocator starts an allocator in cg. It runs a copy of the test
// binary from a temporary directory: run from a slow filesystem (9p in a
// VM), the code pages evicted under the memory limit are read back slowly.
func startAllocator(t testing.TB, mode string, cg CgroupPath) *allocator {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "allocator")
	if err := copyFile(self, exe); err != nil {
		t.Fatal(err)
	}
	a := &allocator{out: new(bytes.Buffer), exit: make(chan *os.ProcessState, 1)}
	a.cmd = exec.Command(exe, "-test.run=^$")
	a.cmd.Env = append(os.Environ(), allocatorEnv+"="+mode)
	a.cmd.Stdout = a.out
	a.cmd.Stderr = a.out
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.pid = a.cmd.Process.Pid
	go func() {
		a.cmd.Wait()
		a.exit <- a.cmd.ProcessState
	}()
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		a.stdin.Close()
	})
	if err := os.WriteFile(filepath.Join(cg.Dir, "cgroup.procs"), []byte(strconv.Itoa(a.pid)), 0); err != nil {
		t.Fatalf("move allocator to %s: %v", cg, err)
	}
	return a
}

// start tells the allocator to allocate.
func (a *allocator) start(t testing.TB) {
	t.Helper()
	if _, err := a.stdin.Write([]byte{'g'}); err != nil {
		t.Fatal(err)
	}
}

// wait returns the allocator's exit state, failing after testTimeout.
func (a *allocator) wait(t testing.TB) *os.ProcessState {
	t.Helper()
	select {
	case st := <-a.exit:
		return st
	case <-time.After(testTimeout):
		a.cmd.Process.Kill()
		t.Fatalf("allocator did not exit within %v", testTimeout)
		return nil
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func killedBy(st *os.ProcessState) (syscall.Signal, bool) {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0, false
	}
	return ws.Signal(), true
}

// readKills reads the kill counter of a real cgroup.
func readKills(t testing.TB, cg CgroupPath) uint64 {
	t.Helper()
	file := oomControlFile
	if cg.Version == 2 {
		file = eventsFile
	}
	data, err := os.ReadFile(filepath.Join(cg.Dir, file))
	if err != nil {
		t.Fatal(err)
	}
	v, ok, err := parseCounter(data, counterKey)
	if err != nil || !ok {
		t.Fatalf("%s: no %s counter (%v) in %q", file, counterKey, err, data)
	}
	return v
}

// TestRealOOM gets a process killed by the OOM killer in a real memory
// cgroup limited to 16 MiB and checks that exactly one Event reports it:
// from the loop, and from Check called on the process's exit the way the
// task service does before it publishes the exit.
func TestRealOOM(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			h := requireHierarchy(t, version)
			tests := []struct {
				name     string
				waitLoop bool
			}{
				// On v1 the eventfd fires before the counter moves: this
				// case fails if the loop does not re-read a pending cgroup.
				{name: "loop reports", waitLoop: true},
				{name: "check at exit", waitLoop: false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					testRealOOM(t, h, tt.waitLoop)
				})
			}
		})
	}
}

func testRealOOM(t *testing.T, h hierarchy, waitLoop bool) {
	rec := newRecorder()
	w, err := New(rec.notify)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	cg := newRealCgroup(t, h, 16<<20)
	a := startAllocator(t, "oom", cg)
	resolved, err := ResolveCgroup(a.pid)
	if err != nil {
		t.Fatal(err)
	}
	if resolved != cg {
		t.Fatalf("ResolveCgroup(allocator) = %s, want %s", resolved, cg)
	}
	if err := w.Add("ctr", a.pid); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	a.start(t)
	if waitLoop {
		rec.wait(t, 1)
		t.Logf("event %v after the allocator began", time.Since(began))
	}
	st := a.wait(t)
	if sig, ok := killedBy(st); !ok || sig != syscall.SIGKILL {
		t.Fatalf("allocator: %v, want killed by SIGKILL; output:\n%s", st, a.out)
	}
	// The task service's order: the init exited, Check, then TaskExit.
	w.Check("ctr")
	if n := rec.count("ctr"); n != 1 {
		t.Fatalf("%d events when Check returned, want 1 (counter %d)", n, readKills(t, cg))
	}
	if n := readKills(t, cg); n != 1 {
		t.Fatalf("kernel counted %d kills, want 1", n)
	}
	if err := w.Remove("ctr"); err != nil {
		t.Fatal(err)
	}
	if err := closeWithin(t, w, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := rec.total(); n != 1 {
		t.Fatalf("%d events after Close, want 1", n)
	}
}

// TestRealOOMBelow: a container's limit kills a process in a cgroup below
// the container's (its init is systemd, or docker runs in it). The kill is
// the container's OOM: one event, on both hierarchies. (On v1 the kernel
// counts it only in the victim's own cgroup.)
func TestRealOOMBelow(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			h := requireHierarchy(t, version)
			rec := newRecorder()
			w, err := New(rec.notify)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			cg := newRealCgroup(t, h, 16<<20)
			// The container's init: small, so that the OOM killer picks
			// the allocator (a copy of the test binary, built with -race,
			// could be the larger when the limit is hit).
			init := exec.Command("sleep", "1000")
			if err := init.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = init.Process.Kill(); _ = init.Wait() })
			pid := strconv.Itoa(init.Process.Pid)
			if err := os.WriteFile(filepath.Join(cg.Dir, "cgroup.procs"), []byte(pid), 0); err != nil {
				t.Fatal(err)
			}
			worker := filepath.Join(cg.Dir, "worker")
			if err := os.Mkdir(worker, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { removeCgroup(t, worker) })
			if err := w.Add("ctr", init.Process.Pid); err != nil {
				t.Fatal(err)
			}
			a := startAllocator(t, "oom", CgroupPath{Version: version, Dir: worker})
			a.start(t)
			if sig, ok := killedBy(a.wait(t)); !ok || sig != syscall.SIGKILL {
				t.Fatalf("allocator below the container: not killed by SIGKILL; output:\n%s", a.out)
			}
			rec.wait(t, 1)
			_ = init.Process.Kill()
			_ = init.Wait()
			w.Check("ctr")
			if n := rec.count("ctr"); n != 1 {
				t.Fatalf("%d events for the container, want 1", n)
			}
		})
	}
}

// TestRealSpinFindsTheKill holds back the loop's timer, as a processor
// does that writes "Killed process" to a serial console with interrupts off
// (the kernel does so right after a kill, from the killing task): after a v1
// signal the loop re-reads the counter without a timer, and finds the kill
// that follows. Without the spin (spinFor -1) the kill was not reported in
// 4 of 10 runs: those where the loop read the signal before the kill.
func TestRealSpinFindsTheKill(t *testing.T) {
	testRealPendingKill(t, hooks{
		retryDelay: func(time.Duration) time.Duration { return time.Hour },
		// Longer than pendingSpinFor, so that a busy machine's slower
		// kill still comes within it.
		spinFor: time.Second,
	}, 0)
}

// TestRealTimedReadsAfterTheSpin lets the kernel kill 100 ms after the
// loop found a first signal pending: the spin is over by then, and a cgroup
// spins at most once a second, so the timed re-reads must find the kill.
// When the loop reads the second signal before the kill, the re-reads,
// backed off by then, must start again from the first.
func TestRealTimedReadsAfterTheSpin(t *testing.T) {
	var (
		mu     sync.Mutex
		events []string // "signal", or the delay armed
	)
	note := func(ev string) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}
	testRealPendingKill(t, hooks{
		signalled: func(string) { note("signal") },
		retryDelay: func(d time.Duration) time.Duration {
			note(d.String())
			return d
		},
	}, 100*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	var signals []int
	for i, ev := range events {
		if ev == "signal" {
			signals = append(signals, i)
		}
	}
	if len(signals) < 2 {
		t.Logf("the loop read the second signal with its kill: no re-read was needed (%v)", events)
		return
	}
	if i := signals[1]; i+1 >= len(events) || events[i+1] != pendingFirstRetry.String() {
		t.Fatalf("after the second signal the re-reads did not start again from %v: %v", pendingFirstRetry, events)
	}
}

// testRealPendingKill runs an allocator into its limit in a v1 cgroup with
// oom_kill_disable set, so that the kernel signals the OOM and kills
// nothing; once the loop has read that signal (and after wait), it lets
// the kernel kill, which signals again and kills. The kill must be
// reported, by the loop alone.
func testRealPendingKill(t *testing.T, h hooks, wait time.Duration) {
	hier := requireHierarchy(t, 1)
	if runtime.NumCPU() < 2 {
		t.Skip("the loop spins only beside the task being killed: needs two processors")
	}
	rec := newRecorder()
	polls := newPollLog()
	h.afterPoll = polls.afterPoll
	w, err := newWatcher(rec.notify, h)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cg := newRealCgroup(t, hier, 16<<20)
	control := filepath.Join(cg.Dir, oomControlFile)
	if data, err := os.ReadFile(control); err != nil || !bytes.Contains(data, []byte(counterKey+" ")) {
		t.Skipf("no %s counter in %s (kernel < 4.13?): %v", counterKey, control, err)
	}
	if err := os.WriteFile(control, []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last in, first out: the allocator's kill, which
	// oom_kill_disable does not stop, comes before the cgroup's removal.
	a := startAllocator(t, "oom", cg)
	if err := w.Add("ctr", a.pid); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	polls.waitFor(t, "ctr", func(p polled) bool { return p.kills == 0 && !p.gone })
	time.Sleep(wait)
	if err := os.WriteFile(control, []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	st := a.wait(t)
	if sig, ok := killedBy(st); !ok || sig != syscall.SIGKILL {
		t.Fatalf("allocator: %v, want killed by SIGKILL; output:\n%s", st, a.out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec.count("ctr") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the kill (counter %d) was not reported", readKills(t, cg))
		}
		time.Sleep(time.Millisecond)
	}
	if n := rec.count("ctr"); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}
}

// TestRealNoOOM runs a process that stays below its limit and removes its
// cgroup, with and without Remove first: no Event.
func TestRealNoOOM(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			h := requireHierarchy(t, version)
			rec := newRecorder()
			polls := newPollLog()
			w, err := newWatcher(rec.notify, hooks{afterPoll: polls.afterPoll})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			tests := []struct {
				name        string
				removeFirst bool
			}{
				{name: "remove then rmdir", removeFirst: true},
				{name: "rmdir while watched", removeFirst: false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					id := tt.name
					cg := newRealCgroup(t, h, 64<<20)
					a := startAllocator(t, "small", cg)
					if err := w.Add(id, a.pid); err != nil {
						t.Fatal(err)
					}
					a.start(t)
					if st := a.wait(t); !st.Success() {
						t.Fatalf("allocator: %v; output:\n%s", st, a.out)
					}
					w.Check(id)
					if tt.removeFirst {
						if err := w.Remove(id); err != nil {
							t.Fatal(err)
						}
					}
					if err := os.Remove(cg.Dir); err != nil {
						t.Fatal(err)
					}
					if !tt.removeFirst {
						if h.version == 1 {
							// The eventfd fires once for the removal.
							polls.waitFor(t, id, func(p polled) bool { return p.gone })
						}
						w.Check(id)
						if err := w.Remove(id); err != nil {
							t.Fatal(err)
						}
					}
					if n := rec.count(id); n != 0 {
						t.Fatalf("%d events without a kill", n)
					}
				})
			}
			if err := closeWithin(t, w, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if n := rec.total(); n != 0 {
				t.Fatalf("%d events without a kill", n)
			}
		})
	}
}

// TestRealRemovedBeforeRead is the systemd cgroup driver's race: a
// container's init is OOM-killed, and systemd removes the container's scope
// as soon as it is empty, before the shim has read its kill counter (the
// kernel delays the notification of memory.events by up to 10 ms after an
// earlier one). The loop is held until the cgroup is gone; Check at the
// init's exit must still report the kill, and a plain SIGKILL must still
// report none.
func TestRealRemovedBeforeRead(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			h := requireHierarchy(t, version)
			tests := []struct {
				name  string
				mode  string // allocator mode
				kill  bool   // the test kills the allocator with SIGKILL
				wantN int
			}{
				{name: "oom kill", mode: "oom", wantN: 1},
				{name: "sigkill", mode: "small", kill: true, wantN: 0},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					rec := newRecorder()
					hold := make(chan struct{})
					w, err := newWatcher(rec.notify, hooks{beforePoll: func(string) { <-hold }})
					if err != nil {
						t.Fatal(err)
					}
					released := false
					release := func() {
						if !released {
							released = true
							close(hold)
						}
					}
					defer func() {
						release()
						w.Close()
					}()

					cg := newRealCgroup(t, h, 16<<20)
					a := startAllocator(t, tt.mode, cg)
					if err := w.Add("ctr", a.pid); err != nil {
						t.Fatal(err)
					}
					if tt.kill {
						a.cmd.Process.Kill()
					} else {
						a.start(t)
					}
					st := a.wait(t)
					if sig, ok := killedBy(st); !ok || sig != syscall.SIGKILL {
						t.Fatalf("allocator: %v, want killed by SIGKILL; output:\n%s", st, a.out)
					}
					if err := os.Remove(cg.Dir); err != nil {
						t.Fatal(err)
					}
					w.Check("ctr")
					if n := rec.count("ctr"); n != tt.wantN {
						t.Fatalf("%d events when Check returned, want %d", n, tt.wantN)
					}
					w.Check("ctr")
					release()
					if err := w.Remove("ctr"); err != nil {
						t.Fatal(err)
					}
					if err := closeWithin(t, w, 5*time.Second); err != nil {
						t.Fatal(err)
					}
					if n := rec.total(); n != tt.wantN {
						t.Fatalf("%d events after Close, want %d", n, tt.wantN)
					}
				})
			}
		})
	}
}
