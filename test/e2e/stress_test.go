package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// stressCycles is the number of exec cycles of TestExecStressMixed:
// MINE_E2E_STRESS_CYCLES, or 40 in an ordinary run. `make test-stress` runs
// 500 against a shim built with the race detector.
func stressCycles(t *testing.T) int {
	t.Helper()
	v := os.Getenv("MINE_E2E_STRESS_CYCLES")
	if v == "" {
		return 40
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("MINE_E2E_STRESS_CYCLES=%q is not a positive number", v)
	}
	return n
}

// shimZombies counts the exited children of pid that nobody reaped.
func shimZombies(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}

// Exec cycles that mix what has wedged or leaked shims before: stdin the
// process never reads, background children that keep stdout after the exec
// exits, terminals resized while they close, and kills. At the end the
// shim's descriptors, goroutines and unreaped children are where they were.
func TestExecStressMixed(t *testing.T) {
	h := requireHarness(t)
	cycles := stressCycles(t)
	const slack = 5
	id := newID(t)
	c := h.startHost(t, h.runtime, id, discardIO(), oci.WithProcessArgs(sleeper...))
	shim := h.shimPID(t, c.ns, c.id)
	bundle := h.bundleDir(c.ns, c.id)
	countGoroutines := h.runtime == runtimeMine

	cycle := func(i int) error {
		ctx, cancel := context.WithTimeout(c.base(), execTimeout)
		defer cancel()
		eid := execID("mix", i)
		var (
			ioc  cio.Creator
			tty  bool
			args []string
		)
		switch i % 4 {
		case 0: // stdin never read
			ioc = cio.NewCreator(cio.WithStreams(bytes.NewReader(make([]byte, unreadStdin)), io.Discard, io.Discard))
			args = []string{"true"}
		case 1: // a background child keeps stdout after the exit
			ioc = discardIO()
			args = []string{"sh", "-c", "sleep 1 & echo x"}
		case 2: // a terminal resized while it runs and closes
			ioc = cio.NewCreator(cio.WithStreams(nil, io.Discard, nil), cio.WithTerminal)
			tty = true
			args = []string{"sh", "-c", "sleep 0.05"}
		case 3: // killed
			ioc = discardIO()
			args = []string{"sleep", "100"}
		}
		p, exitC, err := c.startExec(ctx, ctx, eid, c.execSpec(tty, args...), ioc)
		if err != nil {
			return err
		}
		switch i % 4 {
		case 2:
			for w := uint32(0); w < 20; w++ {
				if err := p.Resize(ctx, 80+w, 24); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
					return fmt.Errorf("resize: %w", err)
				}
			}
		case 3:
			if err := p.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("kill: %w", err)
			}
		}
		select {
		case <-exitC:
		case <-ctx.Done():
			return fmt.Errorf("no exit: %w", ctx.Err())
		}
		if _, err := p.Delete(ctx); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		return nil
	}

	for i := 0; i < 8; i++ { // what a shim sets up once
		if err := cycle(i); err != nil {
			t.Fatalf("warm-up cycle %d: %v", i, err)
		}
	}
	// Background children of the warm-up have ended.
	time.Sleep(1500 * time.Millisecond)
	fdsBefore := fdCount(t, shim)
	var goroutinesBefore int
	if countGoroutines {
		goroutinesBefore = shimGoroutines(t, shim, bundle)
	}
	start := time.Now()
	for i := 8; i < 8+cycles; i++ {
		if err := cycle(i); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	t.Logf("%d mixed exec cycles in %v", cycles, time.Since(start).Round(time.Millisecond))
	time.Sleep(1500 * time.Millisecond) // the last background children end
	if !pollUntil(10*time.Second, func() bool { return fdCount(t, shim) <= fdsBefore+slack }) {
		t.Errorf("shim descriptors grew from %d to %d over %d cycles", fdsBefore, fdCount(t, shim), cycles)
	}
	if countGoroutines {
		var after int
		if !pollUntil(10*time.Second, func() bool {
			after = shimGoroutines(t, shim, bundle)
			return after <= goroutinesBefore+slack
		}) {
			t.Errorf("shim goroutines grew from %d to %d over %d cycles; stacks in %s", goroutinesBefore, after, cycles, bundle)
		}
	}
	if z := shimZombies(t, shim); z > 0 {
		t.Errorf("%d unreaped children of the shim", z)
	}
	checkRaceLogs(t)
	if t.Failed() {
		return
	}
	c.kill(t, syscall.SIGKILL)
	c.waitInit(t)
	c.delete(t)
}

// checkRaceLogs fails t when a shim built with the race detector reported a
// race: GORACE's log_path (containerd passes its environment to the shims)
// names where the reports go.
func checkRaceLogs(t *testing.T) {
	t.Helper()
	var logPath string
	for _, kv := range strings.Fields(os.Getenv("GORACE")) {
		if v, ok := strings.CutPrefix(kv, "log_path="); ok {
			logPath = v
		}
	}
	if logPath == "" {
		t.Log("GORACE has no log_path: races of a shim built with -race are not looked for")
		return
	}
	reports, err := filepath.Glob(logPath + ".*")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reports {
		data, _ := os.ReadFile(r)
		t.Errorf("race report %s:\n%s", r, lastLines(string(data), 60))
	}
}
