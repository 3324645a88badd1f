package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// idleTrimDelay is how long the shim must have served no call that does
// work before it gives memory back (see trimmer).
const idleTrimDelay = 5 * time.Second

// trimmer gives memory back once the shim has done no work for a while:
// the heap pages that the last burst of calls left free (collect) and the
// pages of its executable that it mapped (dropCleanExePages). An idle shim
// is most of a shim's life. Polling calls (Stats, State) do not postpone
// the trim: containerd's CRI calls Stats of every container once a second,
// and without this the trim would never engage on a Kubernetes node; what a
// poll needs is mapped back on its first call after a trim.
//
// After a trim the shim checks its heap every collectEvery until a call
// that does work comes: the polls go on leaving garbage and free pages,
// which only a collection gives back. Every check drops the executable's
// pages again: the next poll maps back the part it runs, but not what the
// minute's collections, timers and checks mapped: 0.3 to 1 MiB of a
// polled shim's RSS (docs/BENCHMARKS.md, 24). A drop costs about 0.5 ms
// of CPU; every trim drops, which for a shim that is only polled is once
// a minute.
//
// A shim that is never idle for idleTrimDelay (kubelet's exec probes every
// few seconds, say) is trimmed once every collectEvery all the same, while
// it works: without this it would keep the garbage, the free pages and the
// executable's pages of every call until it stopped working.
type trimmer struct {
	// What a trim waits for and does, set by newTrimmer (idleTrimDelay,
	// collectEvery, collectMinFree, heapReclaimable, debug.FreeOSMemory,
	// dropCleanExePages); tests shorten the times and count the actions.
	delay       time.Duration
	every       time.Duration
	minFree     uint64
	reclaimable func() uint64
	freeOS      func()
	dropExe     func()
	// tightenGC sets the daemon's GC target (gcPercent) once: after its
	// first container has started, or at its first trim. Nil: the
	// environment set GOGC, and the runtime obeys it from the start.
	tightenGC func()

	running sync.Mutex // held by a trim while it runs: stop waits for it

	mu          sync.Mutex
	timer       *time.Timer // guarded by mu
	lastCall    time.Time   // guarded by mu
	lastWork    time.Time   // guarded by mu: when the last call that did work ended
	busySince   time.Time   // guarded by mu: when the first call that did work since the last trim ended (or the trimmer started)
	inFlight    int         // guarded by mu
	lastCollect time.Time   // guarded by mu; zero: none yet
	grown       bool        // guarded by mu: a container was created since the last collection
	trimmed     bool        // guarded by mu: no call that does work since the last trim
	stopped     bool        // guarded by mu: no trim re-arms the timer
}

// collectMinFree is how much free heap still backed by memory, or garbage,
// makes the trim force a collection that gives it back
// (debug.FreeOSMemory). An idle shim's last collection comes during its
// burst of calls, and the runtime's scavenger returns only what exceeds the
// goal that collection set, so what the burst left free stays; the
// runtime's own collection, every 2 minutes when idle, did not return it
// all. Group shims of 50 containers kept 0.22 to 0.71 MiB less Pss_Anon
// with the forced collection; an idle shim of one container, which holds
// about 140 KiB free, has little to gain (docs/BENCHMARKS.md, 19).
const collectMinFree = 256 << 10

// collectEvery is the least time between two collections the trim forces,
// but for the first after a container's creation (see collect).
// One cost the daemon 1.7 to 3.6 ms of CPU, the collection and the
// released pages that the next calls take back (two runs of an exec every
// 7 s, each followed by a trim), and kubelet's exec probes end a burst of
// calls every 10 s by default: at most one a minute, such a shim spent no
// more CPU than without any (docs/BENCHMARKS.md, 19).
const collectEvery = time.Minute

