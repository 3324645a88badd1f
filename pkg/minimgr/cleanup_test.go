package minimgr

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// TestCleanupInterruptedCreates: what a minimgr killed in the middle of
// Create leaves is found and removed by Cleanup, shim included.
func TestCleanupInterruptedCreates(t *testing.T) {
	m, bundle := newTestManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Killed after `shim start` answered, before the answer was recorded:
	// the shim runs and holds no container.
	dir, lk, err := makeStateDir(m.Root(), m.Namespace(), "answered")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, record{ID: "answered", Namespace: m.Namespace(), Bundle: bundle, Runtime: m.cfg.RuntimeBinary}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.startShim(ctx, dir, "answered"); err != nil {
		t.Fatal(err)
	}
	lk.unlock()
	c, err := m.Open(ctx, "answered")
	if err != nil {
		t.Fatalf("reconnect through the shim's address file: %v", err)
	}
	shimPid := c.ShimPid()
	c.Close()

	// Killed before anything was recorded.
	_, lk, err = makeStateDir(m.Root(), m.Namespace(), "norecord")
	if err != nil {
		t.Fatal(err)
	}
	lk.unlock()
	// Killed before the temporary directory was renamed into place.
	tmp := filepath.Join(nsDir(m.Root(), m.Namespace()), ".lost.123")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if past := time.Now().Add(-time.Minute); os.Chtimes(tmp, past, past) != nil {
		t.Fatal("chtimes")
	}
	// A create in progress elsewhere: locked, left alone.
	busyDir, busy, err := makeStateDir(m.Root(), m.Namespace(), "busy")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		busy.unlock()
		os.RemoveAll(busyDir)
	}()

	infos, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]Status{}
	for _, i := range infos {
		status[i.ID] = i.Status
	}
	want := map[string]Status{"answered": StatusUnknown, "norecord": StatusDead, "busy": StatusCreating}
	for id, st := range want {
		if status[id] != st {
			t.Errorf("list: %s is %q, want %q", id, status[id], st)
		}
	}

	removed, err := m.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range removed {
		got = append(got, r.ID+":"+r.Reason)
	}
	sort.Strings(got)
	if len(got) != 2 || got[0] != "answered:unfinished create" || got[1] != "norecord:unfinished create" {
		t.Errorf("removed %v", got)
	}
	if err := waitGone(shimPid, 10*time.Second); err != nil {
		t.Errorf("shim: %v", err)
	}
	for _, p := range []string{m.StateDir("answered"), m.StateDir("norecord"), tmp} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	if _, err := os.Stat(busyDir); err != nil {
		t.Errorf("the busy create was removed: %v", err)
	}
}

// TestReconnectAndExec: a second Manager (as another process would) finds
// a running container, runs a process in it, lists its processes, and
// kills and deletes it.
func TestReconnectAndExec(t *testing.T) {
	m, bundle := newTestManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "re", Args: []string{"sleep", "1000"}, IO: IO{Log: true}})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	m2, err := New(Config{Root: m.Root(), Namespace: m.Namespace(), RuntimeBinary: shimBin})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := m2.Open(ctx, "re")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if st, err := c2.State(ctx); err != nil || st.Status != StatusRunning || st.Pid != pid {
		t.Fatalf("state %+v %v, want running pid %d", st, err, pid)
	}
	out := &lockedBuffer{}
	p, err := c2.Exec(ctx, ExecOpts{ID: "x", Args: []string{"sh", "-c", "echo $$; sleep 1000"}, IO: IO{Stdout: out}})
	if err != nil {
		t.Fatal(err)
	}
	xpid, err := p.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := c2.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[int]string{}
	for _, pi := range ps {
		found[pi.Pid] = pi.ExecID
	}
	if _, ok := found[pid]; !ok {
		t.Errorf("pids %v: no init %d", ps, pid)
	}
	if found[xpid] != "x" {
		t.Errorf("pids %v: no exec x with pid %d", ps, xpid)
	}
	// Its pid is printed before it sleeps: kill it only then.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "\n"); {
		if time.Now().After(deadline) {
			t.Fatalf("no output from the exec within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Kill(ctx, 9); err != nil {
		t.Fatal(err)
	}
	exit, err := p.Wait(ctx)
	if err != nil || exit.Status != 137 {
		t.Fatalf("exec exit %+v %v", exit, err)
	}
	if !p.WaitIO(5 * time.Second) {
		t.Fatal("exec output did not end")
	}
	if n, err := strconv.Atoi(strings.TrimSpace(out.String())); err != nil || n <= 1 {
		t.Errorf("exec output %q, want its pid in the container", out.String())
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Delete(ctx, false); err == nil {
		t.Fatal("delete of a running container without force succeeded")
	}
	exit, err = c2.Delete(ctx, true)
	if err != nil || exit.Status != 137 {
		t.Fatalf("forced delete: %+v %v", exit, err)
	}
	if _, err := m2.Open(ctx, "re"); !errdefs.IsNotFound(err) {
		t.Errorf("open after delete: %v, want not found", err)
	}
}

// TestCreateRefusesForeignRuncState: an ID that runc already knows in the
// namespace (containerd's container, a leftover) is refused before any
// shim runs, and the foreign state is untouched.
func TestCreateRefusesForeignRuncState(t *testing.T) {
	m, bundle := newTestManager(t)
	foreign := filepath.Join(m.runcRoot(), "taken")
	if err := os.MkdirAll(foreign, 0o711); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(foreign)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "taken", IO: IO{Log: true}})
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("create: %v, want already exists", err)
	}
	if !exists(foreign) {
		t.Error("the foreign runc state was removed")
	}
	if exists(m.StateDir("taken")) {
		t.Error("a state directory was left")
	}
}

