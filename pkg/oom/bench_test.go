//go:build linux

package oom

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkWatch500 watches 500 cgroups (fake v2 memory.events files) with
// one Watcher and measures the latency from a kill written to a counter to
// the notify call that reports it.
func BenchmarkWatch500(b *testing.B) {
	const n = 500
	events := make(chan Event, 1)
	w, err := New(func(ev Event) { events <- ev })
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	fakes := make([]*fakeV2, n)
	for i := range fakes {
		fakes[i] = newFakeV2(b, "")
		if err := w.AddPath(fmt.Sprintf("ctr-%d", i), fakes[i].cg); err != nil {
			b.Fatal(err)
		}
	}
	var latencies, writes []time.Duration
	for i := 0; b.Loop(); i++ {
		f := fakes[i%n]
		begin := time.Now()
		f.bump(1, fakeMax, fakeOOM, fakeOOMKill)
		writes = append(writes, time.Since(begin))
		select {
		case ev := <-events:
			latencies = append(latencies, time.Since(begin))
			if want := fmt.Sprintf("ctr-%d", i%n); ev.ID != want {
				b.Fatalf("event for %s, want %s", ev.ID, want)
			}
		case <-time.After(10 * time.Second):
			b.Fatal("no event")
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*p)]) / 1e3
	}
	// From the start of the write to notify; the write (open, pwrite,
	// close of the file) is reported apart.
	b.ReportMetric(pct(latencies, 0.5), "median-µs")
	b.ReportMetric(pct(latencies, 0.99), "p99-µs")
	b.ReportMetric(pct(writes, 0.5), "write-median-µs")
}
