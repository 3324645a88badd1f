package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
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

// TestIdleTrimGivesFreePagesBack has the daemon serve a burst of
// connections, lets it go idle past the trim, and reads its memory dump:
// the heap pages the burst left free must have been given back, not kept
// as free pages backed by memory until the runtime's next collections.
func TestIdleTrimGivesFreePagesBack(t *testing.T) {
	bundle := t.TempDir()
	s := startTestShim(t, bundle, filepath.Join(shortTempDir(t), "s"), "c1", nil)
	defer s.shutdown(t, "c1")

	// Each connection costs the daemon its buffers, its goroutines'
	// stacks and the calls' garbage; all of it is free once they close.
	const conns = 128
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
			for range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
				_, err := task.State(ctx, &taskAPI.StateRequest{ID: "nope"})
				cancel()
				if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
					t.Errorf("State of an unknown task: %v, want not found", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// State does not put the trim off (a poll), other calls do: one more,
	// so that the trim comes after the burst, however long it took.
	ctx, cancel := context.WithTimeout(context.Background(), shimCallTimeout)
	_, err := s.task.Pids(ctx, &taskAPI.PidsRequest{ID: "nope"})
	cancel()
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("Pids of an unknown task: %v, want not found", err)
	}
	time.Sleep(idleTrimDelay + 2*time.Second)

	got := readMemoryDump(t, s.pid, bundle)
	free, err := strconv.ParseUint(got["/memory/classes/heap/free:bytes"], 10, 64)
	if err != nil {
		t.Fatalf("heap/free in the dump: %v", err)
	}
	// What the idle daemon frees after the trim comes on top: 0 to 120
	// KiB in five runs; without the trim's collection, 328 to 1304 KiB in
	// three.
	if free > 192<<10 {
		t.Errorf("idle daemon keeps %d KiB of free heap pages backed by memory, want at most 192", free>>10)
	}
	t.Logf("free heap pages backed by memory: %d KiB; forced collections: %s", free>>10, got["/gc/cycles/forced:gc-cycles"])
	if got["/gc/cycles/forced:gc-cycles"] == "0" {
		t.Errorf("the trim forced no collection")
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
