package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// The figures of a Kubernetes node: memory while CRI polls Stats, after
// many exec probes, in a pod's group shim, and the cost of `start` alone.

// summarizeMem summarises the memory of a set of shims.
func summarizeMem(samples []Mem) ShimMemory {
	var out ShimMemory
	var rss, pss, anon, file, vm, hwm, threads []float64
	for _, m := range samples {
		rss, pss, anon, file, vm = append(rss, m.Rss), append(pss, m.Pss), append(anon, m.PssAnon), append(file, m.PssFile), append(vm, m.VmRSS)
		hwm, threads = append(hwm, m.VmHWM), append(threads, float64(m.Threads))
		out.TotalRss += m.Rss
		out.TotalPss += m.Pss
		out.TotalAnon += m.PssAnon
	}
	out.Samples = samples
	out.Processes = len(samples)
	out.Rss, out.Pss, out.PssAnon, out.PssFile = Summarize(rss), Summarize(pss), Summarize(anon), Summarize(file)
	out.VmRSS, out.PeakRss, out.Threads = Summarize(vm), Summarize(hwm), Summarize(threads)
	return out
}

// memOfShims reads the memory of the shim daemons serving boxes, and checks
// that there are want of them.
func (e *Env) memOfShims(boxes []*box, want int) ([]Mem, []shimProc, error) {
	ids := map[string]bool{}
	for _, b := range boxes {
		ids[b.id] = true
	}
	procs, err := e.shimProcs(ids)
	if err != nil {
		return nil, nil, err
	}
	if len(procs) != want {
		return nil, nil, fmt.Errorf("%d shim processes for %d containers, want %d; processes naming them:\n%s",
			len(procs), len(boxes), want, describeProcs(ids))
	}
	var out []Mem
	for _, p := range procs {
		m, err := readMem(p.pid)
		if err != nil {
			return nil, nil, fmt.Errorf("shim %d: %w", p.pid, err)
		}
		out = append(out, m)
	}
	return out, procs, nil
}

// PollPoint is the memory of both runtimes' shims, n containers each (one
// shim per container), read while every container's Stats is called once
// a second, as containerd's CRI does (stats_collect_period): each
// process's figures are the mean of pollReadings readings over the last
// minute of the polling.
type PollPoint struct {
	Containers int        `json:"containers"`
	Seconds    float64    `json:"seconds"`
	Polls      int        `json:"polls"`
	Mine       ShimMemory `json:"mine"`
	Runc       ShimMemory `json:"runc_v2"`
	// Floor is the memory of as many floor servers (floor.go), one per
	// container, each polled directly once a second with a Wait held, read
	// at the same time; nil without a floor server.
	Floor *ShimMemory `json:"floor,omitempty"`
	// CPU is each shim's own CPU time over the polling, in ms per
	// second of polling.
	CPU Comparison `json:"cpu_ms_per_s"`
}