// gcPercent is the daemon's GOGC when the environment sets none. The Go
// runtime's default (100) lets the heap grow to 4 MiB before its first
// collection; a shim's live heap is a few hundred KiB, so most of that is
// garbage kept as private memory in every shim. Measured in
// docs/BENCHMARKS.md ("GC settings").
//
// The daemon sets it only once its first container has started (or at
// its first trim, whichever comes first): with 25 from its start, the
// minimum heap target is 1 MiB, and the daemon's start-up and the
// container's create and start (about 1 MB of allocations) ran two
// collections on the path of every container's start (docs/BENCHMARKS.md,
// 25).
const gcPercent = 25

// daemonProcs caps the daemon's GOMAXPROCS when the environment sets none
// (containerd starts every shim with GOMAXPROCS=2; a shim started by
// anything else would get one P per CPU of the node, each with its own span
// and stack caches and threads). Not lower: with one P, the OOM loop,
// woken from epoll_wait, waits behind whatever goroutine holds the P, up to
// the scheduler's 10 ms time slice: the OOM step alone gave a p50 of
// 1.46 ms from the kill to /tasks/oom with one P, 0.99 with two (four
// rounds each). (The full test run with one P lost an
// OOMKilled in the systemd VM; the cause was a scope removed with its kill
// counter before the shim read it, which any P count can meet and which
// pkg/oom now covers through the kernel log.) Measured in
// docs/BENCHMARKS.md ("8. Processors of the daemon").
const daemonProcs = 2

// newTrimmer sets the daemon's memory policy (GC target, processors, idle
// trim) and returns the trimmer, whose interceptor must see every call.
func newTrimmer() *trimmer {
	var tighten func()
	if _, ok := os.LookupEnv("GOGC"); !ok {
		tighten = sync.OnceFunc(func() { debug.SetGCPercent(gcPercent) })
	}
	if _, ok := os.LookupEnv("GOMAXPROCS"); !ok {
		runtime.GOMAXPROCS(min(daemonProcs, runtime.NumCPU()))
	}
	return startTrimmer(&trimmer{
		delay:       idleTrimDelay,
		every:       collectEvery,
		minFree:     collectMinFree,
		reclaimable: heapReclaimable,
		freeOS:      debug.FreeOSMemory,
		dropExe:     dropCleanExePages,
		tightenGC:   tighten,
	})
}

// startTrimmer arms t's timer for its first trim.
func startTrimmer(t *trimmer) *trimmer {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastCall = time.Now()
	t.busySince = t.lastCall
	t.timer = time.AfterFunc(t.delay, t.trim)
	return t
}

// trim runs when the timer fires: idleTrimDelay after the last call that
// did work, then every collectEvery (or when a postponed collection is
// due) until the next such call; and, while calls that do work keep
// coming, once the shim has worked for collectEvery since its first such
// call after the last trim (busySince). A call that
// does work and is in flight resets the timer again when it ends; a poll
// in flight (CRI's Stats, often) does not, so the timer always comes back
// by itself.
func (t *trimmer) trim() {
	t.running.Lock()
	defer t.running.Unlock()
	t.mu.Lock()
	now := time.Now()
	idle := now.Sub(t.lastWork) >= t.delay
	if t.stopped || !idle && now.Sub(t.busySince) < t.every {
		// Stopped; or a call that did work ended less than the delay
		// ago, and the shim has not been working for collectEvery: that
		// call has set the timer for the trim due after it (or this is
		// the run its reset started, just after a trim).
		t.mu.Unlock()
		return
	}
	t.trimmed = true
	t.mu.Unlock()
	if t.tightenGC != nil {
		t.tightenGC()
	}
	next := t.collect(now)
	t.dropExe()
	t.mu.Lock()
	// A call that did work meanwhile has set the timer for the next trim.
	if !t.stopped && t.trimmed {
		if !idle {
			// Trimmed while working: the trim of the idle spell is
			// still due after the last call.
			next = min(next, max(t.lastWork.Add(t.delay).Sub(time.Now()), 0))
		}
		t.timer.Reset(next)
	}
	t.mu.Unlock()
}

