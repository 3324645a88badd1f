//go:build linux

package oom

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mono is CLOCK_MONOTONIC in seconds, the tracefs "mono" clock.
func mono() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// BenchmarkRealKillToNotify gets a process OOM-killed in a real cgroup v1
// memory cgroup limited to 16 MiB, b.N times, and reports the time from the
// kill (the kernel's oom:mark_victim tracepoint, in a private tracefs
// instance with the "mono" clock) to the Watcher's notify call: the shim's
// own part of the OOM latency, without its event path and containerd's.
//
//	go test -run '^$' -bench RealKillToNotify -benchtime 20x ./pkg/oom
func BenchmarkRealKillToNotify(b *testing.B) {
	h := requireHierarchy(b, 1)
	dir := filepath.Join("/sys/kernel/tracing/instances", "mine-oom-bench-"+strconv.Itoa(os.Getpid()))
	enable := filepath.Join(dir, "events", "oom", "mark_victim", "enable")
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Skipf("no tracefs instance for the oom:mark_victim tracepoint: %v", err)
	}
	defer os.Remove(dir)
	if err := os.WriteFile(filepath.Join(dir, "trace_clock"), []byte("mono"), 0); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(enable, []byte("1"), 0); err != nil {
		b.Skipf("oom:mark_victim: %v", err)
	}
	defer os.WriteFile(enable, []byte("0"), 0)
	var lat []float64
	for range b.N {
		at := make(chan float64, 4)
		w, err := New(func(ev Event) { at <- mono() })
		if err != nil {
			b.Fatal(err)
		}
		cg := newRealCgroup(b, h, 16<<20)
		a := startAllocator(b, "oom", cg)
		if err := w.Add("ctr", a.pid); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "trace"), nil, 0); err != nil {
			b.Fatal(err)
		}
		a.start(b)
		got := <-at
		a.wait(b)
		data, _ := os.ReadFile(filepath.Join(dir, "trace"))
		var kill float64
		for _, line := range strings.Split(string(data), "\n") {
			pre, post, ok := strings.Cut(line, " mark_victim: ")
			if !ok || !strings.HasPrefix(post, "pid="+strconv.Itoa(a.pid)) {
				continue
			}
			f := strings.Fields(pre)
			kill, _ = strconv.ParseFloat(strings.TrimSuffix(f[len(f)-1], ":"), 64)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		if kill == 0 {
			b.Fatalf("no mark_victim line for pid %d in the trace", a.pid)
		}
		lat = append(lat, (got-kill)*1000)
	}
	sort.Float64s(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-ms")
	b.ReportMetric(lat[len(lat)*9/10], "p90-ms")
}