// lockedBuffer is a bytes.Buffer that a copy goroutine writes while the
// test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDeleteDeadShimRuncUnknown: when a container's shim is dead and runc
// keeps its state but cannot say whether its processes run, Delete without
// force refuses (unavailable) and kills nothing.
func TestDeleteDeadShimRuncUnknown(t *testing.T) {
	m, bundle := newTestManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "unk", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shimPid := c.ShimPid()
	c.Close()
	// Held through pidfds: neither pid is signalled or judged after its exit.
	initFD, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(initFD)
	shimFD, err := unix.PidfdOpen(shimPid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(shimFD)
	if err := unix.PidfdSendSignal(shimFD, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(shimPid, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// A runc that fails to answer `state`, as one that hangs past its bound.
	broken := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m2, err := New(Config{Root: m.Root(), Namespace: m.Namespace(), RuntimeBinary: shimBin,
		RuncOptions: &runcoptions.Options{BinaryName: broken}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Delete(ctx, "unk", false); !errdefs.IsUnavailable(err) {
		t.Errorf("delete without force: %v, want unavailable", err)
	}
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(initFD), Events: unix.POLLIN}}, 0); err != nil || n != 0 {
		t.Fatalf("the container's init ended with a refused delete (poll %d, %v)", n, err)
	}
	if exit, err := m.Delete(ctx, "unk", true); err != nil || exit.Status != 137 {
		t.Fatalf("forced delete: %+v %v", exit, err)
	}
}

// TestCustomRuncRoot: with a runc root in the runc options, runc keeps a
// container's state where minimgr looks for it (the root's directory of the
// namespace, as the shim sets it).
func TestCustomRuncRoot(t *testing.T) {
	m, bundle := newTestManager(t)
	root, err := os.MkdirTemp("", "runc-root-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	m.cfg.RuncOptions = &runcoptions.Options{Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "cr", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !exists(filepath.Join(m.runcRoot(), "cr", "state.json")) {
		t.Errorf("no runc state of cr under %s", m.runcRoot())
	}
	if running, err := m.runcRunning(ctx, "cr"); err != nil || !running {
		t.Errorf("runcRunning: %v %v, want true", running, err)
	}
	if _, err := c.Delete(ctx, true); err != nil {
		t.Fatal(err)
	}
}

// TestRuncStateBoundedWhenRuncHangs: a runc whose child keeps its output
// open (here a `sleep 8`) does not hold the state query past its bound:
// runcRunning answers an error soon after its context ends. Before, it
// waited for the child.
func TestRuncStateBoundedWhenRuncHangs(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	// A runc whose child keeps its stdout open; the child ends by itself
	// 8 s later.
	hang := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nsleep 8 &\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	m, err := New(Config{Root: t.TempDir(), Namespace: "hang", RuntimeBinary: shimBin, RuncOptions: &runcoptions.Options{BinaryName: hang, Root: root}})
	if err != nil {
		t.Fatal(err)
	}
	// runc keeps a state file for the container: its answer is needed.
	if err := os.MkdirAll(filepath.Join(root, "hang", "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hang", "c1", "state.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	begin := time.Now()
	running, err := m.runcRunning(ctx, "c1")
	took := time.Since(begin)
	if err == nil {
		t.Errorf("runcRunning of a runc that never answered: %v, no error", running)
	}
	if limit := time.Second + waitDelay + 2*time.Second; took > limit {
		t.Errorf("runcRunning took %s, more than %s", took, limit)
	}
}

// TestOpenCanceledIsNotDead: a call whose own context has ended says nothing
// of the shim. Open does not report it dead, and a forced Delete under that
// context neither kills the shim nor removes the container.
func TestOpenCanceledIsNotDead(t *testing.T) {
	m, bundle := newTestManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "cx", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	shimPid := c.ShimPid()
	c.Close()
	defer m.Delete(ctx, "cx", true)
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, err := m.Open(done, "cx"); err == nil || errors.Is(err, ErrShimDead) {
		t.Errorf("Open under a canceled context: %v, want its context's error, not a dead shim", err)
	}
	if _, err := m.Delete(done, "cx", true); err == nil {
		t.Error("Delete under a canceled context succeeded")
	}
	if err := unix.Kill(shimPid, 0); err != nil {
		t.Fatalf("the shim is gone after a Delete whose context was canceled: %v", err)
	}
	info, err := m.Inspect(ctx, "cx")
	if err != nil || info.Status != StatusRunning {
		t.Fatalf("after the canceled Delete: %+v, %v; want running", info, err)
	}
}

// bundleDir makes a directory with a rootfs, name under parent, as an image
// create leaves it.
func bundleDir(t *testing.T, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCleanupImageLeftovers: a `run --image` killed while it unpacked
// leaves its temporary directory under ROOT/bundles/NS, and one killed after
// the rename a bundle with no container; Cleanup removes both, and leaves
// what a create in progress holds locked.
func TestCleanupImageLeftovers(t *testing.T) {
	m := eventsOnlyManager(t)
	parent := filepath.Join(m.Root(), "bundles", m.Namespace())
	mk := func(name string) string { return bundleDir(t, parent, name) }
	unpacking := mk(".killed.123")
	renamed := mk("killed")
	busyTmp := mk(".busy.456")
	busyRenamed := mk("busy")
	fresh := mk(".fresh.789") // made, not yet locked, by a create under way
	for _, dir := range []string{busyTmp, busyRenamed} {
		lk, err := tryLockNew(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lk.unlock)
	}
	past := time.Now().Add(-time.Minute)
	for _, dir := range []string{unpacking, renamed, busyTmp, busyRenamed} {
		if err := os.Chtimes(dir, past, past); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{unpacking, renamed} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left by a killed create: %v", dir, err)
		}
	}
	for _, dir := range []string{busyTmp, busyRenamed, fresh} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s of a create in progress: %v", dir, err)
		}
	}
}

// newBundle makes a bundle as a create does before it places it: a
// temporary directory, locked, holding a file named after the create.
func newBundle(t *testing.T, parent, id, owner string) (string, *stateLock) {
	t.Helper()
	tmp, err := os.MkdirTemp(parent, "."+id+".")
	if err != nil {
		t.Fatal(err)
	}
	lk, err := tryLockNew(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, owner), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return tmp, lk
}

// TestBundlePlaceDuringCleanup: a create of an image container whose place
// holds a leftover bundle that Cleanup has locked to remove gets the place
// once Cleanup is done, not ErrAlreadyExists; a place that another create
// holds is ErrAlreadyExists, soon.
func TestBundlePlaceDuringCleanup(t *testing.T) {
	m := eventsOnlyManager(t)
	parent := filepath.Join(m.Root(), "bundles", m.Namespace())
	mk := func(id string) string { return bundleDir(t, parent, id) }
	defer func(d time.Duration) { leftoverWait = d }(leftoverWait)

	leftoverWait = time.Minute // the test's own pause must not be what ends the wait
	left := mk("left")
	lk, err := tryLockNew(left) // Cleanup's first step
	if err != nil {
		t.Fatal(err)
	}
	tmp, tmpLock := newBundle(t, parent, "left", "new")
	defer tmpLock.unlock()
	placed := make(chan error, 1)
	go func() { placed <- m.placeBundle("left", tmp, left) }()
	select {
	case err := <-placed:
		t.Fatalf("create did not wait for the removal under way: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := removeLocked(left, lk); err != nil {
		t.Fatal(err)
	}
	if err := <-placed; err != nil {
		t.Errorf("create after the leftover's removal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(left, "new")); err != nil {
		t.Errorf("the new bundle in its place: %v", err)
	}

	leftoverWait = 200 * time.Millisecond
	busy := mk("busy")
	held, err := tryLockNew(busy) // a create under way
	if err != nil {
		t.Fatal(err)
	}
	defer held.unlock()
	tmp, tmpLock = newBundle(t, parent, "busy", "new")
	defer tmpLock.unlock()
	begin := time.Now()
	if err := m.placeBundle("busy", tmp, busy); !errdefs.IsAlreadyExists(err) {
		t.Errorf("place held by a create: %v, want already exists", err)
	}
	if took := time.Since(begin); took > 5*leftoverWait {
		t.Errorf("refusal took %v", took)
	}
	if _, err := os.Stat(filepath.Join(busy, "new")); err == nil {
		t.Errorf("a bundle placed over the bundle of a create under way")
	}
}

// TestLockDirMovedAside: a lock file opened before its directory was moved
// aside for removal, and locked after, locks nothing: the lock is refused
// as not found, and a new directory in the old place is not taken for the
// locked one.
func TestLockDirMovedAside(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "c")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	lk, err := tryLockNew(dir)
	if err != nil {
		t.Fatal(err)
	}
	lk.unlock()
	for _, replaced := range []bool{false, true} {
		f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		aside := filepath.Join(parent, ".c.deleted."+randHex(4))
		if err := os.Rename(dir, aside); err != nil {
			t.Fatal(err)
		}
		if replaced {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, lockFile), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if lk, err := lockDir(dir, f); !errdefs.IsNotFound(err) {
			lk.unlock()
			t.Errorf("lock of a directory moved aside (a new one in its place: %v): %v, want not found", replaced, err)
		}
		if err := os.Rename(aside, dir); err != nil && !replaced {
			t.Fatal(err)
		}
	}
}