// nextTrim is how long after a call that did work, ended at end, the
// timer fires: idleTrimDelay, or sooner if the shim has been working
// without a trim for collectEvery by then.
func (t *trimmer) nextTrim(end time.Time) time.Duration {
	return min(t.delay, max(t.busySince.Add(t.every).Sub(end), 0))
}

// collect forces a collection that gives the free heap back when enough is
// free and the last one is at least collectEvery old, or a container was
// created since, and returns when to check again: when a collection is due,
// if enough is free but the last one is too recent.
//
// The ration of one a minute is for a shim that keeps working without
// growing (exec probes end a burst of calls every few seconds). A burst
// that created a container is rare, and leaves the garbage of its
// creation and a larger heap: without the exception, the memory of the
// containers of a pod started within a minute of the shim's first trim
// stayed until that minute was out (a group of 50 containers with stdout
// and stderr read 64 to 68 KiB per container until then, 52 to 55 after;
// docs/BENCHMARKS.md, 37).
func (t *trimmer) collect(now time.Time) time.Duration {
	if t.reclaimable() < t.minFree {
		return t.every
	}
	t.mu.Lock()
	if wait := collectWait(t.lastCollect, now, t.every); wait > 0 && !t.grown {
		t.mu.Unlock()
		return max(wait, t.delay)
	}
	t.lastCollect = now
	t.grown = false
	t.mu.Unlock()
	t.freeOS()
	return t.every
}

// collectWait is how long until the trim may force a collection again, the
// last one forced at last (zero: none yet).
func collectWait(last, now time.Time, every time.Duration) time.Duration {
	if last.IsZero() {
		return 0
	}
	return max(last.Add(every).Sub(now), 0)
}

// heapReclaimable estimates what a forced collection would give back: the
// free heap still backed by memory, and the heap's objects that the last
// collection did not find live (garbage since then, freed by the next).
func heapReclaimable() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return 0
		}
	}
	free, objects, live := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	if objects > live {
		free += objects - live
	}
	return free
}

// startMethod tells the calls that start a container's init or an exec
// (the Task API's Start, v2 and v3), or a sandbox.
func startMethod(fullMethod string) bool {
	switch path.Base(fullMethod) {
	case "Start", "StartSandbox":
		return true
	}
	return false
}

// createMethod tells the calls that create a container (the Task API's
// Create, v2 and v3) or a sandbox.
func createMethod(fullMethod string) bool {
	switch path.Base(fullMethod) {
	case "Create", "CreateSandbox":
		return true
	}
	return false
}

// pollingMethod tells the calls that read state periodically from the
// calls that change it: containerd's CRI reads every task's Stats, and
// every sandbox's SandboxMetrics, once a second; kubelet's status checks
// read State and SandboxStatus.
func pollingMethod(fullMethod string) bool {
	switch path.Base(fullMethod) {
	case "Stats", "State", "SandboxMetrics", "SandboxStatus":
		return true
	}
	return false
}

// interceptor notes every call served: the trim waits for the shim to have
// done no work for idleTrimDelay (or to have worked for collectEvery
// without one), the orphan check for it to have been called by no one.
func (t *trimmer) interceptor(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	polling := pollingMethod(info.FullMethod)
	t.mu.Lock()
	t.inFlight++
	t.mu.Unlock()
	if t.tightenGC != nil && startMethod(info.FullMethod) {
		defer t.tightenGC()
	}
	created := false
	defer func() {
		t.mu.Lock()
		t.inFlight--
		t.lastCall = time.Now()
		t.grown = t.grown || created
		if !polling {
			t.lastWork = t.lastCall
			if t.trimmed { // the first work since the last trim
				t.busySince = t.lastCall
			}
			t.trimmed = false
			if !t.stopped {
				t.timer.Reset(t.nextTrim(t.lastCall))
			}
		}
		t.mu.Unlock()
	}()
	resp, err := m(ctx, u)
	created = err == nil && createMethod(info.FullMethod)
	return resp, err
}

// idleFor reports how long no call has been served (0 while one is).
func (t *trimmer) idleFor() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inFlight > 0 {
		return 0
	}
	return time.Since(t.lastCall)
}

