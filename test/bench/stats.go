package bench

import (
	"math"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Summary describes a set of samples. Values are in the unit of the
// measurement they summarise (milliseconds for latencies, KiB for memory).
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the median, 90th percentile and range of samples. The
// percentiles interpolate linearly between the closest ranks. An empty set
// gives the zero Summary (N == 0), so that a report stays valid JSON.
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Summary{
		N:      len(s),
		Median: percentile(s, 0.5),
		P90:    percentile(s, 0.9),
		Min:    s[0],
		Max:    s[len(s)-1],
	}
}

// percentile of sorted samples, p in [0, 1].
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := p * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	frac := pos - float64(lo)
	return sorted[lo] + (sorted[hi]-sorted[lo])*frac
}

// Ratio returns a/b, or 0 when it means nothing: either is not positive
// (a signed latency can be negative) or not finite. A measured ratio is
// never 0.
func Ratio(a, b float64) float64 {
	r := a / b
	if a <= 0 || b <= 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return 0
	}
	return r
}

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// monotonic is CLOCK_MONOTONIC in seconds, perf's clock with -k mono.
func monotonic() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// Pair holds the samples of one measurement for both shims, taken in the
// same run, alternating between them.
type Pair struct {
	Mine []float64 `json:"mine"`
	Runc []float64 `json:"runc_v2"`
}

// add appends v to the samples of runtime rt.
func (p *Pair) add(rt Runtime, v float64) {
	if rt == Mine {
		p.Mine = append(p.Mine, v)
	} else {
		p.Runc = append(p.Runc, v)
	}
}

// Comparison is a measured figure for both shims: the summaries, the ratio
// of the medians (mine / runc-v2), and the raw samples. PairedRatio is the
// median of the ratios of the samples taken in the same round (the i-th of
// each runtime): less sensitive to a machine whose speed drifts during the
// run.
type Comparison struct {
	Unit        string  `json:"unit"`
	Mine        Summary `json:"mine"`
	Runc        Summary `json:"runc_v2"`
	Ratio       float64 `json:"ratio"`
	PairedRatio float64 `json:"paired_ratio"`
	Samples     Pair    `json:"samples"`
}

// Compare summarises p.
func (p Pair) Compare(unit string) Comparison {
	c := Comparison{Unit: unit, Mine: Summarize(p.Mine), Runc: Summarize(p.Runc), Samples: p}
	c.Ratio = Ratio(c.Mine.Median, c.Runc.Median)
	if len(p.Mine) == len(p.Runc) {
		var rs []float64
		for i := range p.Mine {
			if r := Ratio(p.Mine[i], p.Runc[i]); r != 0 {
				rs = append(rs, r)
			}
		}
		c.PairedRatio = Summarize(rs).Median
	}
	return c
}

// order returns the two runtimes in the order iteration i runs them: the
// first runtime alternates, so neither always runs on a cache the other
// warmed or after the other's teardown.
func order(i int) [2]Runtime {
	if i%2 == 0 {
		return [2]Runtime{Mine, RuncV2}
	}
	return [2]Runtime{RuncV2, Mine}
}
