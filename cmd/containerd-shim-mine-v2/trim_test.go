package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
)

// smapsPIE is the smaps of a shim built with -buildmode=pie (abridged):
// code, constant data, the relocated GNU_RELRO segment (read-only, but with
// private copies of its pages), writable data, and a mapping of another
// file.
const smapsPIE = `55d0c8a00000-55d0c8e4f000 r-xp 00000000 fe:01 1234 /opt/bin/containerd-shim-mine-v2
Size:               4412 kB
Rss:                2108 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me sd
55d0c8e4f000-55d0c9200000 r--p 0044f000 fe:01 1234 /opt/bin/containerd-shim-mine-v2
Size:               3780 kB
Rss:                1900 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd
55d0c9200000-55d0c9260000 r--p 00800000 fe:01 1234 /opt/bin/containerd-shim-mine-v2
Size:                384 kB
Rss:                 384 kB
Anonymous:           384 kB
Swap:                  0 kB
VmFlags: rd mr mw me ac sd
55d0c9260000-55d0c9290000 rw-p 00860000 fe:01 1234 /opt/bin/containerd-shim-mine-v2
Size:                192 kB
Anonymous:            64 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac sd
55d0c9290000-55d0c92a0000 r--p 00000000 fe:01 99 /opt/bin/containerd-shim-mine-v2.old
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                  [stack]
Anonymous:             4 kB
VmFlags: rd wr mr mw me gd ac
`

func TestTrimmableMappings(t *testing.T) {
	maps := exeMappings(strings.NewReader(smapsPIE), "/opt/bin/containerd-shim-mine-v2")
	tests := []struct {
		name      string
		perms     string
		start     uint64
		trimmable bool
	}{
		{name: "code", perms: "r-xp", start: 0x55d0c8a00000, trimmable: true},
		{name: "constant data", perms: "r--p", start: 0x55d0c8e4f000, trimmable: true},
		{name: "relocated GNU_RELRO", perms: "r--p", start: 0x55d0c9200000, trimmable: false},
		{name: "writable data", perms: "rw-p", start: 0x55d0c9260000, trimmable: false},
	}
	if len(maps) != len(tests) {
		t.Fatalf("found %d mappings of the executable, want %d: %+v", len(maps), len(tests), maps)
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := maps[i]
			if m.perms != tc.perms || m.start != tc.start {
				t.Fatalf("mapping %d is %s at %#x, want %s at %#x", i, m.perms, m.start, tc.perms, tc.start)
			}
			if got := m.trimmable(); got != tc.trimmable {
				t.Errorf("trimmable() = %v, want %v (%+v)", got, tc.trimmable, m)
			}
		})
	}
}

func TestTrimKeepsMappingsWithoutFigures(t *testing.T) {
	// A mapping whose Anonymous line is missing or unreadable is kept.
	in := "1000-2000 r-xp 00000000 fe:01 1 /x\nAnonymous: ? kB\n3000-4000 r-xp 00000000 fe:01 1 /x\nRss: 4 kB\n"
	for _, m := range exeMappings(strings.NewReader(in), "/x") {
		if m.trimmable() {
			t.Errorf("mapping %+v without a readable Anonymous figure is trimmable", m)
		}
	}
}

// TestTrimOwnMappings runs the trim in the test binary (built with the
// test's build mode) and checks that it keeps working: the figures are
// parsed from this kernel's smaps.
func TestTrimOwnMappings(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	maps := exeMappings(f, exe)
	f.Close()
	code := 0
	for _, m := range maps {
		if m.anon == unknownKiB {
			t.Errorf("mapping %+v: no Anonymous figure parsed", m)
		}
		if m.perms == "r-xp" && m.trimmable() {
			code++
		}
	}
	if code == 0 {
		t.Fatalf("no trimmable code mapping of %s in smaps: %+v", exe, maps)
	}
	dropCleanExePages()
}

func TestPollingMethods(t *testing.T) {
	for m, want := range map[string]bool{
		"/containerd.task.v3.Task/Stats": true,
		"/containerd.task.v2.Task/State": true,
		"/containerd.task.v3.Task/Exec":  false,
		"/containerd.task.v3.Task/Wait":  false,
		// CRI polls a pod without a pause container through the Sandbox API.
		"/containerd.runtime.sandbox.v1.Sandbox/SandboxMetrics": true,
		"/containerd.runtime.sandbox.v1.Sandbox/SandboxStatus":  true,
		"/containerd.runtime.sandbox.v1.Sandbox/StartSandbox":   false,
	} {
		if got := pollingMethod(m); got != want {
			t.Errorf("pollingMethod(%q) = %v, want %v", m, got, want)
		}
	}
}

