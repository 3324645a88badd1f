package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Options size a full run. DefaultOptions take about three and a half
// minutes on two cores.
type Options struct {
	LifecycleRuns   int           `json:"lifecycle_runs"`    // rounds of (mine, runc-v2, raw runc)
	LifecycleWarm   int           `json:"lifecycle_warm"`    // uncounted rounds first
	MemoryCounts    []int         `json:"memory_counts"`     // container counts of the idle memory figure
	Settle          time.Duration `json:"settle_ns"`         // idle time before memory is read: longer than any idle trim of a shim (see settle)
	ExecParallel    int           `json:"exec_parallel"`     // execs per burst
	ExecRounds      int           `json:"exec_rounds"`       // bursts per runtime
	StartParallel   int           `json:"start_parallel"`    // containers per start burst
	StartRounds     int           `json:"start_rounds"`      // start bursts per runtime
	OOMRuns         int           `json:"oom_runs"`          // OOM kills per runtime
	ExecLatencyRuns int           `json:"exec_latency_runs"` // single execs per runtime
	ProfileRuns     int           `json:"profile_runs"`      // traced lifecycles per runtime; 0: none
	PodRounds       int           `json:"pod_rounds"`        // CRI pod starts per variant; 0: no pod figures
	PodCount        int           `json:"pod_count"`         // idle pods per variant for the memory per pod
	PollCounts      []int         `json:"poll_counts"`       // containers per runtime under 1 Hz Stats polling
	PollTime        time.Duration `json:"poll_ns"`           // how long the polling goes on; memory is read over its last minute
	ProbeCounts     []int         `json:"probe_counts"`      // exec probes per runtime after which memory is read
	GroupCounts     []int         `json:"group_counts"`      // containers in one group shim
	StartRuns       int           `json:"start_runs"`        // start actions alone per runtime
	// Steps, when not empty, names the only steps to run.
	Steps []string `json:"steps,omitempty"`
}

// settle is how long the idle memory steps wait before they read a shim.
// Each shim gives its free memory back to the system once it is idle, and
// a reading taken before that compares a shim that has with one that has
// not. Mine trims itself 5 s after its last call; runc-v2 calls
// debug.FreeOSMemory every 30 s from its start, whatever it is doing
// (containerd's pkg/shim), and gave back about 0.2 MiB of one idle
// container's shim at its first tick. Past 30 s of idleness both have
// given back what the last calls left.
const settle = 32 * time.Second

// DefaultOptions are the sizes of `hack/bench.sh`.
func DefaultOptions() Options {
	return Options{
		LifecycleRuns:   60,
		LifecycleWarm:   2,
		MemoryCounts:    []int{1, 10, 50},
		Settle:          settle,
		ExecParallel:    50,
		ExecRounds:      8,
		StartParallel:   50,
		StartRounds:     4,
		OOMRuns:         40,
		ExecLatencyRuns: 60,
		ProfileRuns:     12,
		PodRounds:       20,
		PodCount:        5,
		PollCounts:      []int{10, 50},
		PollTime:        190 * time.Second, // read from 130 s on: past the runtime's forced GC every 2 minutes
		ProbeCounts:     []int{1000},
		GroupCounts:     []int{1, 10, 50},
		StartRuns:       40,
	}
}

// QuickOptions are a few samples of everything: they check the harness, not
// the shims (under a minute).
func QuickOptions() Options {
	return Options{LifecycleRuns: 3, LifecycleWarm: 1, MemoryCounts: []int{1, 3}, Settle: time.Second,
		ExecParallel: 5, ExecRounds: 2, StartParallel: 5, StartRounds: 1, OOMRuns: 2, ExecLatencyRuns: 3, ProfileRuns: 2,
		PollCounts: []int{3}, PollTime: 3 * time.Second, ProbeCounts: []int{20}, GroupCounts: []int{1, 3}, StartRuns: 3,
		PodRounds: 2, PodCount: 2}
}

// StepNames are the steps of a run, in order.
var StepNames = []string{"start alone", "lifecycle", "profile", "exec exit", "oom", "idle memory", "pods", "stats polling",
	"exec probes", "group shim", "parallel exec", "concurrent start"}

