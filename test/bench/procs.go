package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// shimProc is a shim daemon of the benchmark's containerd.
type shimProc struct {
	pid int
	rt  Runtime
	id  string // the -id it serves
}

// shimProcs lists the shim daemons of this containerd serving the container
// ids in want (every one when want is nil): processes running one of the
// two shim binaries with "-address SOCKET" and "-id ID" in argv, and no
// action ("start" or "delete") after the flags.
func (e *Env) shimProcs(want map[string]bool) ([]shimProc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []shimProc
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
		if err != nil {
			continue
		}
		var rt Runtime
		for r, p := range e.shimExe {
			if p == exe {
				rt = r
			}
		}
		if rt == "" {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		flags, action := parseShimArgs(argv[1:])
		if action != "" || flags["address"] != e.d.socket() {
			continue
		}
		if want != nil && !want[flags["id"]] {
			continue
		}
		out = append(out, shimProc{pid: pid, rt: rt, id: flags["id"]})
	}
	return out, nil
}

// parseShimArgs reads "-name value" pairs (and the boolean -debug) up to the
// first positional argument, the action.
func parseShimArgs(args []string) (map[string]string, string) {
	flags := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return flags, a
		}
		name := strings.TrimLeft(a, "-")
		if k, v, ok := strings.Cut(name, "="); ok {
			flags[k] = v
			continue
		}
		if name == "debug" || name == "v" || name == "info" {
			flags[name] = "true"
			continue
		}
		if i+1 < len(args) {
			flags[name] = args[i+1]
			i++
		}
	}
	return flags, ""
}

// Mem is the memory of one process, in KiB: the totals of
// /proc/PID/smaps_rollup and VmRSS of /proc/PID/status.
type Mem struct {
	Rss          float64 `json:"rss_kib"`
	Pss          float64 `json:"pss_kib"`
	PssAnon      float64 `json:"pss_anon_kib"`
	PssFile      float64 `json:"pss_file_kib"`
	VmRSS        float64 `json:"vmrss_kib"`
	VmHWM        float64 `json:"vmhwm_kib"` // peak RSS
	Threads      int     `json:"threads"`
	PrivateDirty float64 `json:"private_dirty_kib"`
}

// add adds the sizes of x to m: not its peak (VmHWM), nor its threads.
func (m *Mem) add(x Mem) {
	m.Rss += x.Rss
	m.Pss += x.Pss
	m.PssAnon += x.PssAnon
	m.PssFile += x.PssFile
	m.VmRSS += x.VmRSS
	m.PrivateDirty += x.PrivateDirty
}

// meanMem is the mean of readings of one process; its peak (VmHWM) and
// threads are the last reading's.
func meanMem(ms []Mem) Mem {
	if len(ms) == 0 {
		return Mem{}
	}
	var m Mem
	for _, x := range ms {
		m.add(x)
	}
	k := float64(len(ms))
	m.Rss, m.Pss, m.PssAnon, m.PssFile, m.VmRSS, m.PrivateDirty = m.Rss/k, m.Pss/k, m.PssAnon/k, m.PssFile/k, m.VmRSS/k, m.PrivateDirty/k
	last := ms[len(ms)-1]
	m.VmHWM, m.Threads = last.VmHWM, last.Threads
	return m
}

// readMem reads the memory of pid.
func readMem(pid int) (Mem, error) {
	var m Mem
	rollup, err := readKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	status, err := readKB(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	m.Rss, m.Pss, m.PssAnon, m.PssFile = rollup["Rss"], rollup["Pss"], rollup["Pss_Anon"], rollup["Pss_File"]
	m.PrivateDirty = rollup["Private_Dirty"]
	m.VmRSS, m.VmHWM = status["VmRSS"], status["VmHWM"]
	m.Threads = int(status["Threads"])
	return m, nil
}

// readKB parses "Key:   123 kB" lines (and plain "Key: 123" numbers).
func readKB(path string) (map[string]float64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// CPU is the CPU time a process used, in milliseconds: Self, summed over its
// live threads from /proc/PID/task/*/schedstat (nanosecond resolution), and
// Children, the reaped children it waited for (cutime + cstime of
// /proc/PID/stat, in clock ticks).
type CPU struct {
	Self     float64 `json:"self_ms"`
	Children float64 `json:"children_ms"`
}

// clockTick is USER_HZ, 100 on Linux for every architecture Go supports.
const clockTick = 100

func readCPU(pid int) (CPU, error) {
	var c CPU
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return c, err
	}
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // thread gone
		}
		if f := strings.Fields(string(data)); len(f) > 0 {
			ns, _ := strconv.ParseFloat(f[0], 64)
			c.Self += ns / 1e6
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return c, err
	}
	// The fields after the command, which is in parentheses and may hold
	// spaces: state is field 3; cutime and cstime are fields 16 and 17.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return c, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 15 {
		return c, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	cu, _ := strconv.ParseFloat(f[13], 64)
	cs, _ := strconv.ParseFloat(f[14], 64)
	c.Children = (cu + cs) * 1000 / clockTick
	return c, nil
}

// sub returns c - o.
func (c CPU) sub(o CPU) CPU { return CPU{Self: c.Self - o.Self, Children: c.Children - o.Children} }

// describeProcs lists the processes whose argv names one of ids, with
// their executables: the evidence when shimProcs finds fewer shims than
// expected.
func describeProcs(ids map[string]bool) string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, ent := range entries {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		for _, a := range argv {
			if ids[a] {
				exe, _ := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
				fmt.Fprintf(&b, "pid %s exe %s: %s\n", ent.Name(), exe, strings.Join(argv, " "))
				break
			}
		}
	}
	return b.String()
}