func TestCollectWait(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		last time.Time
		want time.Duration
	}{
		{time.Time{}, 0}, // none yet
		{now.Add(-collectEvery - time.Second), 0},
		{now.Add(-collectEvery), 0},
		{now.Add(-collectEvery / 2), collectEvery / 2},
		{now, collectEvery},
	} {
		if got := collectWait(c.last, now, collectEvery); got != c.want {
			t.Errorf("collectWait(now%+v) = %v, want %v", c.last.Sub(now), got, c.want)
		}
	}
}

// The trim reads its own smaps, a line per field of every mapping; parsing
// it must not leave a heap's worth of garbage behind (it allocated about
// 3000 objects, 128 KB, per trim when it split each line into strings).
func TestExeMappingsAllocatesLittle(t *testing.T) {
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(data), "\n"); lines < 500 {
		t.Fatalf("smaps of %d lines: too few to tell", lines)
	}
	var maps []exeMapping
	allocs := testing.AllocsPerRun(10, func() {
		maps = exeMappings(bytes.NewReader(data), exe)
	})
	if len(maps) == 0 {
		t.Fatalf("no mapping of %s found", exe)
	}
	// The scanner's buffer, the result and its permission strings.
	if allocs > 30 {
		t.Errorf("%.0f allocations to read %d mappings of the executable, want at most 30", allocs, len(maps))
	}
}

// A shim whose binary was replaced while it runs (an upgrade) still finds
// its mappings: smaps names them "PATH (deleted)", os.Executable gives PATH.
func TestExeMappingsOfAReplacedExecutable(t *testing.T) {
	smaps := "00400000-006fc000 r-xp 00000000 fe:00 9986103    /opt/my bin/shim (deleted)\n" +
		"Anonymous:             0 kB\n" +
		"Swap:                  0 kB\n" +
		"006fc000-00aa5000 r--p 002fc000 fe:00 9986103    /opt/my bin/shim-other\n" +
		"Anonymous:             0 kB\n"
	maps := exeMappings(strings.NewReader(smaps), "/opt/my bin/shim")
	if len(maps) != 1 || maps[0].start != 0x400000 || maps[0].anon != 0 || maps[0].swap != 0 {
		t.Errorf("mappings %+v, want the one r-xp mapping of /opt/my bin/shim with its figures", maps)
	}
}

