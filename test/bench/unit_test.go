package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
)

// Fast tests of the pure parts: statistics, parsers, the table and the
// plot. They need no root and run in the normal test run.

func TestSummarize(t *testing.T) {
	tests := []struct {
		name    string
		in      []float64
		want    Summary
		wantNaN bool
	}{
		{name: "empty", in: nil, want: Summary{}},
		{name: "one", in: []float64{7}, want: Summary{N: 1, Median: 7, P90: 7, Min: 7, Max: 7}},
		{name: "even", in: []float64{4, 1, 3, 2}, want: Summary{N: 4, Median: 2.5, P90: 3.7, Min: 1, Max: 4}},
		{name: "ten", in: []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, want: Summary{N: 10, Median: 5.5, P90: 9.1, Min: 1, Max: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.in)
			if got.N != tt.want.N || !near(got.Median, tt.want.Median) || !near(got.P90, tt.want.P90) ||
				got.Min != tt.want.Min || got.Max != tt.want.Max {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMeanMem(t *testing.T) {
	got := meanMem([]Mem{
		{Rss: 8000, Pss: 4000, PssAnon: 3000, PssFile: 1000, VmRSS: 8000, VmHWM: 9000, Threads: 9, PrivateDirty: 3000},
		{Rss: 9000, Pss: 5000, PssAnon: 3500, PssFile: 1500, VmRSS: 9000, VmHWM: 9500, Threads: 10, PrivateDirty: 3500},
	})
	want := Mem{Rss: 8500, Pss: 4500, PssAnon: 3250, PssFile: 1250, VmRSS: 8500, VmHWM: 9500, Threads: 10, PrivateDirty: 3250}
	if got != want {
		t.Errorf("meanMem = %+v, want %+v", got, want)
	}
	if got := meanMem(nil); got != (Mem{}) {
		t.Errorf("meanMem(nil) = %+v, want zero", got)
	}
}

func TestRatio(t *testing.T) {
	tests := []struct {
		name string
		a, b float64
		want float64
	}{
		{name: "half", a: 1, b: 2, want: 0.5},
		{name: "zero denominator", a: 1, b: 0, want: 0},
		{name: "nan", a: math.NaN(), b: 1, want: 0},
		{name: "negative", a: 4, b: -1, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Ratio(tt.a, tt.b); got != tt.want {
				t.Errorf("Ratio(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// Interleaving: each runtime runs first in every other iteration.
func TestOrderAlternates(t *testing.T) {
	first := map[Runtime]int{}
	for i := range 10 {
		o := order(i)
		if o[0] == o[1] {
			t.Fatalf("order(%d) = %v: one runtime twice", i, o)
		}
		first[o[0]]++
	}
	if first[Mine] != 5 || first[RuncV2] != 5 {
		t.Errorf("runs first: %v, want 5 each", first)
	}
}

func TestParseShimArgs(t *testing.T) {
	tests := []struct {
		name       string
		argv       []string
		wantID     string
		wantAction string
	}{
		{name: "daemon", argv: []string{"-namespace", "n", "-id", "c1", "-address", "/s", "-debug"}, wantID: "c1"},
		{name: "start", argv: []string{"-namespace", "n", "-id", "c1", "-address", "/s", "start"}, wantID: "c1", wantAction: "start"},
		{name: "equals form", argv: []string{"--id=c2", "delete"}, wantID: "c2", wantAction: "delete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, action := parseShimArgs(tt.argv)
			if flags["id"] != tt.wantID || action != tt.wantAction {
				t.Errorf("parseShimArgs(%q) = %v, %q; want id %q, action %q", tt.argv, flags, action, tt.wantID, tt.wantAction)
			}
		})
	}
}

func TestParseMarkVictim(t *testing.T) {
	trace := `# tracer: nop
#
              dd-4242    [001] d..1.  2345.678901: mark_victim: pid=4242 comm=dd total-vm=70000kB anon-rss=16000kB file-rss:0kB shmem-rss:0kB uid=0 pgtables=80kB oom_score_adj=1
              dd-77      [000] d..1.  2346.000001: mark_victim: pid=77 comm=dd total-vm=1kB anon-rss=1kB file-rss:0kB shmem-rss:0kB uid=0 pgtables=1kB oom_score_adj=0
`
	if got, ok := parseMarkVictim(trace, 4242); !ok || !near(got, 2345.678901) {
		t.Errorf("pid 4242: %v, %v; want 2345.678901", got, ok)
	}
	if _, ok := parseMarkVictim(trace, 424); ok {
		t.Error("pid 424 found: a prefix of another pid must not match")
	}
}

// A synthetic trace of one `ctr run`: containerd (pid 100) forks the shim's
// start (200), which forks the daemon (201); the daemon forks runc create
// (300), whose child (301) becomes the container; runc start (302), the
// container's exec and exit, runc delete (303); the bench (pid 1) forks ctr
// (50).
const syntheticTrace = `
    1/1     10.000000000: sched:sched_process_fork: comm=bench pid=1 child_comm=bench child_pid=50
   50/50    10.001000000: sched:sched_process_exec: filename=/usr/bin/ctr pid=50 old_pid=50
  100/105   10.010000000: sched:sched_process_fork: comm=containerd pid=105 child_comm=containerd child_pid=200
  200/200   10.011000000: sched:sched_process_exec: filename=/b/containerd-shim-mine-v2 pid=200 old_pid=200
  200/200   10.012000000: sched:sched_process_fork: comm=containerd-shim pid=200 child_comm=containerd-shim child_pid=201
  201/201   10.013000000: sched:sched_process_exec: filename=/b/containerd-shim-mine-v2 pid=201 old_pid=201
  200/200   10.015000000: sched:sched_process_exit: comm=containerd-shim pid=200 prio=120 group_dead=true
  201/203   10.020000000: sched:sched_process_fork: comm=containerd-shim pid=203 child_comm=containerd-shim child_pid=300
  300/300   10.021000000: sched:sched_process_exec: filename=/usr/sbin/runc pid=300 old_pid=300
  300/300   10.022000000: sched:sched_process_fork: comm=runc pid=300 child_comm=runc child_pid=301
  301/301   10.023000000: sched:sched_process_exec: filename=/dev/fd/6 pid=301 old_pid=301
  300/300   10.030000000: sched:sched_process_exit: comm=runc pid=300 prio=120 group_dead=true
  201/201   10.031000000: sched:sched_process_fork: comm=containerd-shim pid=201 child_comm=containerd-shim child_pid=302
  302/302   10.032000000: sched:sched_process_exec: filename=/usr/sbin/runc pid=302 old_pid=302
  301/301   10.034000000: sched:sched_process_exec: filename=/bin/true pid=301 old_pid=301
  302/302   10.035000000: sched:sched_process_exit: comm=runc pid=302 prio=120 group_dead=true
  301/301   10.036000000: sched:sched_process_exit: comm=true pid=301 prio=120 group_dead=true
  201/201   10.040000000: sched:sched_process_fork: comm=containerd-shim pid=201 child_comm=containerd-shim child_pid=303
  303/303   10.041000000: sched:sched_process_exec: filename=/usr/sbin/runc pid=303 old_pid=303
  303/303   10.045000000: sched:sched_process_exit: comm=runc pid=303 prio=120 group_dead=true
  201/201   10.050000000: sched:sched_process_exit: comm=containerd-shim pid=201 prio=120 group_dead=true
   50/50    10.060000000: sched:sched_process_exit: comm=ctr pid=50 prio=120 group_dead=true
  999/999   10.030000000: sched:sched_process_exec: filename=/usr/sbin/runc pid=999 old_pid=999
`

func TestMilestones(t *testing.T) {
	evs, err := parsePerfScript(strings.NewReader(syntheticTrace))
	if err != nil {
		t.Fatal(err)
	}
	tr := newProcTree(evs, []int{100, 1})
	marks := tr.milestones(9.9, 11, []string{"containerd-shim-mine-v2"})
	got := map[string]float64{}
	for _, m := range marks {
		got[m.name] = m.t
	}
	want := map[string]float64{
		"ctr exec": 0, "ctr exit": 59,
		"shim start exec": 10, "shim start exit": 14,
		"shim daemon exec": 12, "shim daemon exit": 49,
		"runc create exec": 20, "runc create exit": 29,
		"runc start exec": 31, "runc start exit": 34,
		"container exec": 33, "container exit": 35,
		"runc delete exec": 40, "runc delete exit": 44,
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || math.Abs(g-w) > 1e-6 {
			t.Errorf("%s: got %v (present %v), want %v", name, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("milestones %v, want exactly %v (pid 999 is not a descendant)", got, want)
	}
}

func TestPlotIsWellFormedSVG(t *testing.T) {
	pts := []MemoryPoint{
		{Containers: 1, Mine: ShimMemory{Rss: Summary{Median: 10000}, Pss: Summary{Median: 9000}, TotalPss: 9000},
			Runc: ShimMemory{Rss: Summary{Median: 18000}, Pss: Summary{Median: 17000}, TotalPss: 17000}},
		{Containers: 50, Mine: ShimMemory{Rss: Summary{Median: 10000}, Pss: Summary{Median: 3000}, TotalPss: 150000},
			Runc: ShimMemory{Rss: Summary{Median: 18000}, Pss: Summary{Median: 5000}, TotalPss: 250000}},
	}
	svg := PlotMemory(pts, "test & <subtitle>")
	dec := xml.NewDecoder(bytes.NewReader(svg))
	lines := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 8 {
		t.Errorf("%d polylines, want 8 (4 series in 2 panels)", lines)
	}
}

func TestTableVerdicts(t *testing.T) {
	r := &Report{Lifecycle: &LifecycleResult{
		Shims:    Pair{Mine: []float64{80}, Runc: []float64{100}}.Compare("ms"),
		Overhead: Pair{Mine: []float64{60}, Runc: []float64{80}}.Compare("ms"),
	}}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"| 0.80 | <= 0.85: met |", "| 0.75 | <= 0.50: missed |"} {
		if !strings.Contains(out, want) {
			t.Errorf("table has no %q:\n%s", want, out)
		}
	}
}

// A goal of private memory missed by mine whose floor is also above the
// limit says so; one whose floor is below it does not, and neither does a
// goal of RSS or PSS, which the floor does not bound.
func TestGoalVerdictsWithFloor(t *testing.T) {
	mib := func(v float64) ShimMemory {
		s := Summary{N: 1, Median: v, P90: v, Min: v, Max: v}
		return ShimMemory{Rss: s, Pss: s, PssAnon: s, PeakRss: s}
	}
	floor := mib(5400) // 0.54 of runc-v2's PSS: above the limit, but no bound
	floor.Rss = Summary{N: 1, Median: 4000, P90: 4000, Min: 4000, Max: 4000}
	r := &Report{
		Poll: []PollPoint{{Containers: 10, Mine: mib(7000), Runc: mib(10000), Floor: &floor}},
		Probes: []ProbePoint{
			{Execs: 0, Mine: Mem{Rss: 6000, PssAnon: 3000}, Runc: Mem{Rss: 9000, PssAnon: 4000}},
			{Execs: 1000, Mine: Mem{Rss: 7000, PssAnon: 4000}, Runc: Mem{Rss: 10000, PssAnon: 5000},
				Floor: &Mem{Rss: 6000, PssAnon: 3000}},
		},
	}
	var b strings.Builder
	if err := r.WriteGoals(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| RSS per shim under 1 Hz Stats polling, 10 containers | 0.70 | 0.40 | 0.50 | missed |",
		"| PSS per shim under 1 Hz Stats polling, 10 containers | 0.70 | 0.54 | 0.50 | missed |",
		"| peak RSS (VmHWM) per shim under polling, 10 containers | 0.70 | 0.54 | 0.70 | met |",
		"| RSS after 1000 exec probes | 0.70 | 0.60 | 0.50 | missed |",
		"| Pss_Anon after 1000 exec probes | 0.80 | 0.60 | 0.50 | missed; the floor is above the limit |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("goals have no %q:\n%s", want, out)
		}
	}
}
