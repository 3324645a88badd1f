package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// killTracer timestamps OOM kills with the kernel's clock: a private tracefs
// instance (its own buffer, so other tracing users are not disturbed) with
// the oom:mark_victim tracepoint enabled and trace_clock "mono", the
// CLOCK_MONOTONIC of monotonic(). The kernel hits the tracepoint when it
// has picked the victim and sent it SIGKILL, the moment the cgroup's
// oom_kill counter is incremented.
type killTracer struct {
	dir string // the instance directory
}

var tracefsRoots = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}

// newKillTracer creates the instance. It fails where tracefs or the
// tracepoint is missing.
func newKillTracer(name string) (*killTracer, error) {
	for _, root := range tracefsRoots {
		if _, err := os.Stat(filepath.Join(root, "events", "oom", "mark_victim")); err != nil {
			continue
		}
		k := &killTracer{dir: filepath.Join(root, "instances", name)}
		if err := os.Mkdir(k.dir, 0o700); err != nil {
			return nil, fmt.Errorf("create tracefs instance: %w", err)
		}
		err := errors.Join(
			os.WriteFile(filepath.Join(k.dir, "trace_clock"), []byte("mono"), 0),
			os.WriteFile(k.enablePath(), []byte("1"), 0))
		if err != nil {
			return nil, errors.Join(err, k.close())
		}
		return k, nil
	}
	return nil, errors.New("no tracefs with the oom:mark_victim tracepoint")
}

func (k *killTracer) enablePath() string {
	return filepath.Join(k.dir, "events", "oom", "mark_victim", "enable")
}

// killTime returns when the kernel OOM-killed pid, in CLOCK_MONOTONIC
// seconds, from the instance's buffer.
func (k *killTracer) killTime(pid int) (float64, error) {
	data, err := os.ReadFile(filepath.Join(k.dir, "trace"))
	if err != nil {
		return 0, err
	}
	t, ok := parseMarkVictim(string(data), pid)
	if !ok {
		return 0, fmt.Errorf("no oom:mark_victim for pid %d in the trace", pid)
	}
	return t, nil
}

// parseMarkVictim finds the first line like
//
//	dd-4242    [001] d..1.  2345.678901: mark_victim: pid=4242 comm=dd ...
//
// for pid and returns its timestamp.
func parseMarkVictim(trace string, pid int) (float64, bool) {
	want := "pid=" + strconv.Itoa(pid)
	for _, line := range strings.Split(trace, "\n") {
		pre, post, ok := strings.Cut(line, " mark_victim: ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) == 0 || f[0] != want {
			continue
		}
		f := strings.Fields(pre)
		if len(f) == 0 {
			continue
		}
		t, err := strconv.ParseFloat(strings.TrimSuffix(f[len(f)-1], ":"), 64)
		if err == nil {
			return t, true
		}
	}
	return 0, false
}

// close disables the tracepoint and removes the instance.
func (k *killTracer) close() error {
	err := os.WriteFile(k.enablePath(), []byte("0"), 0)
	return errors.Join(err, os.Remove(k.dir))
}
