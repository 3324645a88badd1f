package process

import (
	"bytes"
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A runtime command whose child keeps its output pipe open (a hook that
// daemonised, a wedged helper) returns once the command has exited, or has
// been killed at the end of its context, within the output bound, and with
// the command's own status. Without the bound the call lasted as long as the
// child. The daemon's Reaper here; `shim delete`'s DirectMonitor cannot run
// beside a Reaper, which reaps its children first, and is held by the
// shim's TestDirectMonitorKeepsStatusOfCutOutput.
func TestReaperBoundsOutputHeldByChild(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		timeout      time.Duration
		status       int
	}{
		{"exited", "sleep 8 & echo $!; exit 3", time.Minute, 3},
		{"killed at its deadline", "sleep 8 & echo $!; exec sleep 30", 300 * time.Millisecond, 128 + int(unix.SIGKILL)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			// A buffer, not a file: exec.Cmd copies the pipe into it.
			// The background sleep holds the pipe.
			var out bytes.Buffer
			c := exec.CommandContext(ctx, "sh", "-c", tc.script)
			c.Stdout = &out
			begin := time.Now()
			ec, err := testReaper.Start(c)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan int, 1)
			go func() {
				status, _ := testReaper.Wait(c, ec)
				done <- status
			}()
			var status int
			select {
			case status = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Wait still blocked after 10 s")
			}
			took := time.Since(begin)
			// The sleep, whose pid the script printed, is orphaned to
			// this subreaper.
			if pid, err := strconv.Atoi(strings.TrimSpace(out.String())); err == nil {
				killSleepChild(t, pid)
			} else {
				t.Errorf("the script printed %q, not its child's pid", out.String())
			}
			if status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			if limit := min(tc.timeout, time.Second) + outputDrain + time.Second; took > limit {
				t.Errorf("Wait returned after %s, more than %s", took, limit)
			}
		})
	}
}