// PollMemory starts n sleeping containers of each runtime, polls the
// metrics of all 2n once a second (each on its own phase) for d, and reads
// every shim's memory over the last minute of the polling (readPolled).
func (e *Env) PollMemory(ctx context.Context, counts []int, d time.Duration) ([]PollPoint, error) {
	var out []PollPoint
	for _, n := range counts {
		p, err := e.pollMemory(ctx, n, d)
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (e *Env) pollMemory(ctx context.Context, n int, d time.Duration) (_ PollPoint, err error) {
	p := PollPoint{Containers: n, Seconds: d.Seconds()}
	boxes := map[Runtime][]*box{}
	defer func() {
		for _, bs := range boxes {
			err = errors.Join(err, e.removeAll(ctx, bs))
		}
	}()
	for _, rt := range order(n) {
		if err := dropCache(e.shimExe[rt]); err != nil {
			return p, err
		}
		e.logf("stats polling: starting %d %s containers", n, rt.Short())
		bs, err := e.startSleepers(ctx, rt, fmt.Sprintf("poll-%s-%d-%s", rt.Short(), n, e.tag), n)
		if err != nil {
			return p, err
		}
		boxes[rt] = bs
	}
	var floors []*floor
	defer func() { err = errors.Join(err, closeFloors(floors)) }()
	if e.floorExe != "" {
		if err := dropCache(e.floorExe); err != nil {
			return p, err
		}
		e.logf("stats polling: starting %d floor servers", n)
		for i, b := range boxes[Mine] {
			f, err := e.startFloor(ctx, fmt.Sprintf("floor-poll-%d-%d", n, i), b.t.Pid(), "")
			if err != nil {
				return p, err
			}
			floors = append(floors, f)
		}
	}
	// Every shim's containers through containerd, as CRI polls them, and
	// the floor servers directly.
	type target struct {
		name string
		poll func(context.Context) error
	}
	var targets []target
	for _, b := range append(append([]*box{}, boxes[Mine]...), boxes[RuncV2]...) {
		targets = append(targets, target{b.id, func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(e.nsCtx(ctx), 2*time.Second)
			defer cancel()
			_, err := b.t.Metrics(cctx)
			return err
		}})
	}
	for i, f := range floors {
		targets = append(targets, target{fmt.Sprintf("floor %d", i), f.stats})
	}
	cpu0 := map[int]CPU{}
	for _, rt := range Runtimes {
		_, procs, err := e.memOfShims(boxes[rt], n)
		if err != nil {
			return p, err
		}
		for _, sp := range procs {
			if cpu0[sp.pid], err = readCPU(sp.pid); err != nil {
				return p, err
			}
		}
	}
	began := time.Now()
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var pollErr error
	polls := 0
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the polls over the second, as independent timers are.
			phase := time.Duration(i) * time.Second / time.Duration(len(targets))
			select {
			case <-time.After(phase):
			case <-pctx.Done():
				return
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				err := t.poll(pctx)
				mu.Lock()
				if err != nil && pctx.Err() == nil && pollErr == nil {
					pollErr = fmt.Errorf("metrics of %s: %w", t.name, err)
				}
				polls++
				mu.Unlock()
				select {
				case <-tick.C:
				case <-pctx.Done():
					return
				}
			}
		}()
	}
	e.logf("stats polling: %d containers per runtime, %v", n, d)
	err = e.readPolled(began, d, boxes, floors, n, &p, cpu0)
	stop()
	wg.Wait()
	if err != nil {
		return p, err
	}
	p.Polls = polls
	return p, pollErr
}

// pollReadings is how many times the polling step reads every process's
// memory: once in the middle of each sixth of the last minute of the
// polling (of its second half, if shorter), so that no point of a
// minute's cycle counts twice; a process's figures are the mean of its
// readings (VmHWM: the last). Shims give memory back on their own clocks
// (mine checks its heap and drops its executable's pages every minute,
// runc-v2 collects every 30 s), so a single reading would depend on where
// in those cycles it fell.
const pollReadings = 6

// readPolled reads the memory of the polled shims and floors pollReadings
// times before began+d, and the shims' CPU over the polling, into p.
func (e *Env) readPolled(began time.Time, d time.Duration, boxes map[Runtime][]*box, floors []*floor, n int, p *PollPoint, cpu0 map[int]CPU) error {
	window := min(time.Minute, d/2)
	byPid := map[Runtime]map[int][]Mem{}
	byFloor := make([][]Mem, len(floors))
	for i := range pollReadings {
		time.Sleep(time.Until(began.Add(d - window + window*time.Duration(2*i+1)/(2*pollReadings))))
		for _, rt := range Runtimes {
			mems, procs, err := e.memOfShims(boxes[rt], n)
			if err != nil {
				return err
			}
			if byPid[rt] == nil {
				byPid[rt] = map[int][]Mem{}
			}
			for j, sp := range procs {
				byPid[rt][sp.pid] = append(byPid[rt][sp.pid], mems[j])
			}
		}
		for j, f := range floors {
			m, err := f.mem()
			if err != nil {
				return err
			}
			byFloor[j] = append(byFloor[j], m)
		}
	}
	var cpu Pair
	for _, rt := range Runtimes {
		var mems []Mem
		for _, pid := range slices.Sorted(maps.Keys(byPid[rt])) {
			ms := byPid[rt][pid]
			if len(ms) != pollReadings {
				return fmt.Errorf("%s shim %d read %d times of %d: its containers' shims changed during the polling", rt, pid, len(ms), pollReadings)
			}
			mems = append(mems, meanMem(ms))
			c, err := readCPU(pid)
			if err != nil {
				return err
			}
			cpu.add(rt, c.sub(cpu0[pid]).Self/time.Since(began).Seconds())
		}
		if rt == Mine {
			p.Mine = summarizeMem(mems)
		} else {
			p.Runc = summarizeMem(mems)
		}
	}
	if len(floors) > 0 {
		var mems []Mem
		for _, ms := range byFloor {
			mems = append(mems, meanMem(ms))
		}
		fm := summarizeMem(mems)
		p.Floor = &fm
	}
	p.CPU = cpu.Compare("ms/s")
	return nil
}

