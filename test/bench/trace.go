package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The lifecycle trace: `perf record` of the scheduler's process
// tracepoints (exec, exit, fork) on every CPU, with CLOCK_MONOTONIC
// timestamps, while `ctr run --rm IMAGE ID true` runs for each runtime.
// Every exec and exit of containerd's descendants, ctr, the shims, runc and
// the container process is a milestone of the run; their median times
// after ctr's exec show where the lifecycle's wall time goes. The
// tracepoints cost a few microseconds per event and need no PMU (these
// machines have none: `perf stat -e instructions` is "not supported").

// Profile is the traced lifecycle of one runtime: its milestones, and the
// phases between them.
type Profile struct {
	Runs   int     `json:"runs"`
	Marks  []Mark  `json:"marks"`
	Phases []Phase `json:"phases"`
}

// Phase is the time between two milestones, median and p90 over the runs
// that had both.
type Phase struct {
	Name   string  `json:"name"`
	From   string  `json:"from"`
	To     string  `json:"to"`
	Median float64 `json:"median_ms"`
	P90    float64 `json:"p90_ms"`
	Runs   int     `json:"runs"`
}

// phases cut a lifecycle into consecutive parts, from ctr's exec to its
// exit; a part between two runc invocations holds the shim's and
// containerd's work (and their round trips with ctr).
var phases = []struct{ name, from, to string }{
	{"ctr and containerd, before the shim", "ctr exec", "shim start exec"},
	{"shim start, until it answers", "shim start exec", "shim start exit"},
	{"to runc create (Create RPC, rootfs mount)", "shim start exit", "runc create exec"},
	{"runc create", "runc create exec", "runc create exit"},
	{"to runc start (Create reply, Wait, Start RPC)", "runc create exit", "runc start exec"},
	{"runc start", "runc start exec", "runc start exit"},
	{"to the container's exec", "runc start exit", "container exec"},
	{"container runs true", "container exec", "container exit"},
	{"to runc delete (reap, /tasks/exit, Delete RPC)", "container exit", "runc delete exec"},
	{"runc delete", "runc delete exec", "runc delete exit"},
	{"to ctr's exit (Shutdown, cleanup, snapshot removal)", "runc delete exit", "ctr exit"},
}

// Mark is one milestone of a traced lifecycle: its median and 90th
// percentile time after ctr's exec, over the runs that had it.
type Mark struct {
	Name   string  `json:"name"`
	Median float64 `json:"median_ms"`
	P90    float64 `json:"p90_ms"`
	Runs   int     `json:"runs"`
}

var tracepoints = []string{"sched:sched_process_exec", "sched:sched_process_exit", "sched:sched_process_fork"}

const perfTimeout = 30 * time.Second

// TraceLifecycles runs n lifecycles per runtime, alternating, under perf
// and returns the profile of each runtime, keyed by its short name.
func (e *Env) TraceLifecycles(ctx context.Context, n int) (map[string]*Profile, error) {
	perfBin, err := exec.LookPath("perf")
	if err != nil {
		return nil, errors.New("perf not found (Debian package linux-perf)")
	}
	dir := filepath.Join(e.dir, "trace")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "perf.data")
	rec, err := startPerf(perfBin, dir, data)
	if err != nil {
		return nil, err
	}
	type window struct {
		rt    Runtime
		start float64
	}
	var windows []window
	runErr := func() error {
		for i := range n {
			for _, rt := range order(i) {
				windows = append(windows, window{rt: rt, start: monotonic()})
				if _, err := e.CtrRun(ctx, rt, fmt.Sprintf("tr-%s-%s-%d", rt.Short(), e.tag, i)); err != nil {
					return err
				}
			}
		}
		return nil
	}()
	if err := errors.Join(runErr, rec.stop()); err != nil {
		return nil, err
	}

	cmd := exec.CommandContext(ctx, perfBin, "script", "-i", data, "-F", "pid,tid,time,event,trace", "--ns")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	evs, perr := parsePerfScript(out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("perf script: %w: %s", err, stderr.String())
	}
	if perr != nil {
		return nil, perr
	}

	tr := newProcTree(evs, []int{e.d.pid(), os.Getpid()})
	runs := map[Runtime][][]namedTime{}
	for i, w := range windows {
		end := 1e18
		if i+1 < len(windows) {
			end = windows[i+1].start
		}
		bins := []string{filepath.Base(e.shims[w.rt]), filepath.Base(e.shimExe[w.rt])}
		if marks := tr.milestones(w.start, end, bins); marks != nil {
			runs[w.rt] = append(runs[w.rt], marks)
		}
	}
	profiles := map[string]*Profile{}
	for _, rt := range Runtimes {
		profiles[rt.Short()] = summarizeRuns(runs[rt])
	}
	return profiles, nil
}