func TestSplitFields(t *testing.T) {
	for _, c := range []struct {
		line string
		want []string
	}{
		{"", nil},
		{"   ", nil},
		{"Anonymous:             4 kB", []string{"Anonymous:", "4", "kB"}},
		{"00400000-006fc000 r-xp 00000000 fe:00 9986103    /opt/bin/shim",
			[]string{"00400000-006fc000", "r-xp", "00000000", "fe:00", "9986103", "/opt/bin/shim"}},
		{"00400000-006fc000 r-xp 00000000 fe:00 9986103    /opt/my bin/shim (deleted) ",
			[]string{"00400000-006fc000", "r-xp", "00000000", "fe:00", "9986103", "/opt/my bin/shim (deleted)"}},
		{"7f06e6090000-7f06e6300000 rw-p 00000000 00:00 0", []string{"7f06e6090000-7f06e6300000", "rw-p", "00000000", "00:00", "0"}},
	} {
		var f [6][]byte
		n := splitFields([]byte(c.line), f[:])
		var got []string
		for _, b := range f[:n] {
			got = append(got, string(b))
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
			t.Errorf("splitFields(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

// countingTrimmer starts a trimmer with the given times whose collections
// and drops of the executable's pages are counted, not done.
func countingTrimmer(delay, every time.Duration) (*trimmer, func() (collections, drops int)) {
	var mu sync.Mutex
	var collections, drops int
	tr := startTrimmer(&trimmer{
		delay:       delay,
		every:       every,
		minFree:     1,
		reclaimable: func() uint64 { return 1 << 20 },
		freeOS:      func() { mu.Lock(); collections++; mu.Unlock() },
		dropExe:     func() { mu.Lock(); drops++; mu.Unlock() },
	})
	return tr, func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return collections, drops
	}
}

// callThrough serves one call of method through tr's interceptor.
func callThrough(t *testing.T, tr *trimmer, method string) {
	t.Helper()
	_, err := tr.interceptor(context.Background(), func(any) error { return nil },
		&ttrpc.UnaryServerInfo{FullMethod: method},
		func(context.Context, func(any) error) (any, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
}

// callFor serves calls of method through tr's interceptor, gap apart, for d.
func callFor(t *testing.T, tr *trimmer, method string, d, gap time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(gap) {
		callThrough(t, tr, method)
	}
}

// Under polling alone a shim keeps checking its heap after its trim, every
// collectEvery: the polls go on leaving garbage and free pages that only a
// collection gives back (before, nothing came after the first trim, and a
// polled shim's private memory grew from 3.6 to 4.3 MiB between its first
// and fifth minute). Every check drops the executable's pages again
// (before, only the first trim of an idle spell did, and a polled shim
// kept the pages that the minute's collections and timers had mapped): a
// check that collects has dropped them too. A stopped trimmer does nothing
// more.
func TestTrimKeepsCollectingUnderPolling(t *testing.T) {
	tr, counts := countingTrimmer(20*time.Millisecond, 60*time.Millisecond)
	defer tr.stop()
	callFor(t, tr, "/containerd.task.v3.Task/Stats", 600*time.Millisecond, 5*time.Millisecond)
	// The trim at 20 ms, then a check every 60 ms: about 10 of each.
	c, d := counts()
	if c < 3 || d < c {
		t.Fatalf("600 ms of polls: %d collections and %d drops of the executable's pages, want at least 3 collections and a drop with each", c, d)
	}
	tr.stop() // waits for a trim already running
	c, d = counts()
	time.Sleep(200 * time.Millisecond)
	if c2, d2 := counts(); c2 != c || d2 != d {
		t.Errorf("a stopped trimmer went on: %d -> %d collections, %d -> %d drops", c, c2, d, d2)
	}
}

// Polls neither bring a trim nor postpone one; a call that does work brings
// the next trim idleTrimDelay after it, long before the next heap check.
func TestWorkAfterPollingTrimsAgain(t *testing.T) {
	tr, counts := countingTrimmer(20*time.Millisecond, 10*time.Second)
	defer tr.stop()
	waitDrops := func(want int, why string) {
		t.Helper()
		for end := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, d := counts(); d >= want {
				return
			}
			if time.Now().After(end) {
				_, d := counts()
				t.Fatalf("%d drops of the executable's pages within 2 s %s, want %d", d, why, want)
			}
		}
	}
	waitDrops(1, "of the start")
	callFor(t, tr, "/containerd.task.v3.Task/Stats", 100*time.Millisecond, 5*time.Millisecond)
	if _, d := counts(); d != 1 {
		t.Fatalf("%d drops after 100 ms of polls, want still 1: polls do not trim", d)
	}
	callThrough(t, tr, "/containerd.task.v3.Task/Exec")
	waitDrops(2, "of a call that did work")
}

// A trim that finds a call that did work ended less than the delay ago
// (it ended after the timer fired, and has set the timer for the trim due
// after it), or the trimmer stopped, does nothing: before 2cf2a9a the first
// replaced the call's re-arm with a check a minute away, and both still
// collected and dropped the executable's pages.
func TestTrimAfterLateWorkOrStopDoesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(tr *trimmer)
	}{
		{"late call", func(tr *trimmer) {
			tr.mu.Lock()
			tr.lastWork = time.Now()
			tr.mu.Unlock()
		}},
		{"stopped", func(tr *trimmer) { tr.stop() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var collections, drops int
			tr := startTrimmer(&trimmer{
				delay:       time.Hour, // the timer never fires: trim is called below
				every:       time.Hour,
				minFree:     1,
				reclaimable: func() uint64 { return 1 << 20 },
				freeOS:      func() { collections++ },
				dropExe:     func() { drops++ },
			})
			defer tr.stop()
			tc.setup(tr)
			tr.trim()
			if collections != 0 || drops != 0 {
				t.Errorf("the trim collected %d times and dropped pages %d times, want nothing", collections, drops)
			}
		})
	}
}

// A shim that never stays idle for the delay, as one whose container kubelet
// probes every few seconds, is trimmed once every `every` while it works,
// and once more when it stops. Before, every call that did work pushed the
// trim back, and such a shim was never trimmed.
func TestTrimWhileBusy(t *testing.T) {
	tr, counts := countingTrimmer(50*time.Millisecond, 100*time.Millisecond)
	defer tr.stop()
	callFor(t, tr, "/containerd.task.v3.Task/Exec", 650*time.Millisecond, 10*time.Millisecond)
	// A trim every 100 ms of work: about 6.
	c, d := counts()
	if c < 3 || d < 3 {
		t.Fatalf("650 ms of calls 10 ms apart: %d collections and %d drops of the executable's pages, want at least 3 of each", c, d)
	}
	// A trim follows the last call (the busy one, if it came after it, or
	// the idle spell's).
	trimmedSince := func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.trimmed
	}
	for end := time.Now().Add(2 * time.Second); !trimmedSince(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no trim within 2 s of the last call")
		}
	}
}