// stop disarms the trimmer and waits for a trim that is running.
func (t *trimmer) stop() {
	t.mu.Lock()
	t.stopped = true
	t.timer.Stop()
	t.mu.Unlock()
	t.running.Lock() // a trim that is running ends first
	t.running.Unlock()
}

// exeMapping is one mapping of a process's smaps.
type exeMapping struct {
	start, end uint64
	perms      string // "r-xp"
	anon, swap uint64 // KiB of private copies (Anonymous) and of swapped pages (Swap)
}

// unknownKiB marks a field smaps did not give: such a mapping is kept.
const unknownKiB = ^uint64(0)

// trimmable tells whether dropping the pages of m loses nothing: a private
// mapping that cannot be written, and holds no page that differs from the
// file (no Anonymous page, nothing swapped out). Code and constant data
// qualify; a PIE's GNU_RELRO segment does not: the dynamic loader
// relocated its pages, then made them read-only, and dropping them would
// bring back the unrelocated bytes of the file.
func (m exeMapping) trimmable() bool {
	return len(m.perms) == 4 && m.perms[1] != 'w' && m.perms[3] == 'p' && m.anon == 0 && m.swap == 0
}

// dropCleanExePages gives back the pages of the shim's own executable that
// only starting and past calls touched. The kernel maps a binary's pages in
// runs around each fault, so after start-up much of the executable is
// mapped although an idle shim runs a small part of it. The mappings that
// still equal the file (see trimmable) are unmapped from this process with
// MADV_DONTNEED: the pages stay in the page cache, shared with every other
// shim, and the few still used come back on first touch as minor faults.
func dropCleanExePages() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return
	}
	maps := exeMappings(f, exe)
	f.Close()
	for _, m := range maps {
		if m.trimmable() {
			_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED)
		}
	}
}

// exeMappings returns the mappings of file exe in the smaps text r.
func exeMappings(r io.Reader, exe string) []exeMapping {
	var out []exeMapping
	var cur *exeMapping
	var f [6][]byte
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// Bytes and fields, not strings: smaps has a line per field of
		// every mapping, some 1500 lines, and the trim's own garbage would
		// stay in the heap it has just trimmed.
		n := splitFields(sc.Bytes(), f[:])
		if n == 0 {
			continue
		}
		if lo, hi, ok := bytes.Cut(f[0], []byte("-")); ok && n >= 5 {
			// A mapping's header: start-end perms offset dev inode [path]
			cur = nil
			start, err1 := strconv.ParseUint(string(lo), 16, 64)
			end, err2 := strconv.ParseUint(string(hi), 16, 64)
			// A replaced executable's mappings name it "PATH (deleted)";
			// os.Executable gives PATH.
			if err1 != nil || err2 != nil || end <= start || n < 6 || string(bytes.TrimSuffix(f[5], []byte(" (deleted)"))) != exe {
				continue
			}
			out = append(out, exeMapping{start: start, end: end, perms: string(f[1]), anon: unknownKiB})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil || n < 2 {
			continue
		}
		anon, swap := string(f[0]) == "Anonymous:", string(f[0]) == "Swap:"
		if !anon && !swap {
			continue
		}
		v, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			v = unknownKiB
		}
		if swap {
			cur.swap = v
		} else {
			cur.anon = v
		}
	}
	return out
}

// splitFields splits line at runs of spaces and tabs into dst, the last
// field taking the rest of the line (a path may hold spaces), and returns
// how many it filled.
func splitFields(line []byte, dst [][]byte) int {
	n := 0
	for n < len(dst) {
		line = bytes.TrimLeft(line, " \t")
		if len(line) == 0 {
			break
		}
		if n == len(dst)-1 {
			dst[n] = bytes.TrimRight(line, " \t")
			return n + 1
		}
		end := bytes.IndexAny(line, " \t")
		if end < 0 {
			end = len(line)
		}
		dst[n], line = line[:end], line[end:]
		n++
	}
	return n
}
