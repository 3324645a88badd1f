//go:build linux

package oom

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"
)

// testTimeout bounds every wait of the tests. Generous: the cgroup v2 tests
// also run in a software-emulated VM.
const testTimeout = 2 * time.Minute

// recorder is a notify func that keeps every Event.
type recorder struct {
	mu     sync.Mutex
	events []Event // guarded by mu
	ch     chan Event
}

func newRecorder() *recorder {
	return &recorder{ch: make(chan Event, 4096)}
}

func (r *recorder) notify(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	select {
	case r.ch <- ev:
	default:
	}
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.events {
		if ev.ID == id {
			n++
		}
	}
	return n
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// perID returns how many events each id got.
func (r *recorder) perID() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int)
	for _, ev := range r.events {
		m[ev.ID]++
	}
	return m
}

// wait receives n events, failing the test after testTimeout.
func (r *recorder) wait(t testing.TB, n int) {
	t.Helper()
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for i := 0; i < n; i++ {
		select {
		case <-r.ch:
		case <-timer.C:
			t.Fatalf("got %d of %d events after %v", i, n, testTimeout)
		}
	}
}

// polled is an afterPoll hook that hands the loop's readings to the test.
type polled struct {
	id    string
	kills uint64
	gone  bool
}

type pollLog struct {
	ch chan polled
}

func newPollLog() *pollLog { return &pollLog{ch: make(chan polled, 4096)} }

func (p *pollLog) afterPoll(id string, kills uint64, gone bool) {
	select {
	case p.ch <- polled{id: id, kills: kills, gone: gone}:
	default:
	}
}

// waitFor returns the first reading of id that match accepts.
func (p *pollLog) waitFor(t testing.TB, id string, match func(polled) bool) polled {
	t.Helper()
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for {
		select {
		case got := <-p.ch:
			if got.id == id && match(got) {
				return got
			}
		case <-timer.C:
			t.Fatalf("the loop did not read %s after %v", id, testTimeout)
		}
	}
}

// fakeV2 is a directory with a memory.events file, standing for a cgroup v2.
// The file is rewritten in place with fixed-width numbers, so that the loop
// never reads a truncated file.
type fakeV2 struct {
	t        testing.TB
	cg       CgroupPath
	counters [6]uint64 // low high max oom oom_kill oom_group_kill
}

var fakeKeys = [6]string{"low", "high", "max", "oom", "oom_kill", "oom_group_kill"}

const (
	fakeMax     = 2
	fakeOOM     = 3
	fakeOOMKill = 4
)

func newFakeV2(t testing.TB, dir string) *fakeV2 {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &fakeV2{t: t, cg: CgroupPath{Version: 2, Dir: dir}}
	f.write()
	return f
}

func (f *fakeV2) content() []byte {
	var b []byte
	for i, k := range fakeKeys {
		b = fmt.Appendf(b, "%s %010d\n", k, f.counters[i])
	}
	return b
}

// bump adds n to the counters at the given indexes and writes the file once.
func (f *fakeV2) bump(n uint64, idx ...int) {
	f.t.Helper()
	for _, i := range idx {
		f.counters[i] += n
	}
	f.write()
}

func (f *fakeV2) write() {
	f.t.Helper()
	file, err := os.OpenFile(filepath.Join(f.cg.Dir, eventsFile), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.WriteAt(f.content(), 0); err != nil {
		f.t.Fatal(err)
	}
}

// fdCount returns the number of open fds of this process.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// openFDs lists the targets of the open fds, for leak reports.
func openFDs() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+" -> "+target)
	}
	sort.Strings(out)
	return out
}

// waitGoroutines waits until at most n goroutines run: an ended goroutine
// can be counted for a moment after it signalled its end.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// closeWithin closes w, failing the test if Close takes longer than d.
func closeWithin(t testing.TB, w *Watcher, d time.Duration) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- w.Close() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-errc:
		return err
	case <-timer.C:
		t.Fatalf("Close did not return within %v", d)
		return nil
	}
}
