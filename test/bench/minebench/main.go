package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mineshim/mine/test/bench"
)

// exitSkip is the exit code when a requirement is missing.
const exitSkip = 3

func main() {
	os.Exit(run())
}

func run() int {
	def := bench.DefaultOptions()
	var (
		jsonPath  = flag.String("json", "docs/bench.json", "write the raw numbers to this `file` (empty: none)")
		svgPath   = flag.String("svg", "docs/bench-rss.svg", "write the idle memory plot to this `file` (empty: none)")
		tablePath = flag.String("table", "", "also write the ratio table (Markdown) to this `file`")
		shim      = flag.String("shim", "", "built containerd-shim-mine-v2 (default: MINE_SHIM, else build it)")
		runcShim  = flag.String("runc-shim", "", "containerd-shim-runc-v2 to compare with (default: MINE_RUNC_SHIM, else the one in -containerd-bin)")
		bin       = flag.String("containerd-bin", "", "`dir` of containerd, ctr, containerd-shim-runc-v2 (default: MINE_CONTAINERD_BIN, else PATH)")
		loadMax   = flag.Float64("load-max", 1.0, "wait until the 1-minute load average is at most this")
		loadWait  = flag.Duration("load-wait", 3*time.Minute, "wait at most this long for the load to calm (0: do not wait)")
		quick     = flag.Bool("quick", false, "a few samples of everything (checks the harness, not the shims)")
		lifecycle = flag.Int("lifecycle", def.LifecycleRuns, "lifecycle rounds (each: mine, runc-v2, raw runc)")
		counts    = flag.String("counts", joinInts(def.MemoryCounts), "container counts of the idle memory figure")
		execPar   = flag.Int("exec-parallel", def.ExecParallel, "execs per burst")
		execRnd   = flag.Int("exec-rounds", def.ExecRounds, "exec bursts per runtime")
		startPar  = flag.Int("start-parallel", def.StartParallel, "containers per start burst")
		startRnd  = flag.Int("start-rounds", def.StartRounds, "start bursts per runtime")
		oomRuns   = flag.Int("oom", def.OOMRuns, "OOM kills per runtime")
		execLat   = flag.Int("exec-latency", def.ExecLatencyRuns, "single execs per runtime")
		trace     = flag.Int("trace", def.ProfileRuns, "lifecycles per runtime traced with perf (0: none)")
		podRounds = flag.Int("pod-rounds", def.PodRounds, "CRI pod starts per variant (0: no pod figures)")
		podCount  = flag.Int("pods", def.PodCount, "idle pods per variant for the memory per pod")
		pollCnt   = flag.String("poll-counts", joinInts(def.PollCounts), "containers per runtime under 1 Hz Stats polling")
		pollTime  = flag.Duration("poll-time", def.PollTime, "how long Stats is polled; memory is read six times over its last minute")
		probes    = flag.String("probes", joinInts(def.ProbeCounts), "exec probes per runtime after which memory is read (1000,10000: about 20 minutes more)")
		groupCnt  = flag.String("group-counts", joinInts(def.GroupCounts), "containers in one group shim")
		startRuns = flag.Int("start-runs", def.StartRuns, "start actions alone per runtime")
		settle    = flag.Duration("settle", def.Settle, "idle time before an idle shim's memory is read")
		only      = flag.String("only", "", "run only these steps, comma-separated: "+strings.Join(bench.StepNames, ", "))
		rootPar   = flag.String("root-parent", "", "`dir` where containerd's root (snapshots) is made (default /var/lib, on disk; /run puts it on tmpfs)")
	)
	flag.Parse()
	o := def
	o.LifecycleRuns, o.ExecParallel, o.ExecRounds = *lifecycle, *execPar, *execRnd
	o.StartParallel, o.StartRounds, o.OOMRuns = *startPar, *startRnd, *oomRuns
	o.ExecLatencyRuns, o.ProfileRuns = *execLat, *trace
	o.PollTime, o.StartRuns = *pollTime, *startRuns
	o.PodRounds, o.PodCount, o.Settle = *podRounds, *podCount, *settle
	for _, l := range []struct {
		name string
		s    string
		dst  *[]int
	}{{"counts", *counts, &o.MemoryCounts}, {"poll-counts", *pollCnt, &o.PollCounts}, {"probes", *probes, &o.ProbeCounts}, {"group-counts", *groupCnt, &o.GroupCounts}} {
		v, err := parseInts(l.s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "minebench: -%s: %v\n", l.name, err)
			return 2
		}
		*l.dst = v
	}
	if *quick {
		o = bench.QuickOptions()
	}
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(bench.StepNames, s) {
				fmt.Fprintf(os.Stderr, "minebench: -only: no step %q (steps: %s)\n", s, strings.Join(bench.StepNames, ", "))
				return 2
			}
			o.Steps = append(o.Steps, s)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	waitForCalm(ctx, *loadMax, *loadWait)
	env, err := bench.Open(ctx, bench.Config{ContainerdBin: *bin, Shim: *shim, RuncShim: *runcShim, RootParent: *rootPar, Progress: os.Stderr})
	if errors.Is(err, bench.ErrSkip) {
		fmt.Fprintf(os.Stderr, "minebench: cannot run here: %v\n", err)
		return exitSkip
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "minebench: %v\n", err)
		return 1
	}
	report, runErr := bench.Run(ctx, env, o)
	if err := env.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "minebench: cleanup: %v\n", err)
	}
	code := 0
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "minebench: %v\n", runErr)
		code = 1
	}
	if err := output(report, *jsonPath, *svgPath, *tablePath); err != nil {
		fmt.Fprintf(os.Stderr, "minebench: %v\n", err)
		code = 1
	}
	return code
}