// ProbePoint is the memory of one shim per runtime after a number of execs
// into its container.
type ProbePoint struct {
	Execs int `json:"execs"`
	Mine  Mem `json:"mine"`
	Runc  Mem `json:"runc_v2"`
	// Floor is the memory of a floor server (floor.go) with one connection
	// and a Wait that has run as many execs itself, into mine's container;
	// nil without a floor server.
	Floor *Mem `json:"floor,omitempty"`
}

// ExecProbes runs execs of `true` one at a time into one container per
// runtime, alternating the runtimes exec by exec, as kubelet's exec probes
// do, and reads both shims' memory before the first exec and right after
// each checkpoint (a count of execs per runtime).
func (e *Env) ExecProbes(ctx context.Context, checkpoints []int) (_ []ProbePoint, err error) {
	targets, err := e.execTargets(ctx, "probe")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, e.removeTargets(ctx, targets)) }()
	// A floor server with a Wait held, as containerd holds one per task,
	// that runs the same execs into mine's container, one after each pair
	// of the shims': the least any shim on this stack keeps after them.
	var fl *floor
	if e.floorExe != "" {
		if fl, err = e.startFloor(ctx, "floor-probes", targets[Mine].t.Pid(), targets[Mine].id); err != nil {
			return nil, err
		}
		defer func() { err = errors.Join(err, fl.close()) }()
	}
	read := func(execs int) (ProbePoint, error) {
		p := ProbePoint{Execs: execs}
		if fl != nil {
			m, err := fl.mem()
			if err != nil {
				return p, err
			}
			p.Floor = &m
		}
		for _, rt := range Runtimes {
			pid, err := e.shimOf(targets[rt])
			if err != nil {
				return p, err
			}
			m, err := readMem(pid)
			if err != nil {
				return p, err
			}
			if rt == Mine {
				p.Mine = m
			} else {
				p.Runc = m
			}
		}
		return p, nil
	}
	spec, err := targets[Mine].execSpec(ctx, e, "true")
	if err != nil {
		return nil, err
	}
	if fl != nil {
		// The shims have run one exec each (execTargets): so does the floor.
		if err := fl.execTrue(e.nsCtx(ctx), spec, "warm"); err != nil {
			return nil, err
		}
	}
	first, err := read(0)
	if err != nil {
		return nil, err
	}
	out := []ProbePoint{first}
	done := 0
	begin := time.Now()
	for _, cp := range checkpoints {
		for ; done < cp; done++ {
			for _, rt := range order(done) {
				if err := targets[rt].execTrue(ctx, e, spec, fmt.Sprintf("p%d", done)); err != nil {
					return out, err
				}
			}
			if fl != nil {
				if err := fl.execTrue(e.nsCtx(ctx), spec, fmt.Sprintf("f%d", done)); err != nil {
					return out, err
				}
			}
			if done > 0 && done%1000 == 0 {
				e.logf("exec probes: %d per runtime in %.0fs", done, time.Since(begin).Seconds())
			}
		}
		p, err := read(done)
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, nil
}