// Host describes the machine.
type Host struct {
	Kernel   string `json:"kernel"`
	CPU      string `json:"cpu"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	Cgroup   string `json:"cgroup"`
}

// Report is the result of a full run; it is written as JSON.
type Report struct {
	Date        string   `json:"date"`
	Host        Host     `json:"host"`
	Versions    Versions `json:"versions"`
	Snapshotter string   `json:"snapshotter"`
	// ContainerdRoot is the filesystem of containerd's root, where the
	// snapshots are (not recorded by the runs that had it on tmpfs).
	ContainerdRoot string              `json:"containerd_root_fs,omitempty"`
	Options        Options             `json:"options"`
	LoadBefore     [3]float64          `json:"load_before"`
	LoadAfter      [3]float64          `json:"load_after"`
	StepLoad       []StepLoad          `json:"step_load"`
	Seconds        float64             `json:"seconds"`
	Binaries       map[string]Binary   `json:"binaries"`
	Lifecycle      *LifecycleResult    `json:"lifecycle,omitempty"`
	Memory         []MemoryPoint       `json:"idle_memory,omitempty"`
	Exec           *BurstResult        `json:"parallel_exec,omitempty"`
	Start          *BurstResult        `json:"concurrent_start,omitempty"`
	OOM            *OOMResult          `json:"oom,omitempty"`
	ExecExit       *ExecExitResult     `json:"exec_exit,omitempty"`
	Profile        map[string]*Profile `json:"profile,omitempty"`
	Pods           *PodResult          `json:"pods,omitempty"`
	ProfileNote    string              `json:"profile_note,omitempty"`
	StartAlone     *Comparison         `json:"start_alone,omitempty"`
	Poll           []PollPoint         `json:"stats_polling,omitempty"`
	Probes         []ProbePoint        `json:"exec_probes,omitempty"`
	Group          []GroupPoint        `json:"group_shim,omitempty"`
	// GroupOutput is Group with stdout and stderr FIFOs for every
	// container, as CRI starts a pod's containers.
	GroupOutput []GroupPoint `json:"group_shim_output,omitempty"`
}

// StepLoad is the load average when a step began. It counts the
// benchmark's own processes too: after the bursts it stays high for a
// minute although the machine is idle again.
type StepLoad struct {
	Step string     `json:"step"`
	Load [3]float64 `json:"load"`
}

// Run measures everything Options ask for, in a fixed order, and returns the
// report. A failing step ends the run with the report so far.
func Run(ctx context.Context, e *Env, o Options) (*Report, error) {
	begin := time.Now()
	r := &Report{
		Date:           begin.UTC().Format(time.RFC3339),
		Host:           hostInfo(),
		Versions:       e.Versions(ctx),
		Snapshotter:    e.snapshotter,
		ContainerdRoot: e.rootFS,
		Options:        o,
		LoadBefore:     LoadAvg(),
	}
	defer func() {
		r.LoadAfter = LoadAvg()
		r.Seconds = time.Since(begin).Seconds()
	}()
	var err error
	// Flush the freshly built shim's pages, so they count as clean.
	unix.Sync()
	if r.Binaries, err = e.Binaries(); err != nil {
		return r, err
	}
	// The heaviest steps last: concurrent starts load the machine (and the
	// load average, which counts the benchmark's own processes) most.
	steps := []struct {
		name string
		run  func() error
	}{
		{"start alone", func() error {
			c, err := e.StartAlone(ctx, o.StartRuns)
			r.StartAlone = &c
			return err
		}},
		{"lifecycle", func() (err error) {
			r.Lifecycle, err = e.Lifecycle(ctx, o.LifecycleRuns, o.LifecycleWarm)
			return err
		}},
		{"profile", func() error {
			if o.ProfileRuns == 0 {
				r.ProfileNote = "not run"
				return nil
			}
			p, err := e.TraceLifecycles(ctx, o.ProfileRuns)
			if err != nil {
				// Tracing is optional: the machine may have no perf.
				r.ProfileNote = err.Error()
				e.logf("lifecycle trace skipped: %v", err)
				return nil
			}
			r.Profile = p
			return nil
		}},
		{"exec exit", func() (err error) {
			r.ExecExit, err = e.ExecExit(ctx, o.ExecLatencyRuns)
			return err
		}},
		{"oom", func() (err error) {
			r.OOM, err = e.OOM(ctx, o.OOMRuns)
			return err
		}},
		{"idle memory", func() (err error) {
			r.Memory, err = e.Memory(ctx, o.MemoryCounts, o.Settle)
			return err
		}},
		{"pods", func() (err error) {
			if o.PodRounds == 0 {
				return nil
			}
			r.Pods, err = e.Pods(ctx, o.PodRounds, o.PodCount, o.Settle)
			return err
		}},
		{"stats polling", func() (err error) {
			r.Poll, err = e.PollMemory(ctx, o.PollCounts, o.PollTime)
			return err
		}},
		{"exec probes", func() (err error) {
			r.Probes, err = e.ExecProbes(ctx, o.ProbeCounts)
			return err
		}},
		{"group shim", func() (err error) {
			// Read after the same idle time as the idle memory: past mine's
			// trim at every count, so that one reading is not taken
			// trimmed and another not (the order of the two runtimes'
			// starts alternates with the count).
			if r.Group, err = e.GroupShim(ctx, o.GroupCounts, o.Settle, false); err != nil {
				return err
			}
			r.GroupOutput, err = e.GroupShim(ctx, o.GroupCounts, o.Settle, true)
			return err
		}},
		{"parallel exec", func() (err error) {
			r.Exec, err = e.ParallelExec(ctx, o.ExecParallel, o.ExecRounds)
			return err
		}},
		{"concurrent start", func() (err error) {
			r.Start, err = e.ConcurrentStart(ctx, o.StartParallel, o.StartRounds)
			return err
		}},
	}
	for _, s := range steps {
		if len(o.Steps) > 0 && !slices.Contains(o.Steps, s.name) {
			continue
		}
		start := time.Now()
		load := LoadAvg()
		r.StepLoad = append(r.StepLoad, StepLoad{Step: s.name, Load: load})
		e.logf("%s: start (load %s)", s.name, fmtLoad(load))
		if err := s.run(); err != nil {
			return r, fmt.Errorf("%s: %w\ncontainerd log, last lines:\n%s", s.name, err, e.d.logTail(20))
		}
		e.logf("%s: done in %.1fs", s.name, time.Since(start).Seconds())
	}
	return r, nil
}

// LoadAvg returns the 1, 5 and 15 minute load averages.
func LoadAvg() [3]float64 {
	var l [3]float64
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(data))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

func fmtLoad(l [3]float64) string { return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2]) }

func hostInfo() Host {
	h := Host{CPUs: runtime.NumCPU()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if m, err := readKB("/proc/meminfo"); err == nil {
		h.MemoryMB = int(m["MemTotal"] / 1024)
	}
	h.Cgroup = "v1 (memory controller in a v1 hierarchy)"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		h.Cgroup = "v2 (unified)"
	}
	return h
}