// perfRecorder is a running `perf record`, enabled through its control
// FIFO so that recording has begun when startPerf returns.
type perfRecorder struct {
	cmd      *exec.Cmd
	ctl, ack *os.File
	done     chan error
}

func startPerf(perfBin, dir, data string) (*perfRecorder, error) {
	ctlPath, ackPath := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	for _, p := range []string{ctlPath, ackPath} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{"record", "-q", "-k", "mono", "-a", "-D", "-1",
		"--control", "fifo:" + ctlPath + "," + ackPath, "-o", data}
	for _, t := range tracepoints {
		args = append(args, "-e", t)
	}
	cmd := exec.Command(perfBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &perfRecorder{cmd: cmd, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait() }()
	// O_RDWR: opening either end never blocks, whatever perf does.
	var err error
	if r.ctl, err = os.OpenFile(ctlPath, os.O_RDWR, 0); err == nil {
		r.ack, err = os.OpenFile(ackPath, os.O_RDWR, 0)
	}
	if err == nil {
		err = r.command("enable")
	}
	if err != nil {
		_ = r.kill()
		return nil, fmt.Errorf("perf record: %w: %s", err, stderr.String())
	}
	return r, nil
}

// command writes cmd to perf's control FIFO and waits for the ack.
func (r *perfRecorder) command(cmd string) error {
	if _, err := r.ctl.WriteString(cmd + "\n"); err != nil {
		return err
	}
	if err := r.ack.SetReadDeadline(time.Now().Add(perfTimeout)); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := r.ack.Read(buf)
	if err != nil {
		return fmt.Errorf("no ack for %q: %w", cmd, err)
	}
	// perf writes "ack\n" and a NUL.
	if strings.Trim(string(buf[:n]), "\x00\n ") != "ack" {
		return fmt.Errorf("perf answered %q to %q", buf[:n], cmd)
	}
	return nil
}

// stop disables the events and ends perf, which writes the data file.
func (r *perfRecorder) stop() error {
	err := r.command("disable")
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case werr := <-r.done:
		// perf exits non-zero after SIGINT on some versions; the data
		// file is what counts, and perf script will say if it is bad.
		_ = werr
	case <-time.After(perfTimeout):
		_ = r.cmd.Process.Kill()
		err = errors.Join(err, errors.New("perf record did not exit after SIGINT"))
	}
	r.ctl.Close()
	r.ack.Close()
	return err
}

func (r *perfRecorder) kill() error {
	_ = r.cmd.Process.Kill()
	<-r.done
	if r.ctl != nil {
		r.ctl.Close()
	}
	if r.ack != nil {
		r.ack.Close()
	}
	return nil
}

// procEvent is one line of `perf script -F pid,tid,time,event,trace --ns`.
type procEvent struct {
	pid, tid int     // thread group and thread of the task that hit the tracepoint
	t        float64 // seconds, CLOCK_MONOTONIC
	kind     string  // "exec", "exit", "fork"
	fields   map[string]string
}

