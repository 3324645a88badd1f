package main

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// idleTrimDelay is how long the shim must have served no call before it
// gives memory back (see trimmer).
const idleTrimDelay = 5 * time.Second

// trimmer gives memory back once the shim is idle: the pages of its
// executable that the last burst of calls mapped (dropStartupPages). An idle
// shim is most of a shim's life. (A forced GC with debug.FreeOSMemory was
// measured to raise the shim's private memory, not lower it: left out.)
type trimmer struct {
	mu       sync.Mutex
	timer    *time.Timer // guarded by mu
	lastCall time.Time   // guarded by mu
	inFlight int         // guarded by mu
}

func newTrimmer() *trimmer {
	t := &trimmer{lastCall: time.Now()}
	t.timer = time.AfterFunc(idleTrimDelay, t.trim)
	return t
}

func (t *trimmer) trim() {
	dropStartupPages()
}

// interceptor notes every call served: the trim waits for the shim to be
// idle.
func (t *trimmer) interceptor(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	t.mu.Lock()
	t.inFlight++
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.inFlight--
		t.lastCall = time.Now()
		t.timer.Reset(idleTrimDelay)
		t.mu.Unlock()
	}()
	return m(ctx, u)
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

func (t *trimmer) stop() {
	t.mu.Lock()
	t.timer.Stop()
	t.mu.Unlock()
}

// dropStartupPages gives back the pages of the shim's own executable that
// only starting touched. The kernel maps a binary's pages in 64 KiB runs
// around each fault, so after start-up most of the 14 MB executable is
// mapped although an idle shim runs a small part of it. The read-only
// mappings (code and constant data; never the writable data) are unmapped
// from this process with MADV_DONTNEED: the pages stay in the page cache,
// shared with every other shim, and the few still used come back on first
// touch as minor faults.
func dropStartupPages() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.ContainsRune(fields[1], 'w') {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	}
}