// GroupPoint is the memory of the one shim serving a group of containers
// (the io.containerd.runc.v2.group annotation), per runtime.
type GroupPoint struct {
	Containers int `json:"containers"`
	Mine       Mem `json:"mine"`
	Runc       Mem `json:"runc_v2"`
	// MineGoroutines is counted after every memory reading, on the way
	// down from the largest count (GroupShim).
	MineGoroutines int `json:"mine_goroutines"`
	// MineCreators counts mine's goroutines by the function that created
	// them ("created by" of its stacks file).
	MineCreators map[string]int `json:"mine_goroutines_by_creator"`
	// Conns more ttrpc connections, each with a Wait in flight, were opened
	// to each group shim at the largest count, as containerd holds one of
	// each per task of a group; MineConns and RuncConns are the shims'
	// memory then. What they add is the part of a container's cost that
	// containerd's calls make, whatever the shim does with its container.
	Conns     int `json:"conns,omitempty"`
	MineConns Mem `json:"mine_with_conns,omitempty"`
	RuncConns Mem `json:"runc_v2_with_conns,omitempty"`
	// Floor is a floor server's memory (floor.go) with one connection and
	// its Wait, and FloorConns with Conns more: what they add is the least
	// any shim pays per container for containerd's connection and Wait.
	// Nil without a floor server.
	Floor      *Mem `json:"floor,omitempty"`
	FloorConns *Mem `json:"floor_with_conns,omitempty"`
}

// groupConns is how many connections the probe of GroupShim opens.
const groupConns = 50

// groupAnnotation puts containers in one shim, for both runtimes.
const groupAnnotation = "io.containerd.runc.v2.group"