// parsePerfScript parses lines like
//
//	4480/4480   2655.813755924: sched:sched_process_exec: filename=/bin/true pid=4480 old_pid=4480
func parsePerfScript(r io.Reader) ([]procEvent, error) {
	var evs []procEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		ids, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		p, t, ok := strings.Cut(ids, "/")
		if !ok {
			continue
		}
		pid, err1 := strconv.Atoi(p)
		tid, err2 := strconv.Atoi(t)
		rest = strings.TrimSpace(rest)
		ts, rest, ok := strings.Cut(rest, ": ")
		if err1 != nil || err2 != nil || !ok {
			continue
		}
		secs, err := strconv.ParseFloat(ts, 64)
		if err != nil {
			continue
		}
		name, trace, ok := strings.Cut(rest, ": ")
		if !ok {
			continue
		}
		kind, ok := strings.CutPrefix(name, "sched:sched_process_")
		if !ok {
			continue
		}
		ev := procEvent{pid: pid, tid: tid, t: secs, kind: kind, fields: map[string]string{}}
		for _, kv := range strings.Fields(trace) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				ev.fields[k] = v
			}
		}
		evs = append(evs, ev)
	}
	return evs, sc.Err()
}

// proc is one traced process: its execs and its exit.
type proc struct {
	pid    int
	parent int // thread group that forked it; 0 if not seen
	execs  []procExec
	exit   float64 // 0 while running
}

type procExec struct {
	t    float64
	file string
}

// procTree is the processes descended from the root processes, built from
// the fork events (a fork by a traced thread group traces the child).
type procTree struct {
	procs map[int]*proc
	execs []*proc // processes in the order of their execs, one entry per exec
	order []int   // index into the proc's execs for each entry of execs
}

func newProcTree(evs []procEvent, roots []int) *procTree {
	tr := &procTree{procs: map[int]*proc{}}
	traced := map[int]bool{}
	for _, r := range roots {
		traced[r] = true
	}
	slices.SortStableFunc(evs, func(a, b procEvent) int {
		switch {
		case a.t < b.t:
			return -1
		case a.t > b.t:
			return 1
		}
		return 0
	})
	get := func(pid int) *proc {
		p := tr.procs[pid]
		if p == nil {
			p = &proc{pid: pid}
			tr.procs[pid] = p
		}
		return p
	}
	for _, ev := range evs {
		switch ev.kind {
		case "fork":
			child, err := strconv.Atoi(ev.fields["child_pid"])
			if err != nil || !traced[ev.pid] {
				continue
			}
			// A new thread of a traced process is traced too, which is
			// harmless: its events carry the process's pid.
			traced[child] = true
			if _, ok := tr.procs[child]; !ok {
				get(child).parent = ev.pid
			}
		case "exec":
			if !traced[ev.pid] {
				continue
			}
			p := get(ev.pid)
			p.execs = append(p.execs, procExec{t: ev.t, file: ev.fields["filename"]})
			tr.execs = append(tr.execs, p)
			tr.order = append(tr.order, len(p.execs)-1)
		case "exit":
			if traced[ev.pid] && ev.fields["group_dead"] == "true" {
				get(ev.pid).exit = ev.t
			}
		}
	}
	return tr
}

// namedTime is a milestone of one run, in seconds.
type namedTime struct {
	name string
	t    float64
}