// The first call that does work after an idle spell starts the minute of
// work that brings a trim while busy, whatever the idle spell's heap
// checks did: a burst that begins just before a check is not trimmed in
// its middle.
func TestTrimWhileBusyCountsFromTheFirstWork(t *testing.T) {
	tr := startTrimmer(&trimmer{
		delay:       5 * time.Second, // the test ends before the timer fires
		every:       time.Minute,
		minFree:     1,
		reclaimable: func() uint64 { return 0 },
		freeOS:      func() {},
		dropExe:     func() {},
	})
	defer tr.stop()
	tr.mu.Lock()
	start := time.Now().Add(-10 * time.Minute)
	tr.busySince, tr.trimmed = start, true // trimmed and idle since
	tr.mu.Unlock()
	callThrough(t, tr, "/containerd.task.v3.Task/Exec")
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !tr.busySince.After(start) {
		t.Errorf("busy since %v after the first work call, want now", tr.busySince)
	}
	if d := tr.nextTrim(tr.lastCall); d != 5*time.Second {
		t.Errorf("next trim %v after the first work call, want the delay", d)
	}
}

// The GC target is set once: after the first Start call (of the Task API
// or a sandbox; a poll or a create does not), or at the first trim when no
// Start came.
func TestTightenGCAfterFirstStart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		calls []string
		want  int // tightenings before any trim
	}{
		{"start", []string{"/containerd.task.v3.Task/Create", "/containerd.task.v3.Task/Start", "/containerd.task.v2.Task/Start"}, 1},
		{"sandbox", []string{"/containerd.runtime.sandbox.v1.Sandbox/StartSandbox"}, 1},
		{"no start", []string{"/containerd.task.v3.Task/Create", "/containerd.task.v3.Task/Stats", "/containerd.task.v3.Task/State"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &trimmer{
				delay:       time.Hour,
				every:       time.Hour,
				minFree:     1,
				reclaimable: func() uint64 { return 0 },
				freeOS:      func() {},
				dropExe:     func() {},
			}
			var n atomic.Int32
			tr.tightenGC = sync.OnceFunc(func() { n.Add(1) })
			startTrimmer(tr)
			defer tr.stop()
			for _, m := range tc.calls {
				callThrough(t, tr, m)
			}
			if got := int(n.Load()); got != tc.want {
				t.Fatalf("tightened %d times before any trim, want %d", got, tc.want)
			}
			tr.mu.Lock()
			tr.lastWork = time.Now().Add(-2 * tr.delay) // idle long enough
			tr.mu.Unlock()
			tr.trim()
			if got := n.Load(); got != 1 {
				t.Fatalf("tightened %d times after a trim, want 1", got)
			}
		})
	}
}

// The trim after a burst that created a container collects even when the
// last collection is less than collectEvery old; one after other work (an
// exec, as probes make) or after a failed create waits for its ration.
func TestTrimCollectsAfterACreate(t *testing.T) {
	tr, counts := countingTrimmer(20*time.Millisecond, time.Hour)
	defer tr.stop()
	waitCounts := func(wantC, wantD int, why string) {
		t.Helper()
		for end := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			c, d := counts()
			if c == wantC && d >= wantD {
				return
			}
			if c > wantC || time.Now().After(end) {
				t.Fatalf("%s: %d collections and %d drops, want %d and at least %d", why, c, d, wantC, wantD)
			}
		}
	}
	waitCounts(1, 1, "the first trim")
	callThrough(t, tr, "/containerd.task.v3.Task/Exec")
	waitCounts(1, 2, "after an exec")
	failed := errors.New("create failed")
	if _, err := tr.interceptor(context.Background(), func(any) error { return nil },
		&ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v3.Task/Create"},
		func(context.Context, func(any) error) (any, error) { return nil, failed }); err != failed {
		t.Fatalf("failed create: %v", err)
	}
	waitCounts(1, 3, "after a failed create")
	callThrough(t, tr, "/containerd.task.v3.Task/Create")
	waitCounts(2, 4, "after a create")
	callThrough(t, tr, "/containerd.task.v3.Task/Start")
	waitCounts(2, 5, "after a start")
	time.Sleep(100 * time.Millisecond) // no further trim comes by itself before the hour
	if c, _ := counts(); c != 2 {
		t.Fatalf("%d collections, want 2", c)
	}
}

// The trimmer's interceptor allocates nothing for a call containerd polls.
func TestTrimInterceptorAllocatesNothing(t *testing.T) {
	tr, _ := countingTrimmer(time.Hour, time.Hour)
	defer tr.stop()
	if n := statsCallAllocs(tr.interceptor); n > 0 {
		t.Errorf("a Stats call allocates %v times in the interceptor, want 0", n)
	}
}