// GroupShim grows a group of sleeping containers per runtime to each count
// in turn (counts ascending) and reads the group shim's memory at each; at
// the largest count it also opens more connections (withConns). Mine's
// goroutines are counted last, on the way down: the count comes from the
// shim's SIGUSR1 stacks dump, whose buffer (up to twice the dump's size)
// is garbage that stays in the shim's heap until its next collections, so
// a memory reading taken after a dump would count it, and the next
// containers or connections would reuse it. With output, each container
// has stdout and stderr FIFOs, as a pod's containers have under CRI;
// without, no stdio.
func (e *Env) GroupShim(ctx context.Context, counts []int, settle time.Duration, output bool) (_ []GroupPoint, err error) {
	for i := 1; i < len(counts); i++ {
		if counts[i] <= counts[i-1] {
			return nil, fmt.Errorf("group counts %v: want them ascending", counts)
		}
	}
	boxes := map[Runtime][]*box{}
	defer func() {
		// One at a time, as they were started: runc-v2's group shim
		// exits on the Shutdown that containerd sends after each task's
		// delete once its last container is gone from its table, which
		// can be while the delete of another of its tasks still waits
		// for its answer ("ttrpc: closed", seen with parallel removal).
		for _, bs := range boxes {
			for _, b := range bs {
				err = errors.Join(err, b.remove(ctx, e))
			}
		}
	}()
	var out []GroupPoint
	for _, n := range counts {
		for _, rt := range order(n) {
			have := len(boxes[rt])
			if have >= n {
				continue
			}
			group := fmt.Sprintf("grp-%s-%s", rt.Short(), e.tag)
			if output {
				group = fmt.Sprintf("grpo-%s-%s", rt.Short(), e.tag)
			}
			e.logf("group shim: %d %s containers", n, rt.Short())
			more := make([]*box, n-have)
			// One at a time: runc-v2's start, racing with another start of
			// the same group, was seen to launch a second group shim.
			err := parallel(len(more), 1, func(i int) error {
				id := fmt.Sprintf("%s-%d", group, have+i)
				b, err := e.newBox(ctx, rt, id, []string{"sleep", "3600"}, oci.WithAnnotations(map[string]string{groupAnnotation: group}))
				if err != nil {
					return err
				}
				more[i] = b
				b.output = output
				if err := b.createTask(ctx, e); err != nil {
					return err
				}
				return b.start(ctx, e)
			})
			for _, b := range more {
				if b != nil {
					boxes[rt] = append(boxes[rt], b)
				}
			}
			if err != nil {
				return out, err
			}
		}
		time.Sleep(settle) // the last starts' calls finish, the shims go idle
		p := GroupPoint{Containers: n}
		for _, rt := range Runtimes {
			mems, _, err := e.memOfShims(boxes[rt], 1)
			if err != nil {
				return out, err
			}
			if rt == Mine {
				p.Mine = mems[0]
			} else {
				p.Runc = mems[0]
			}
		}
		if n == counts[len(counts)-1] {
			// A floor server reading the first container's cgroup, with
			// one connection and its Wait, settles while the shims are
			// probed; then it gets as many more connections.
			var fl *floor
			if e.floorExe != "" {
				if fl, err = e.startFloor(ctx, "floor-group", boxes[Mine][0].t.Pid(), ""); err != nil {
					return out, err
				}
				defer func() { err = errors.Join(err, fl.close()) }()
			}
			for _, rt := range order(n) {
				_, procs, err := e.memOfShims(boxes[rt], 1)
				if err != nil {
					return out, err
				}
				e.logf("group shim: %d more connections to the %s shim, each with a Wait", groupConns, rt.Short())
				m, err := e.withConns(ctx, boxes[rt][0], procs[0].pid, groupConns, settle)
				if err != nil {
					return out, err
				}
				if rt == Mine {
					p.MineConns = m
				} else {
					p.RuncConns = m
				}
			}
			p.Conns = groupConns
			if fl != nil {
				one, err := fl.mem()
				if err != nil {
					return out, err
				}
				e.logf("group shim: %d more connections to a floor server, each with a Wait", groupConns)
				more, err := e.withConns(ctx, boxes[Mine][0], fl.pid(), groupConns, settle)
				if err != nil {
					return out, err
				}
				p.Floor, p.FloorConns = &one, &more
			}
		}
		out = append(out, p)
	}
	// Mine's goroutines at each count, from the largest down, removing the
	// last started containers in between (the shim is found by the first
	// one's ID, on its command line). So each count is that of a group
	// grown to the largest count (and probed with more connections) and
	// then shrunk back; before 94af383 it was read on the way up.
	for i := len(out) - 1; i >= 0; i-- {
		n := out[i].Containers
		for len(boxes[Mine]) > n {
			last := boxes[Mine][len(boxes[Mine])-1]
			if err := last.remove(ctx, e); err != nil {
				return out, err // left in boxes: the deferred removal tries again
			}
			boxes[Mine] = boxes[Mine][:len(boxes[Mine])-1]
		}
		pid, err := e.shimOf(boxes[Mine][0])
		if err != nil {
			return out, err
		}
		if out[i].MineGoroutines, out[i].MineCreators, err = settledGoroutines(pid); err != nil {
			return out, err
		}
	}
	return out, nil
}

// settledGoroutines counts pid's goroutines once the count holds still:
// the goroutines of connections just closed (withConns, a removed task's)
// end shortly after the close.
func settledGoroutines(pid int) (int, map[string]int, error) {
	n, by, err := goroutinesOf(pid)
	for try := 0; err == nil && try < 20; try++ {
		time.Sleep(250 * time.Millisecond)
		var again int
		var againBy map[string]int
		if again, againBy, err = goroutinesOf(pid); err == nil && again == n {
			return n, by, nil
		}
		n, by = again, againBy
	}
	if err != nil {
		return 0, nil, err
	}
	return 0, nil, fmt.Errorf("shim %d: goroutine count still moving (%d)", pid, n)
}

