package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
)

// The Go benchmarks measure the same figures as Run, a few samples per
// `go test -bench` invocation, each iteration one sample of both runtimes:
//
//	go test -run '^$' -bench . -benchtime 10x ./test/bench/
//
// They share one Env, opened by the first benchmark that runs and closed by
// TestMain. Without root, containerd, ctr, containerd-shim-runc-v2, runc or
// busybox they skip and say which is missing.

var shared struct {
	once sync.Once
	env  *Env
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.env != nil {
		if err := shared.env.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: close: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// benchEnv returns the shared Env, or skips b when the machine lacks a
// requirement.
func benchEnv(b *testing.B) *Env {
	b.Helper()
	shared.once.Do(func() {
		var progress io.Writer
		if testing.Verbose() {
			progress = os.Stderr
		}
		shared.env, shared.err = Open(context.Background(), Config{Progress: progress})
	})
	if errors.Is(shared.err, ErrSkip) {
		b.Skip(shared.err)
	}
	if shared.err != nil {
		b.Fatal(shared.err)
	}
	return shared.env
}

// report puts the medians, p90s and ratio of c on b, with metric names
// "mine-UNIT", "runc-v2-UNIT", "mine-p90-UNIT", ... and "PREFIXratio".
func report(b *testing.B, prefix string, c Comparison) {
	b.Helper()
	unit := prefix + c.Unit
	b.ReportMetric(c.Mine.Median, "mine-"+unit)
	b.ReportMetric(c.Runc.Median, "runc-v2-"+unit)
	b.ReportMetric(c.Mine.P90, "mine-p90-"+unit)
	b.ReportMetric(c.Runc.P90, "runc-v2-p90-"+unit)
	b.ReportMetric(c.Ratio, prefix+"ratio")
}

// BenchmarkLifecycle: `ctr run --rm IMAGE ID true` with each shim, and raw
// `runc run` of the same bundle; ratio of the medians, and of the overheads
// above raw runc.
func BenchmarkLifecycle(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	var warm, s lifecycleSamples
	if err := warm.round(ctx, e, 0, "bwarm"); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if err := s.round(ctx, e, i, "b"); err != nil {
			b.Fatal(err)
		}
	}
	r := s.result()
	report(b, "", r.Shims)
	b.ReportMetric(r.Raw.Median, "raw-runc-ms")
	b.ReportMetric(r.Overhead.Ratio, "overhead-ratio")
}

// BenchmarkIdleMemory: RSS, PSS and Pss_Anon per shim with 1, 10 and 50
// `sleep` containers.
func BenchmarkIdleMemory(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("containers=%d", n), func(b *testing.B) {
			e := benchEnv(b)
			var p []MemoryPoint
			for b.Loop() {
				var err error
				if p, err = e.Memory(context.Background(), []int{n}, DefaultOptions().Settle); err != nil {
					b.Fatal(err)
				}
			}
			const mib = 1.0 / 1024
			m := p[0]
			b.ReportMetric(m.Mine.Rss.Median*mib, "mine-rss-MiB")
			b.ReportMetric(m.Runc.Rss.Median*mib, "runc-v2-rss-MiB")
			b.ReportMetric(m.Mine.Pss.Median*mib, "mine-pss-MiB")
			b.ReportMetric(m.Runc.Pss.Median*mib, "runc-v2-pss-MiB")
			b.ReportMetric(m.Mine.PssAnon.Median*mib, "mine-pss-anon-MiB")
			b.ReportMetric(m.Runc.PssAnon.Median*mib, "runc-v2-pss-anon-MiB")
			b.ReportMetric(m.RssRatio, "rss-ratio")
			b.ReportMetric(m.PssRatio, "pss-ratio")
		})
	}
}

