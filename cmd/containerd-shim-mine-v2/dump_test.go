package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
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