// withConns opens n ttrpc connections to the shim pid serving b (the unix
// socket it listens on), calls Wait for b's task
// on each, as containerd does once per task, and reads the shim's memory
// once the calls have had settle to arrive. The calls are cancelled and the
// connections closed before it returns.
func (e *Env) withConns(ctx context.Context, b *box, pid, n int, settle time.Duration) (Mem, error) {
	socket, err := listeningSocket(pid)
	if err != nil {
		return Mem{}, fmt.Errorf("socket of the shim of %s: %w", b.id, err)
	}
	wctx, cancel := context.WithCancel(e.nsCtx(ctx))
	var clients []*ttrpc.Client
	var wg sync.WaitGroup
	defer func() {
		cancel()
		for _, c := range clients {
			c.Close()
		}
		wg.Wait()
	}()
	waitErr := make(chan error, n)
	for range n {
		conn, err := net.DialTimeout("unix", socket, 2*time.Second)
		if err != nil {
			return Mem{}, err
		}
		c := ttrpc.NewClient(conn)
		clients = append(clients, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := taskv3.NewTTRPCTaskClient(c).Wait(wctx, &taskv3.WaitRequest{ID: b.id})
			if wctx.Err() == nil {
				waitErr <- fmt.Errorf("wait for %s returned early: %v", b.id, err)
			}
		}()
	}
	time.Sleep(settle) // the calls reach the shim meanwhile
	select {
	case err := <-waitErr:
		return Mem{}, err
	default:
	}
	return readMem(pid)
}

// listeningSocket returns the path of the one unix socket pid listens on:
// the inodes of its socket descriptors looked up in /proc/net/unix, where
// a listening socket has the flag __SO_ACCEPTCON (00010000).
func listeningSocket(pid int) (string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return "", err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok && err == nil {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return "", err
	}
	var found []string
	for _, line := range strings.Split(string(data), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) == 8 && f[3] == "00010000" && inodes[f[6]] && !strings.HasPrefix(f[7], "@") {
			found = append(found, f[7])
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("process %d listens on %d unix sockets: %q", pid, len(found), found)
	}
	return found[0], nil
}

// goroutinesOf makes the mine shim daemon pid write its stacks file
// (SIGUSR1) into its working directory and returns the goroutine count of
// its first line, and the goroutines by creating function.
func goroutinesOf(pid int) (int, map[string]int, error) {
	dir, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return 0, nil, err
	}
	path := filepath.Join(dir, "shim-stacks.txt")
	_ = os.Remove(path)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return 0, nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			first, rest, _ := strings.Cut(string(data), "\n")
			if v, ok := strings.CutPrefix(strings.TrimSpace(first), "goroutines "); ok {
				n, err := strconv.Atoi(v)
				return n, creators(rest), err
			}
		}
		if time.Now().After(deadline) {
			return 0, nil, fmt.Errorf("shim %d wrote no goroutine count to %s", pid, path)
		}
		time.Sleep(10 * time.Millisecond) // polling a file the shim writes
	}
}

// creators counts the goroutines of a runtime.Stack dump by the function
// that created them (the main goroutine counts as "main").
func creators(dump string) map[string]int {
	out := map[string]int{}
	for _, g := range strings.Split(dump, "\n\n") {
		if !strings.HasPrefix(strings.TrimSpace(g), "goroutine ") {
			continue
		}
		key := "main"
		if _, after, ok := strings.Cut(g, "\ncreated by "); ok {
			key, _, _ = strings.Cut(after, " in goroutine")
			key, _, _ = strings.Cut(key, "\n")
		}
		out[key]++
	}
	return out
}

// StartAlone measures the `start` action by itself, as containerd >= 2.3
// runs it (bootstrap parameters on stdin, its flags and environment, the
// bundle as working directory with a container's config.json and the log
// FIFO read), n times per runtime, alternating: the wall time until
// `start` exits with its answer. Each daemon is shut down afterwards,
// untimed.
func (e *Env) StartAlone(ctx context.Context, n int) (Comparison, error) {
	var p Pair
	b, err := e.newBox(ctx, Mine, "startspec-"+e.tag, []string{"true"})
	if err != nil {
		return Comparison{}, err
	}
	spec, err := b.c.Spec(e.nsCtx(ctx))
	if rerr := b.remove(ctx, e); err == nil {
		err = rerr
	}
	if err != nil {
		return Comparison{}, err
	}
	config, err := json.Marshal(spec)
	if err != nil {
		return Comparison{}, err
	}
	for i := range n + 1 {
		for _, rt := range order(i) {
			d, err := e.startOnce(ctx, rt, fmt.Sprintf("start-%s-%d-%s", rt.Short(), i, e.tag), config)
			if err != nil {
				return Comparison{}, err
			}
			if i > 0 { // the first round warms the page cache
				p.add(rt, ms(d))
			}
		}
	}
	return p.Compare("ms"), nil
}