// milestones returns the milestones of the `ctr run` that started in
// [start, end), with times in milliseconds after ctr's exec, or nil when
// the window holds no complete run. shimBins are the base names the shim
// of the run was executed as.
func (tr *procTree) milestones(start, end float64, shimBins []string) []namedTime {
	var ctr *proc
	var shims, runcs []*proc
	var container *proc
	var containerExec float64 // the container process's exec of its command
	for i, p := range tr.execs {
		x := p.execs[tr.order[i]]
		if x.t < start || x.t >= end {
			continue
		}
		switch base := filepath.Base(x.file); {
		case base == "ctr" && ctr == nil:
			ctr = p
		case slices.Contains(shimBins, base):
			shims = append(shims, p)
		case base == "runc":
			runcs = append(runcs, p)
		case base == "true" && container == nil:
			container, containerExec = p, x.t
		}
	}
	if ctr == nil || ctr.exit == 0 {
		return nil
	}
	t0 := ctr.execs[0].t
	var marks []namedTime
	mark := func(name string, t float64) {
		if t > 0 {
			marks = append(marks, namedTime{name: name, t: (t - t0) * 1000})
		}
	}
	mark("ctr exit", ctr.exit)
	// The shim binary runs as `start` (exits once the daemon is launched), then
	// as the daemon (re-executed by start), then as `delete`: containerd
	// 2.x runs it when the shim's connection closes, after shutdown.
	shimRoles := []string{"shim start", "shim daemon", "shim delete"}
	for i, p := range shims {
		role := fmt.Sprintf("shim run %d", i+1)
		if i < len(shimRoles) {
			role = shimRoles[i]
		}
		mark(role+" exec", firstExecIn(p, start, end))
		mark(role+" exit", p.exit)
	}
	if container != nil {
		mark("container exec", containerExec)
		mark("container exit", container.exit)
	}
	counts := map[string]int{}
	for _, p := range runcs {
		role := tr.runcRole(p, container)
		counts[role]++
		if counts[role] > 1 {
			role = fmt.Sprintf("%s %d", role, counts[role])
		}
		mark(role+" exec", firstExecIn(p, start, end))
		mark(role+" exit", p.exit)
	}
	slices.SortStableFunc(marks, func(a, b namedTime) int {
		switch {
		case a.t < b.t:
			return -1
		case a.t > b.t:
			return 1
		}
		return 0
	})
	return append([]namedTime{{name: "ctr exec", t: 0}}, marks...)
}

// runcRole names a runc invocation by what it did: "runc create" forked
// runc's init (a child that executed something else than runc), "runc
// start" ran before the container process exited, "runc delete" after.
func (tr *procTree) runcRole(p, container *proc) string {
	for _, c := range tr.procs {
		if c.parent == p.pid && len(c.execs) > 0 && filepath.Base(c.execs[0].file) != "runc" {
			return "runc create"
		}
	}
	if container == nil || container.exit == 0 || len(p.execs) == 0 || p.execs[0].t < container.exit {
		return "runc start"
	}
	return "runc delete"
}

func markAt(run []namedTime, name string) (float64, bool) {
	for _, m := range run {
		if m.name == name {
			return m.t, true
		}
	}
	return 0, false
}

func firstExecIn(p *proc, start, end float64) float64 {
	for _, x := range p.execs {
		if x.t >= start && x.t < end {
			return x.t
		}
	}
	return 0
}

// summarizeRuns gives each milestone's median and p90 over the runs, in the
// order of the medians.
func summarizeRuns(runs [][]namedTime) *Profile {
	byName := map[string][]float64{}
	for _, run := range runs {
		for _, m := range run {
			byName[m.name] = append(byName[m.name], m.t)
		}
	}
	p := &Profile{Runs: len(runs)}
	for _, ph := range phases {
		var ds []float64
		for _, run := range runs {
			from, okFrom := markAt(run, ph.from)
			to, okTo := markAt(run, ph.to)
			if okFrom && okTo {
				ds = append(ds, to-from)
			}
		}
		s := Summarize(ds)
		p.Phases = append(p.Phases, Phase{Name: ph.name, From: ph.from, To: ph.to, Median: s.Median, P90: s.P90, Runs: s.N})
	}
	for name, ts := range byName {
		s := Summarize(ts)
		p.Marks = append(p.Marks, Mark{Name: name, Median: s.Median, P90: s.P90, Runs: s.N})
	}
	slices.SortFunc(p.Marks, func(a, b Mark) int {
		switch {
		case a.Median < b.Median:
			return -1
		case a.Median > b.Median:
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return p
}
