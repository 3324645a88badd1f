//go:build linux

package oom

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const (
	// counterKey is the kill counter in memory.events (v2) and in
	// memory.oom_control (v1, kernel >= 4.13).
	counterKey = "oom_kill"
	// eventsFile (v2) counts memory events of the cgroup and its descendants.
	eventsFile = "memory.events"
	// oomControlFile (v1) holds oom_kill_disable, under_oom and oom_kill.
	oomControlFile = "memory.oom_control"
	// eventControlFile (v1) registers an eventfd for a control file's events.
	eventControlFile = "cgroup.event_control"

	// pendingWindow bounds how long a v1 OOM notification waits for the kill
	// counter to move: the kernel signals the eventfd when the cgroup goes
	// under OOM, before it picks and kills a victim.
	pendingWindow = time.Second
	// After the spin below, the re-reads during pendingWindow come every
	// pendingFirstRetry for pendingFastFor, then back off to
	// pendingMaxRetry (100 us, 200 us, ..., 64 ms). Between the signal and
	// the kill the kernel writes its OOM report; the counter moved 0.05 to
	// 2.6 ms after the signal on kernel 6.18, later on a busy machine or a
	// kernel that writes the report to a slow console, and a re-read that
	// backed off from the start would see it up to twice as late. At most
	// about 100 timed reads per OOM.
	pendingFirstRetry = 100 * time.Microsecond
	pendingFastFor    = 10 * time.Millisecond
	pendingMaxRetry   = 64 * time.Millisecond
	// pendingSpinFor is how long the loop re-reads a counter that a v1
	// signal left pending without sleeping (yielding the processor between
	// reads), before the timed re-reads take over; a cgroup spins at most
	// once per pendingWindow, and not at all with a single processor or P.
	// A timer fires on the processor that armed it, and the kernel writes
	// "Killed process" to its consoles right after the kill, from the
	// killing task and with interrupts off: on a serial console that
	// processor stays deaf for about 3 ms, and so did the loop's re-read
	// timed for 100 us when it had been armed there (docs/BENCHMARKS.md,
	// 38). A running thread is moved to the other processor; a timer is not.
	pendingSpinFor = 2 * time.Millisecond
)

// parseCounter returns the value of key in a flat keyed cgroup file
// ("key value" lines). ok is false when the file has no such key.
func parseCounter(data []byte, key string) (value uint64, ok bool, err error) {
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		k, v, found := bytes.Cut(line, []byte{' '})
		if string(k) != key {
			continue
		}
		if !found {
			return 0, false, fmt.Errorf("line %q has no value: %w", line, errdefs.ErrInvalidArgument)
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("line %q: %w: %w", line, errdefs.ErrInvalidArgument, err)
		}
		return n, true, nil
	}
	return 0, false, nil
}

// reading is the outcome of one read of a cgroup's kill counter.
type reading struct {
	counter uint64
	ok      bool // counter holds the value of the kill counter
	gone    bool // the cgroup no longer exists (or another cgroup took its path)
}

// counterState is what a watch remembers between readings.
type counterState struct {
	last         uint64    // kill counter at the last reading, or at Add
	pendingUntil time.Time // a v1 OOM signal waits for the counter to move until then
	waiting      uint64    // v1 signals not matched by a kill yet, while pending
}

// advance applies one reading to st. signals is the number of v1 eventfd
// signals consumed with this reading (0 for v2 and for Check). legacy is set
// for v1 cgroups whose kernel has no oom_kill counter. It returns the number
// of kills to report and the new state.
//
// Rules:
//   - a cgroup that is gone reports nothing: its eventfd fires once on
//     removal, and a kill before the removal has already been counted by a
//     reading while the cgroup existed (Check at the container's exit);
//   - with a counter, only an increase reports, one kill per unit; a counter
//     that went down (another cgroup now at that path) resets the baseline;
//   - a v1 signal with no increase yet leaves the watch pending for
//     pendingWindow, because the kernel signals before it kills; the watch
//     waits for as many kills as signals, whatever their source (two
//     signals read at once and one kill leave it pending: the second OOM's
//     kill may still come, and no signal will announce it), until
//     pendingWindow has passed since the last signal;
//   - legacy v1 counts each signal as one kill.
func advance(st counterState, r reading, signals uint64, legacy bool, now time.Time) (kills uint64, next counterState) {
	next = st
	if r.gone {
		next.pendingUntil, next.waiting = time.Time{}, 0
		return 0, next
	}
	if legacy {
		return signals, next
	}
	if r.ok {
		switch {
		case r.counter > st.last:
			kills = r.counter - st.last
			next.last = r.counter
		case r.counter < st.last:
			next.last = r.counter
		}
	}
	next.waiting += signals
	next.waiting -= min(kills, next.waiting)
	switch {
	case next.waiting == 0:
		next.pendingUntil = time.Time{}
	case signals > 0:
		next.pendingUntil = now.Add(pendingWindow)
	case !now.Before(next.pendingUntil):
		next.pendingUntil, next.waiting = time.Time{}, 0
	}
	return kills, next
}

// pending reports whether st waits for a v1 kill counter to move.
func (st counterState) pending() bool { return !st.pendingUntil.IsZero() }

// classify wraps err, the cause of a failure to do what, with its errdefs class.
func classify(what string, err error) error {
	switch {
	case isGone(err):
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrNotFound, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrPermissionDenied, err)
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
}

// isGone reports whether err says that a file, or the cgroup or process it
// belonged to, no longer exists. A removed cgroup's open file reads ENODEV.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH)
}