// output prints the table and writes the files.
func output(r *bench.Report, jsonPath, svgPath, tablePath string) error {
	fmt.Printf("\nmine %s vs containerd-shim-runc-v2 %s; containerd %s, runc %s\n",
		r.Versions.MineShim, r.Versions.RuncShim, lastField(r.Versions.Containerd), lastField(r.Versions.Runc))
	fmt.Printf("%s, %d CPUs, kernel %s; 1-minute load %.2f when measuring began; %.0fs\n\n",
		r.Host.CPU, r.Host.CPUs, r.Host.Kernel, r.LoadBefore[0], r.Seconds)
	if err := r.WriteTable(os.Stdout); err != nil {
		return err
	}
	fmt.Printf("\nGoals\n\n")
	if err := r.WriteGoals(os.Stdout); err != nil {
		return err
	}
	var errs []error
	if tablePath != "" {
		f, err := os.Create(tablePath)
		if err == nil {
			err = errors.Join(r.WriteTable(f), r.WriteGoals(f), f.Close())
		}
		errs = append(errs, err)
	}
	if jsonPath != "" {
		errs = append(errs, r.WriteJSON(jsonPath))
	}
	if svgPath != "" && len(r.Memory) > 0 {
		sub := fmt.Sprintf("containerd %s, runc %s, mine %s; kernel %s, %d CPUs, %s",
			lastField(r.Versions.Containerd), lastField(r.Versions.Runc), r.Versions.MineShim, r.Host.Kernel, r.Host.CPUs, r.Date[:10])
		errs = append(errs, os.WriteFile(svgPath, bench.PlotMemory(r.Memory, sub), 0o644))
	}
	return errors.Join(errs...)
}

// waitForCalm waits, at most wait, until the 1-minute load average is at
// most limit: the machine may be shared with other runs.
func waitForCalm(ctx context.Context, limit float64, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for {
		l := bench.LoadAvg()
		if l[0] <= limit {
			fmt.Fprintf(os.Stderr, "bench: load %.2f %.2f %.2f\n", l[0], l[1], l[2])
			return
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(os.Stderr, "bench: load still %.2f (limit %.2f) after waiting %v: measuring anyway, the report records it\n", l[0], limit, wait)
			return
		}
		fmt.Fprintf(os.Stderr, "bench: load %.2f above %.2f, waiting (until %s at most)\n", l[0], limit, deadline.Format("15:04:05"))
		select {
		case <-ctx.Done():
			return
		case <-time.After(15 * time.Second):
		}
	}
}

// lastField is the version in "containerd github.com/... 2.4.2" and "runc
// version 1.1.5".
func lastField(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return s
	}
	return f[len(f)-1]
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
