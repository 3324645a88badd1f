package cgroup

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// unifiedRoot is where cgroup v2 is mounted on a unified host, as the
// manager assumes.
const unifiedRoot = "/sys/fs/cgroup"

// v2Stats reads one cgroup v2 directory.
type v2Stats struct{ dir string }

// checkGroup checks a cgroup path as the manager's Load does: absolute,
// clean, below the mount rather than through it.
func checkGroup(g string) error {
	if !strings.HasPrefix(g, "/") || filepath.Clean(g) != g || strings.HasPrefix(g, unifiedRoot) {
		return fmt.Errorf("cgroup path %q: %w", g, errdefs.ErrInvalidArgument)
	}
	return nil
}

// v2Group returns the cgroup v2 path that procCgroup (the content of a
// /proc/<pid>/cgroup file) names.
func v2Group(procCgroup []byte) (string, error) {
	for b := procCgroup; len(b) > 0; {
		var line []byte
		line, b = nextLine(b)
		if g, ok := strings.CutPrefix(string(line), "0::"); ok {
			return g, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 line in %q: %w", procCgroup, errdefs.ErrNotFound)
}

func newV2(group string) (*v2Stats, error) {
	if err := checkGroup(group); err != nil {
		return nil, err
	}
	return &v2Stats{dir: filepath.Join(unifiedRoot, group)}, nil
}

// read reads the metrics. As with the manager, a missing file leaves its
// fields 0 and a missing cpu.stat or memory.stat its whole section.
func (s *v2Stats) read(r *fileReader) (*v2.Metrics, error) {
	m := &v2.Metrics{
		Pids: &v2.PidsStat{
			Current: v2Uint(r, s.dir, "pids.current"),
			Limit:   v2Uint(r, s.dir, "pids.max"),
		},
	}
	var err error
	if m.CPU, err = s.readCPU(r); err != nil {
		return nil, err
	}
	if m.Memory, err = s.readMemory(r); err != nil {
		return nil, err
	}
	if m.MemoryEvents, err = s.readMemoryEvents(r); err != nil {
		return nil, err
	}
	m.Io = &v2.IOStat{Usage: s.readIO(r), PSI: readPSI(r, s.dir, "io.pressure")}
	m.Rdma = &v2.RdmaStat{Current: s.readRdma(r, "rdma.current"), Limit: s.readRdma(r, "rdma.max")}
	sizes := v2PageSizes()
	m.Hugetlb = make([]*v2.HugeTlbStat, len(sizes))
	for i, p := range sizes {
		m.Hugetlb[i] = &v2.HugeTlbStat{
			Max:      v2Uint(r, s.dir, p.files[0]),
			Current:  v2Uint(r, s.dir, p.files[1]),
			Pagesize: p.size,
			Failcnt:  v2Key(r, s.dir, p.files[2], "max"),
		}
	}
	return m, nil
}

// v2Uint reads a one-number file: "max" is MaxUint64, and a file that is
// missing or does not parse is 0, as the manager has it.
func v2Uint(r *fileReader, dir, name string) uint64 {
	b, err := r.read(dir, name)
	if err != nil {
		return 0
	}
	if len(b) > 32 {
		b = b[:32] // the manager reads no more
	}
	b = trim(b)
	if string(b) == "max" {
		return math.MaxUint64
	}
	v, _ := parseUint(b, 64)
	return v
}

// v2Key returns the value of key in a "key value" file, 0 when it is not
// there.
func v2Key(r *fileReader, dir, name, key string) uint64 {
	b, err := r.read(dir, name)
	if err != nil {
		return 0
	}
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		k, rest := nextField(line)
		val, rest := nextField(rest)
		if extra, _ := nextField(rest); string(k) != key || len(val) == 0 || len(extra) != 0 {
			continue
		}
		v, _ := parseUint(val, 64)
		return v
	}
	return 0
}

func (s *v2Stats) readCPU(r *fileReader) (*v2.CPUStat, error) {
	c := &v2.CPUStat{}
	err := forKeyValues(r, s.dir, "cpu.stat", func(k []byte, v uint64) {
		switch string(k) {
		case "usage_usec":
			c.UsageUsec = v
		case "user_usec":
			c.UserUsec = v
		case "system_usec":
			c.SystemUsec = v
		case "nr_periods":
			c.NrPeriods = v
		case "nr_throttled":
			c.NrThrottled = v
		case "throttled_usec":
			c.ThrottledUsec = v
		case "nr_bursts":
			c.NrBursts = v
		case "burst_usec":
			c.BurstUsec = v
		}
	})
	if os.IsNotExist(err) {
		return &v2.CPUStat{}, nil
	}
	if err != nil {
		return nil, err
	}
	c.PSI = readPSI(r, s.dir, "cpu.pressure")
	return c, nil
}

func (s *v2Stats) readMemory(r *fileReader) (*v2.MemoryStat, error) {
	m := &v2.MemoryStat{}
	err := forKeyValues(r, s.dir, "memory.stat", func(k []byte, v uint64) { setV2Memory(m, k, v) })
	if os.IsNotExist(err) {
		return &v2.MemoryStat{}, nil
	}
	if err != nil {
		return nil, err
	}
	m.Usage = v2Uint(r, s.dir, "memory.current")
	m.UsageLimit = v2Uint(r, s.dir, "memory.max")
	m.MaxUsage = v2Uint(r, s.dir, "memory.peak")
	m.SwapUsage = v2Uint(r, s.dir, "memory.swap.current")
	m.SwapLimit = v2Uint(r, s.dir, "memory.swap.max")
	m.SwapMaxUsage = v2Uint(r, s.dir, "memory.swap.peak")
	m.PSI = readPSI(r, s.dir, "memory.pressure")
	return m, nil
}

func setV2Memory(m *v2.MemoryStat, k []byte, v uint64) {
	switch string(k) {
	case "anon":
		m.Anon = v
	case "file":
		m.File = v
	case "kernel_stack":
		m.KernelStack = v
	case "slab":
		m.Slab = v
	case "sock":
		m.Sock = v
	case "shmem":
		m.Shmem = v
	case "file_mapped":
		m.FileMapped = v
	case "file_dirty":
		m.FileDirty = v
	case "file_writeback":
		m.FileWriteback = v
	case "anon_thp":
		m.AnonThp = v
	case "inactive_anon":
		m.InactiveAnon = v
	case "active_anon":
		m.ActiveAnon = v
	case "inactive_file":
		m.InactiveFile = v
	case "active_file":
		m.ActiveFile = v
	case "unevictable":
		m.Unevictable = v
	case "slab_reclaimable":
		m.SlabReclaimable = v
	case "slab_unreclaimable":
		m.SlabUnreclaimable = v
	case "pgfault":
		m.Pgfault = v
	case "pgmajfault":
		m.Pgmajfault = v
	case "workingset_refault":
		m.WorkingsetRefault = v
	case "workingset_activate":
		m.WorkingsetActivate = v
	case "workingset_nodereclaim":
		m.WorkingsetNodereclaim = v
	case "pgrefill":
		m.Pgrefill = v
	case "pgscan":
		m.Pgscan = v
	case "pgsteal":
		m.Pgsteal = v
	case "pgactivate":
		m.Pgactivate = v
	case "pgdeactivate":
		m.Pgdeactivate = v
	case "pglazyfree":
		m.Pglazyfree = v
	case "pglazyfreed":
		m.Pglazyfreed = v
	case "thp_fault_alloc":
		m.ThpFaultAlloc = v
	case "thp_collapse_alloc":
		m.ThpCollapseAlloc = v
	}
}

// readMemoryEvents reads memory.events; nil when it is missing or empty.
func (s *v2Stats) readMemoryEvents(r *fileReader) (*v2.MemoryEvents, error) {
	e := &v2.MemoryEvents{}
	n := 0
	err := forKeyValues(r, s.dir, "memory.events", func(k []byte, v uint64) {
		n++
		switch string(k) {
		case "low":
			e.Low = v
		case "high":
			e.High = v
		case "max":
			e.Max = v
		case "oom":
			e.Oom = v
		case "oom_kill":
			e.OomKill = v
		case "oom_group_kill":
			e.OomGroupKill = v
		}
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	return e, nil
}

// readIO reads io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0
// dios=0" per device. Like the manager it skips what is not of that shape
// and stops at a device number that does not parse.
func (s *v2Stats) readIO(r *fileReader) []*v2.IOEntry {
	b, err := r.read(s.dir, "io.stat")
	if err != nil {
		return nil
	}
	var out []*v2.IOEntry
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		dev, rest, ok := cutByte(line, ' ')
		if !ok {
			continue
		}
		maj, mnr, ok := cutByte(dev, ':')
		if !ok || indexByte(mnr, ':') >= 0 {
			continue
		}
		major, err := parseDigits(maj, 64)
		if err != nil {
			return out
		}
		minor, err := parseDigits(mnr, 64)
		if err != nil {
			return out
		}
		e := &v2.IOEntry{Major: major, Minor: minor}
		for len(rest) > 0 {
			var kv []byte
			kv, rest, _ = cutByte(rest, ' ')
			k, val, ok := cutByte(kv, '=')
			if !ok || indexByte(val, '=') >= 0 {
				continue
			}
			v, err := parseDigits(val, 64)
			if err != nil {
				continue
			}
			switch string(k) {
			case "rbytes":
				e.Rbytes = v
			case "wbytes":
				e.Wbytes = v
			case "rios":
				e.Rios = v
			case "wios":
				e.Wios = v
			}
		}
		out = append(out, e)
	}
	return out
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// cutByte splits b around its first c.
func cutByte(b []byte, c byte) (before, after []byte, found bool) {
	if i := indexByte(b, c); i >= 0 {
		return b[:i], b[i+1:], true
	}
	return b, nil, false
}

func (s *v2Stats) readRdma(r *fileReader, name string) []*v2.RdmaEntry {
	b, err := r.read(s.dir, name)
	if err != nil {
		return nil
	}
	return rdmaEntries(b, func(d string, h, o uint32) *v2.RdmaEntry {
		return &v2.RdmaEntry{Device: d, HcaHandles: h, HcaObjects: o}
	})
}

// readPSI reads a pressure file ("some avg10=0.00 avg60=0.00 avg300=0.00
// total=0"): nil when it is missing, unreadable (PSI disabled) or not in
// that format.
func readPSI(r *fileReader, dir, name string) *v2.PSIStats {
	b, err := r.read(dir, name)
	if err != nil {
		return nil
	}
	p := &v2.PSIStats{}
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		kind, rest := nextField(line)
		var d *v2.PSIData
		switch string(kind) {
		case "some":
			p.Some = &v2.PSIData{}
			d = p.Some
		case "full":
			p.Full = &v2.PSIData{}
			d = p.Full
		default:
			continue
		}
		for f, more := nextField(rest); len(f) > 0; f, more = nextField(more) {
			k, v, ok := cutByte(f, '=')
			if !ok {
				return nil
			}
			var err error
			switch string(k) {
			case "avg10":
				d.Avg10, err = psiFloat(v)
			case "avg60":
				d.Avg60, err = psiFloat(v)
			case "avg300":
				d.Avg300, err = psiFloat(v)
			case "total":
				d.Total, err = parseDigits(v, 64)
			}
			if err != nil {
				return nil
			}
		}
	}
	return p
}

func psiFloat(b []byte) (float64, error) {
	if v, ok := parseFloat(b); ok {
		return v, nil
	}
	// Not the kernel's plain decimal: let strconv decide.
	return strconv.ParseFloat(string(b), 64)
}

// v2PageSize is a huge page size as the v2 manager names it ("2MB"), with
// its max, current and events file names.
type v2PageSize struct {
	size  string
	files [3]string
}

// v2PageSizes lists the huge page sizes in directory order, as the manager
// does.
var v2PageSizes = sync.OnceValue(func() []v2PageSize {
	d, err := os.OpenFile("/sys/kernel/mm/hugepages", unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, err := d.Readdirnames(0)
	if err != nil {
		return nil
	}
	var out []v2PageSize
	for _, n := range names {
		kb, ok := strings.CutPrefix(n, "hugepages-")
		if !ok {
			continue
		}
		if kb, ok = strings.CutSuffix(kb, "kB"); !ok {
			continue
		}
		size, err := strconv.Atoi(kb)
		if err != nil {
			continue
		}
		var name string
		switch {
		case size >= 1<<20:
			name = strconv.Itoa(size>>20) + "GB"
		case size >= 1<<10:
			name = strconv.Itoa(size>>10) + "MB"
		default:
			name = kb + "KB"
		}
		out = append(out, v2PageSize{size: name, files: [3]string{
			"hugetlb." + name + ".max", "hugetlb." + name + ".current", "hugetlb." + name + ".events",
		}})
	}
	return out
})