// BenchmarkParallelExec: 50 concurrent execs of `true` into one running
// container, wall time of the burst.
func BenchmarkParallelExec(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	targets, err := e.execTargets(ctx, "bpx")
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := e.removeTargets(ctx, targets); err != nil {
			b.Error(err)
		}
	}()
	var wall Pair
	for i := 0; b.Loop(); i++ {
		for _, rt := range order(i) {
			d, err := e.execBurst(ctx, targets[rt], 50, fmt.Sprintf("b%d", i))
			if err != nil {
				b.Fatal(err)
			}
			wall.add(rt, ms(d))
		}
	}
	report(b, "", wall.Compare("ms"))
}

// BenchmarkConcurrentStart: 50 containers created and started at once,
// wall time until the last one runs.
func BenchmarkConcurrentStart(b *testing.B) {
	e := benchEnv(b)
	var wall Pair
	for i := 0; b.Loop(); i++ {
		for _, rt := range order(i) {
			d, _, err := e.startBurst(context.Background(), rt, 50, fmt.Sprintf("b%d", i))
			if err != nil {
				b.Fatal(err)
			}
			wall.add(rt, ms(d))
		}
	}
	report(b, "", wall.Compare("ms"))
}

// BenchmarkOOM: OOM kill of a 16 MiB container to /tasks/oom and to
// /tasks/exit on containerd's event stream.
func BenchmarkOOM(b *testing.B) {
	e := benchEnv(b)
	kills, err := newKillTracer(Namespace + "-b-" + e.tag)
	if err != nil {
		b.Logf("timing kills by the oom_kill counter: %v", err)
	} else {
		defer kills.close()
	}
	var oom, exit Pair
	for i := 0; b.Loop(); i++ {
		for _, rt := range order(i) {
			o, x, _, err := e.oomOnce(context.Background(), rt, fmt.Sprintf("boom-%s-%s-%d", rt.Short(), e.tag, i), kills)
			if err != nil {
				b.Fatal(err)
			}
			oom.add(rt, o*1000)
			exit.add(rt, x*1000)
		}
	}
	report(b, "oom-", oom.Compare("ms"))
	report(b, "exit-", exit.Compare("ms"))
}

// BenchmarkExecExit: an exec of `true`, from the return of Start to
// /tasks/exit on the stream (and from the Start call).
func BenchmarkExecExit(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	targets, err := e.execTargets(ctx, "bxl")
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := e.removeTargets(ctx, targets); err != nil {
			b.Error(err)
		}
	}()
	var fromReturn, fromCall Pair
	for i := 0; b.Loop(); i++ {
		for _, rt := range order(i) {
			spec, err := targets[rt].execSpec(ctx, e, "true")
			if err != nil {
				b.Fatal(err)
			}
			r, c, err := e.execExitOnce(ctx, targets[rt], spec, fmt.Sprintf("b%d", i))
			if err != nil {
				b.Fatal(err)
			}
			fromReturn.add(rt, r*1000)
			fromCall.add(rt, c*1000)
		}
	}
	report(b, "", fromReturn.Compare("ms"))
	report(b, "call-", fromCall.Compare("ms"))
}

// BenchmarkPods: CRI pod start (RunPodSandbox + CreateContainer +
// StartContainer of one container) and memory per pod (shim and pause or
// holder), for pods without a pause container (mine's Sandbox API), mine
// with a pause container and runc-v2 with one.
func BenchmarkPods(b *testing.B) {
	e := benchEnv(b)
	o := DefaultOptions()
	for b.Loop() {
		r, err := e.Pods(context.Background(), o.PodRounds, o.PodCount, o.Settle)
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range PodVariants {
			name := strings.ReplaceAll(strings.ReplaceAll(v.Label(), " ", ""), ",", "-")
			b.ReportMetric(r.Start[v.Label()].Median, name+"-start-ms")
			b.ReportMetric(r.Pss[v.Label()].Median/1024, name+"-pss-MiB")
		}
		b.ReportMetric(r.StartRatio, "start-ratio")
		b.ReportMetric(r.PssRatio, "pss-ratio")
	}
}