func (e *Env) startOnce(ctx context.Context, rt Runtime, id string, config []byte) (time.Duration, error) {
	bundle := filepath.Join(e.dir, "start", id)
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return 0, err
	}
	defer os.RemoveAll(bundle)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), config, 0o600); err != nil {
		return 0, err
	}
	// containerd creates the shim's log FIFO and reads it before start.
	logPath := filepath.Join(bundle, "log")
	if err := syscall.Mkfifo(logPath, 0o700); err != nil {
		return 0, err
	}
	logR, err := os.OpenFile(logPath, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := logR.Read(buf); err != nil {
				return
			}
		}
	}()
	defer logR.Close()
	params, err := proto.Marshal(&bootapi.BootstrapParams{
		InstanceID: id, Namespace: Namespace, LogLevel: bootapi.LogLevel_LOG_LEVEL_INFO,
		ContainerdVersion: "2.4.2", ContainerdGrpcAddress: e.d.socket(), ContainerdTtrpcAddress: e.d.Config.TTRPCAddress(),
		ContainerdBinary: e.containerd,
	})
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, e.shims[rt], "-namespace", Namespace, "-address", e.d.socket(),
		"-publish-binary", e.containerd, "-id", id, "start")
	cmd.Dir = bundle
	cmd.Env = append(childEnv([]string{e.binDir}), "GOMAXPROCS=2", "MAX_SHIM_VERSION=2",
		"TTRPC_ADDRESS="+e.d.Config.TTRPCAddress(), "GRPC_ADDRESS="+e.d.socket(), "NAMESPACE="+Namespace)
	cmd.Stdin = bytes.NewReader(params)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	begin := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(begin)
	if err != nil {
		return 0, fmt.Errorf("%s start: %w: %s", rt.Short(), err, out)
	}
	addr := startAddress(out)
	if !strings.HasPrefix(addr, "unix://") {
		return 0, fmt.Errorf("%s start answered %q", rt.Short(), out)
	}
	// Untimed: stop the daemon, by Shutdown, or else by SIGKILL (it serves
	// no container, nothing is lost).
	_ = shutdownShim(ctx, strings.TrimPrefix(addr, "unix://"))
	if err := e.killShimOf(id); err != nil {
		return 0, fmt.Errorf("%s: %w", rt.Short(), err)
	}
	return d, nil
}

// killShimOf kills the shim daemons serving id and waits until they are
// gone.
func (e *Env) killShimOf(id string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err := e.shimProcs(map[string]bool{id: true})
		if err != nil || len(procs) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("shim of %s still runs after SIGKILL", id)
		}
		for _, p := range procs {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond) // polling /proc for the exit
	}
}

// startAddress reads the answer of `start`: a BootstrapResult, JSON, or a
// bare address.
func startAddress(out []byte) string {
	var res bootapi.BootstrapResult
	if proto.Unmarshal(out, &res) == nil && strings.HasPrefix(res.Address, "unix://") {
		return res.Address
	}
	var j struct {
		Address string `json:"address"`
	}
	if json.Unmarshal(out, &j) == nil && j.Address != "" {
		return j.Address
	}
	return strings.TrimSpace(string(out))
}

// shutdownShim asks the shim daemon on socket to shut down (it serves no
// container). The daemon may close the connection before its answer
// arrives: an error counts only if the daemon still answers afterwards.
func shutdownShim(ctx context.Context, socket string) error {
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return err
	}
	c := ttrpc.NewClient(conn)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = taskv3.NewTTRPCTaskClient(c).Shutdown(sctx, &taskv3.ShutdownRequest{})
	c.Close()
	if err == nil {
		return nil
	}
	if again, derr := net.DialTimeout("unix", socket, time.Second); derr == nil {
		again.Close()
		return fmt.Errorf("shutdown %s: %w", socket, err)
	}
	return nil
}
