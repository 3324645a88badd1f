package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// TestDumpStacksGrowsItsBuffer parks enough goroutines that their stacks do
// not fit the dump's first buffer, and checks that the file holds every one
// of them under its count, and that no temporary file is left beside it.
func TestDumpStacksGrowsItsBuffer(t *testing.T) {
	const parked = 1500 // a few hundred bytes of text each: well over 64 KiB
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range parked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
		}()
	}
	defer func() {
		close(release)
		wg.Wait()
	}()

	dir := t.TempDir()
	path := filepath.Join(dir, stacksFile)
	if err := dumpStacks(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) <= 64<<10 {
		t.Fatalf("dump of %d bytes fits the first buffer: the test does not reach the growth", len(data))
	}
	first, rest, _ := strings.Cut(string(data), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutines "))
	if err != nil {
		t.Fatalf("first line %q: %v", first, err)
	}
	if n < parked {
		t.Errorf("count %d, want at least %d", n, parked)
	}
	// Goroutines may start or end between the count and the dump (the
	// test runner's), a few at most.
	if got := strings.Count(rest, "\ngoroutine "); got < parked || got > n+5 {
		t.Errorf("%d stacks in the dump, want %d to %d", got, parked, n+5)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files beside the dump: %v, want only %s", names, stacksFile)
	}
}

// TestDumpStacksAllocatesLittle: a dump of a few goroutines' stacks must
// not leave a large buffer behind in the heap (it allocated 1 MiB, and a
// copy of the dump, whatever the dump's size).
func TestDumpStacksAllocatesLittle(t *testing.T) {
	path := filepath.Join(t.TempDir(), stacksFile)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := dumpStacks(path); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 256<<10 {
		t.Errorf("a stacks dump of %d goroutines allocated %d KiB, want at most 256", runtime.NumGoroutine(), got>>10)
	}
}

// TestIdleTrimGivesFreePagesBack has the daemon serve a burst of
// connections, lets it go idle past the trim, and reads its memory dump
// before and after: the trim must have forced a collection and given back
// the heap the burst left free, rather than keep it backed by memory until
// the runtime's next collections.
func TestIdleTrimGivesFreePagesBack(t *testing.T) {
	bundle := t.TempDir()
	s := startTestShim(t, bundle, filepath.Join(shortTempDir(t), "s"), "c1", nil)
	defer s.shutdown(t, "c1")

	// Each connection costs the daemon its buffers, its goroutines'
	// stacks and the calls' garbage; all of it is free once they close.
	// Pids is a call that does work (State would be a poll): each one
	// puts the trim off, so that it comes after the burst, however long
	// the burst takes.
	const conns = 256
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("unix", s.path, shimCallTimeout)
			if err != nil {
				t.Error(err)
				return
			}
			c := ttrpc.NewClient(conn)
			defer c.Close()
			task := taskAPI.NewTTRPCTaskClient(c)
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
				_, err := task.Pids(ctx, &taskAPI.PidsRequest{ID: "nope"})
				cancel()
				if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
					t.Errorf("Pids of an unknown task: %v, want not found", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	burstEnd := time.Now()
	if t.Failed() {
		return
	}
	// The burst ends with the last Pids; the trim comes idleTrimDelay
	// after it. Then either it forced a collection, or the runtime had
	// already given back enough on its own that less than collectMinFree
	// was left to reclaim. Without the trim's collection the daemon still
	// held 344 to 984 KiB free a second after the trim (three runs); with
	// it, three runs of five forced a collection and the other two held
	// 56 and 136 KiB. The free heap is judged at the first reading, a
	// second after the trim is due: every dump allocates, and later ones
	// would lower it without any trim. A loaded machine may run the trim
	// late, so its collection is looked for again until shortly before the
	// daemon, which serves no container, ends for being idle.
	time.Sleep(time.Until(burstEnd.Add(idleTrimDelay + time.Second)))
	after := readMemoryDump(t, s.pid, bundle)
	left, err := strconv.ParseUint(after["/memory/classes/heap/free:bytes"], 10, 64)
	if err != nil {
		t.Fatalf("heap/free in the dump: %v", err)
	}
	forced := after["/gc/cycles/forced:gc-cycles"]
	for deadline := burstEnd.Add(orphanTimeout - time.Second); forced == "0" && left > collectMinFree && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		forced = readMemoryDump(t, s.pid, bundle)["/gc/cycles/forced:gc-cycles"]
	}
	t.Logf("after the trim: %d KiB free heap backed by memory, %s forced collections", left>>10, forced)
	if forced == "0" && left > collectMinFree {
		t.Errorf("the trim forced no collection and left %d KiB of free heap backed by memory, want a collection or at most %d KiB",
			left>>10, collectMinFree>>10)
	}
}

// readMemoryDump makes the daemon pid write its memory dump in bundle
// (SIGUSR1) and returns it by name.
func readMemoryDump(t *testing.T, pid int, bundle string) map[string]string {
	t.Helper()
	stacks := filepath.Join(bundle, stacksFile)
	_ = os.Remove(stacks)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(stacks); err == nil {
			break // the memory file is written first
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s from the daemon within 10s of SIGUSR1", stacksFile)
		}
		time.Sleep(10 * time.Millisecond)
	}
	data, err := os.ReadFile(filepath.Join(bundle, memoryFile))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		k, v, _ := strings.Cut(l, " ")
		got[k] = v
	}
	return got
}
