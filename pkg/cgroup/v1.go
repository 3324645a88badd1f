package cgroup

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/errdefs"
)

// v1Stats reads the v1 controllers that carry metrics: one directory per
// controller, "" for a controller the cgroup does not have.
type v1Stats struct {
	pids, cpu, cpuacct, memory, blkio, rdma, hugetlb string

	procDir string   // where partitions is read: "" for /proc
	devs    []device // partitions at the last blkio reading
	part    []byte   // its content, which devs point into
}

// device is a line of /proc/partitions; name indexes v1Stats.part.
type device struct {
	major, minor uint64
	name         [2]int
}

// v1Controllers are the controllers read, in the managers' order.
var v1Controllers = [...]string{"pids", "cpu", "cpuacct", "memory", "blkio", "rdma", "hugetlb"}

func (s *v1Stats) dir(controller string) *string {
	switch controller {
	case "pids":
		return &s.pids
	case "cpu":
		return &s.cpu
	case "cpuacct":
		return &s.cpuacct
	case "memory":
		return &s.memory
	case "blkio":
		return &s.blkio
	case "rdma":
		return &s.rdma
	case "hugetlb":
		return &s.hugetlb
	}
	return nil
}

// v1Mount is a cgroup v1 hierarchy as mounted.
type v1Mount struct {
	point string   // where it is mounted
	root  string   // the cgroup mounted there
	opts  []string // its super options: controllers, name=
}

// has tells whether the hierarchy holds controller (or "name=systemd").
func (m v1Mount) has(controller string) bool { return slices.Contains(m.opts, controller) }

// v1Mounts lists the cgroup v1 hierarchies mounted, each once, in
// /proc/self/mountinfo order.
func v1Mounts(r *fileReader) ([]v1Mount, error) {
	b, err := r.read("/proc/self", "mountinfo")
	if err != nil {
		return nil, err
	}
	var out []v1Mount
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		f := strings.Fields(string(line))
		if len(f) < 10 || f[len(f)-3] != "cgroup" {
			continue
		}
		opts := strings.Split(f[len(f)-1], ",")
		if slices.ContainsFunc(out, func(m v1Mount) bool { return slices.Equal(m.opts, opts) }) {
			continue // a bind mount of a hierarchy already listed
		}
		out = append(out, v1Mount{point: f[4], root: f[3], opts: opts})
	}
	return out, nil
}

// newV1 finds the v1 cgroups that procCgroup (the content of a
// /proc/<pid>/cgroup file) names, below the mounts of their hierarchies.
func newV1(r *fileReader, procCgroup []byte) (*v1Stats, error) {
	paths := map[string]string{}
	for _, line := range strings.Split(string(procCgroup), "\n") {
		// "4:memory:/k8s.io/abc", "2:cpu,cpuacct:/k8s.io/abc"
		_, rest, ok := strings.Cut(line, ":")
		ctrls, p, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || ctrls == "" {
			continue
		}
		for c := range strings.SplitSeq(ctrls, ",") {
			paths[c] = p
		}
	}
	mounts, err := v1Mounts(r)
	if err != nil {
		return nil, err
	}
	s := &v1Stats{}
	for _, c := range v1Controllers {
		p, ok := paths[c]
		if !ok {
			continue
		}
		i := slices.IndexFunc(mounts, func(m v1Mount) bool { return m.has(c) })
		if i < 0 {
			continue
		}
		m := mounts[i]
		rel := p
		switch {
		case m.root == "/":
		case p == m.root:
			rel = "/"
		case strings.HasPrefix(p, m.root+"/"):
			rel = p[len(m.root):]
		}
		*s.dir(c) = joinDir(m.point, rel)
	}
	if err := s.keepExisting(r); err != nil {
		return nil, fmt.Errorf("cgroups of %q: %w", paths["memory"], err)
	}
	return s, nil
}

// newV1ForPath takes the cgroup at path (relative to the root of every
// hierarchy), as cgroup1.StaticPath does.
func newV1ForPath(r *fileReader, path string) (*v1Stats, error) {
	mounts, err := v1Mounts(r)
	if err != nil {
		return nil, err
	}
	s := &v1Stats{}
	for _, c := range v1Controllers {
		if i := slices.IndexFunc(mounts, func(m v1Mount) bool { return m.has(c) }); i >= 0 {
			*s.dir(c) = joinDir(mounts[i].point, path)
		}
	}
	if err := s.keepExisting(r); err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return s, nil
}

func joinDir(point, rel string) string {
	if rel == "/" || rel == "" {
		return point
	}
	return strings.TrimSuffix(point, "/") + "/" + strings.TrimPrefix(rel, "/")
}

// keepExisting forgets the controllers whose directory does not exist (the
// managers' Load skips them) and fails when none is left.
func (s *v1Stats) keepExisting(r *fileReader) error {
	n := 0
	for _, c := range v1Controllers {
		d := s.dir(c)
		if *d == "" {
			continue
		}
		if _, err := os.Lstat(*d); err != nil {
			if !os.IsNotExist(err) {
				return err
			}
			*d = ""
			continue
		}
		n++
	}
	if s.hugetlb != "" && len(v1PageSizes()) == 0 {
		s.hugetlb = ""
	}
	if n == 0 {
		return fmt.Errorf("no cgroup v1 controller directory: %w", errdefs.ErrNotFound)
	}
	return nil
}

// read reads the metrics. A missing file ends the reading of its
// controller, as cgroup1.IgnoreNotExist does: what was read of that
// controller before it stays.
func (s *v1Stats) read(r *fileReader) (*v1.Metrics, error) {
	m := &v1.Metrics{CPU: &v1.CPUStat{Throttling: &v1.Throttle{}, Usage: &v1.CPUUsage{}}}
	for _, step := range [...]struct {
		dir  string
		read func(*fileReader, *v1.Metrics) error
	}{
		{s.pids, s.readPids},
		{s.cpu, s.readCPU},
		{s.cpuacct, s.readCPUAcct},
		{s.memory, s.readMemory},
		{s.blkio, s.readBlkio},
		{s.rdma, s.readRdma},
		{s.hugetlb, s.readHugetlb},
	} {
		if step.dir == "" {
			continue
		}
		if err := step.read(r, m); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	return m, nil
}

// v1Uint reads a one-number file; "max" is 0 (the managers' convention for
// v1).
func v1Uint(r *fileReader, dir, name string) (uint64, error) {
	b, err := r.read(dir, name)
	if err != nil {
		return 0, err
	}
	b = trim(b)
	if string(b) == "max" {
		return 0, nil
	}
	v, err := parseUint(b, 64)
	if err != nil {
		return 0, fmt.Errorf("%s/%s: %w", dir, name, err)
	}
	return v, nil
}

func (s *v1Stats) readPids(r *fileReader, m *v1.Metrics) error {
	cur, err := v1Uint(r, s.pids, "pids.current")
	if err != nil {
		return err
	}
	limit, err := v1Uint(r, s.pids, "pids.max")
	if err != nil {
		return err
	}
	m.Pids = &v1.PidsStat{Current: cur, Limit: limit}
	return nil
}

// forKeyValues calls f with each "key value" line of dir/name.
func forKeyValues(r *fileReader, dir, name string, f func(key []byte, v uint64)) error {
	b, err := r.read(dir, name)
	if err != nil {
		return err
	}
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		k, v, err := keyValue(line)
		if err != nil {
			return fmt.Errorf("%s/%s: line %q: %w", dir, name, line, err)
		}
		f(k, v)
	}
	return nil
}

func (s *v1Stats) readCPU(r *fileReader, m *v1.Metrics) error {
	t := m.CPU.Throttling
	return forKeyValues(r, s.cpu, "cpu.stat", func(k []byte, v uint64) {
		switch string(k) {
		case "nr_periods":
			t.Periods = v
		case "nr_throttled":
			t.ThrottledPeriods = v
		case "throttled_time":
			t.ThrottledTime = v
		}
	})
}

// userHZ is the kernel's USER_HZ, the unit of cpuacct.stat: 100 on every
// Linux architecture.
const userHZ = 100

func (s *v1Stats) readCPUAcct(r *fileReader, m *v1.Metrics) error {
	var user, system uint64
	var seen int
	err := forKeyValues(r, s.cpuacct, "cpuacct.stat", func(k []byte, v uint64) {
		switch string(k) {
		case "user":
			user, seen = v, seen|1
		case "system":
			system, seen = v, seen|2
		}
	})
	if err != nil {
		return err
	}
	if seen != 3 {
		return fmt.Errorf("%s/cpuacct.stat: no user or system line: %w", s.cpuacct, errFormat)
	}
	total, err := v1Uint(r, s.cpuacct, "cpuacct.usage")
	if err != nil {
		return err
	}
	b, err := r.read(s.cpuacct, "cpuacct.usage_percpu")
	if err != nil {
		return err
	}
	var percpu []uint64
	for f, rest := nextField(b); len(f) > 0; f, rest = nextField(rest) {
		v, err := parseDigits(f, 64)
		if err != nil {
			return fmt.Errorf("%s/cpuacct.usage_percpu: %w", s.cpuacct, err)
		}
		if percpu == nil {
			percpu = make([]uint64, 0, countFields(b))
		}
		percpu = append(percpu, v)
	}
	u := m.CPU.Usage
	u.Total, u.PerCPU = total, percpu
	u.User = user * 1e9 / userHZ
	u.Kernel = system * 1e9 / userHZ
	return nil
}

func countFields(b []byte) int {
	n := 0
	for f, rest := nextField(b); len(f) > 0; f, rest = nextField(rest) {
		n++
	}
	return n
}

func (s *v1Stats) readMemory(r *fileReader, m *v1.Metrics) error {
	mem := &v1.MemoryStat{}
	err := forKeyValues(r, s.memory, "memory.stat", func(k []byte, v uint64) { setV1Memory(mem, k, v) })
	if err != nil {
		return err
	}
	entries := [4]v1.MemoryEntry{}
	mem.Usage, mem.Swap, mem.Kernel, mem.KernelTCP = &entries[0], &entries[1], &entries[2], &entries[3]
	m.Memory = mem
	oom := &v1.MemoryOomControl{}
	err = forKeyValues(r, s.memory, "memory.oom_control", func(k []byte, v uint64) {
		switch string(k) {
		case "oom_kill_disable":
			oom.OomKillDisable = v
		case "under_oom":
			oom.UnderOom = v
		case "oom_kill":
			oom.OomKill = v
		}
	})
	if err != nil {
		return err
	}
	m.MemoryOomControl = oom
	for i, prefix := range [...]string{"memory.", "memory.memsw.", "memory.kmem.", "memory.kmem.tcp."} {
		e := &entries[i]
		for _, f := range [...]struct {
			name string
			v    *uint64
		}{
			{"usage_in_bytes", &e.Usage},
			{"max_usage_in_bytes", &e.Max},
			{"failcnt", &e.Failcnt},
			{"limit_in_bytes", &e.Limit},
		} {
			v, err := v1Uint(r, s.memory, memoryFile(prefix, f.name))
			if err != nil {
				return err
			}
			*f.v = v
		}
	}
	return nil
}

// memoryFiles holds the names memoryFile builds, built once.
var memoryFiles sync.Map

func memoryFile(prefix, name string) string {
	key := [2]string{prefix, name}
	if v, ok := memoryFiles.Load(key); ok {
		return v.(string)
	}
	v, _ := memoryFiles.LoadOrStore(key, prefix+name)
	return v.(string)
}

func setV1Memory(s *v1.MemoryStat, k []byte, v uint64) {
	switch string(k) {
	case "cache":
		s.Cache = v
	case "rss":
		s.RSS = v
	case "rss_huge":
		s.RSSHuge = v
	case "mapped_file":
		s.MappedFile = v
	case "dirty":
		s.Dirty = v
	case "writeback":
		s.Writeback = v
	case "pgpgin":
		s.PgPgIn = v
	case "pgpgout":
		s.PgPgOut = v
	case "pgfault":
		s.PgFault = v
	case "pgmajfault":
		s.PgMajFault = v
	case "inactive_anon":
		s.InactiveAnon = v
	case "active_anon":
		s.ActiveAnon = v
	case "inactive_file":
		s.InactiveFile = v
	case "active_file":
		s.ActiveFile = v
	case "unevictable":
		s.Unevictable = v
	case "hierarchical_memory_limit":
		s.HierarchicalMemoryLimit = v
	case "hierarchical_memsw_limit":
		s.HierarchicalSwapLimit = v
	case "total_cache":
		s.TotalCache = v
	case "total_rss":
		s.TotalRSS = v
	case "total_rss_huge":
		s.TotalRSSHuge = v
	case "total_mapped_file":
		s.TotalMappedFile = v
	case "total_dirty":
		s.TotalDirty = v
	case "total_writeback":
		s.TotalWriteback = v
	case "total_pgpgin":
		s.TotalPgPgIn = v
	case "total_pgpgout":
		s.TotalPgPgOut = v
	case "total_pgfault":
		s.TotalPgFault = v
	case "total_pgmajfault":
		s.TotalPgMajFault = v
	case "total_inactive_anon":
		s.TotalInactiveAnon = v
	case "total_active_anon":
		s.TotalActiveAnon = v
	case "total_inactive_file":
		s.TotalInactiveFile = v
	case "total_active_file":
		s.TotalActiveFile = v
	case "total_unevictable":
		s.TotalUnevictable = v
	}
}

// readBlkio reads the CFQ statistics, or the throttle ones when the CFQ
// files are absent or empty (a cgroup on devices of another scheduler), as
// the manager does.
func (s *v1Stats) readBlkio(r *fileReader, m *v1.Metrics) error {
	st := &v1.BlkIOStat{}
	m.Blkio = st
	cfq := r.exists(s.blkio, "blkio.io_serviced_recursive")
	if err := s.readPartitions(r); err != nil {
		return err
	}
	if cfq {
		n := 0
		for _, f := range [...]struct {
			name string
			e    *[]*v1.BlkIOEntry
		}{
			{"blkio.sectors_recursive", &st.SectorsRecursive},
			{"blkio.io_service_bytes_recursive", &st.IoServiceBytesRecursive},
			{"blkio.io_serviced_recursive", &st.IoServicedRecursive},
			{"blkio.io_queued_recursive", &st.IoQueuedRecursive},
			{"blkio.io_service_time_recursive", &st.IoServiceTimeRecursive},
			{"blkio.io_wait_time_recursive", &st.IoWaitTimeRecursive},
			{"blkio.io_merged_recursive", &st.IoMergedRecursive},
			{"blkio.time_recursive", &st.IoTimeRecursive},
		} {
			if err := s.readBlkioFile(r, f.name, f.e); err != nil {
				return err
			}
			n += len(*f.e)
		}
		if n > 0 {
			return nil
		}
	}
	if err := s.readBlkioFile(r, "blkio.throttle.io_serviced", &st.IoServicedRecursive); err != nil {
		return err
	}
	return s.readBlkioFile(r, "blkio.throttle.io_service_bytes", &st.IoServiceBytesRecursive)
}

// readPartitions reads /proc/partitions into s.devs: the device names of
// the blkio entries.
func (s *v1Stats) readPartitions(r *fileReader) error {
	proc := s.procDir
	if proc == "" {
		proc = "/proc"
	}
	b, err := r.read(proc, "partitions")
	if err != nil {
		return err
	}
	s.part = append(s.part[:0], b...)
	s.devs = s.devs[:0]
	b = s.part
	for i := 0; len(b) > 0; i++ {
		var line []byte
		line, b = nextLine(b)
		if i < 2 {
			continue // the header and a blank line
		}
		// "major minor #blocks name"
		maj, rest := nextField(line)
		mnr, rest := nextField(rest)
		_, rest = nextField(rest)
		name, _ := nextField(rest)
		ma, err1 := parseDigits(maj, 64)
		mi, err2 := parseDigits(mnr, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("/proc/partitions: line %q: %w", line, errFormat)
		}
		start := cap(s.part) - cap(name) // name's offset in s.part
		s.devs = append(s.devs, device{major: ma, minor: mi, name: [2]int{start, start + len(name)}})
	}
	return nil
}

// deviceName is the /dev path of a partition, "" when unknown; the first
// line of /proc/partitions that names it wins.
func (s *v1Stats) deviceName(major, minor uint64) string {
	for _, d := range s.devs {
		if d.major == major && d.minor == minor {
			return "/dev/" + string(s.part[d.name[0]:d.name[1]])
		}
	}
	return ""
}

func isBlkioSep(c byte) bool { return c == ' ' || c == ':' }

// blkioFields splits a blkio line at spaces and colons: "8:0 Read 4096".
func blkioFields(line []byte, out *[5][]byte) int {
	n := 0
	for i := 0; i < len(line); {
		for i < len(line) && isBlkioSep(line[i]) {
			i++
		}
		j := i
		for j < len(line) && !isBlkioSep(line[j]) {
			j++
		}
		if j > i {
			if n < len(out) {
				out[n] = line[i:j]
			}
			n++
		}
		i = j
	}
	return n
}

// blkioOp returns op as a constant string for the kernel's operations.
func blkioOp(op []byte) string {
	switch string(op) {
	case "Read":
		return "Read"
	case "Write":
		return "Write"
	case "Sync":
		return "Sync"
	case "Async":
		return "Async"
	case "Discard":
		return "Discard"
	case "Total":
		return "Total"
	}
	return string(op)
}

func (s *v1Stats) readBlkioFile(r *fileReader, name string, entries *[]*v1.BlkIOEntry) error {
	b, err := r.read(s.blkio, name)
	if err != nil {
		return err
	}
	var f [5][]byte
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		n := blkioFields(line, &f)
		if n < 3 {
			if n == 2 && string(f[0]) == "Total" {
				continue
			}
			return fmt.Errorf("%s/%s: line %q: %w", s.blkio, name, line, errFormat)
		}
		major, err := parseDigits(f[0], 64)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", s.blkio, name, err)
		}
		minor, err := parseDigits(f[1], 64)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", s.blkio, name, err)
		}
		op, vf := "", f[2]
		if n == 4 {
			op, vf = blkioOp(f[2]), f[3]
		}
		v, err := parseDigits(vf, 64)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", s.blkio, name, err)
		}
		*entries = append(*entries, &v1.BlkIOEntry{
			Device: s.deviceName(major, minor), Major: major, Minor: minor, Op: op, Value: v,
		})
	}
	return nil
}

func (s *v1Stats) readRdma(r *fileReader, m *v1.Metrics) error {
	b, err := r.read(s.rdma, "rdma.current")
	if err != nil {
		return err
	}
	lines := countLines(b)
	cur := rdmaEntries(b, func(d string, h, o uint32) *v1.RdmaEntry {
		return &v1.RdmaEntry{Device: d, HcaHandles: h, HcaObjects: o}
	})
	if b, err = r.read(s.rdma, "rdma.max"); err != nil {
		return err
	}
	if countLines(b) != lines {
		return nil // a device came or went between the two readings
	}
	limit := rdmaEntries(b, func(d string, h, o uint32) *v1.RdmaEntry {
		return &v1.RdmaEntry{Device: d, HcaHandles: h, HcaObjects: o}
	})
	m.Rdma = &v1.RdmaStat{Current: cur, Limit: limit}
	return nil
}

// countLines counts the newline-separated pieces of b, the last one
// included even when empty.
func countLines(b []byte) int {
	n := 1
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

// rdmaEntries parses the lines "mlx4_0 hca_handle=2 hca_object=max" of an
// rdma file; a line of another shape is skipped, a value that does not
// parse is left 0, "max" is MaxUint32.
func rdmaEntries[E any](b []byte, mk func(dev string, handles, objects uint32) *E) []*E {
	var out []*E
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		dev, rest := nextField(line)
		kv1, rest := nextField(rest)
		kv2, rest := nextField(rest)
		if extra, _ := nextField(rest); len(kv2) == 0 || len(extra) != 0 {
			continue
		}
		var handles, objects uint32
		for _, kv := range [2][]byte{kv1, kv2} {
			i := slices.Index(kv, '=')
			if i < 0 {
				continue
			}
			var v uint64
			if string(kv[i+1:]) == "max" {
				v = 1<<32 - 1
			} else {
				var err error
				if v, err = parseUint(kv[i+1:], 32); err != nil {
					continue
				}
			}
			switch string(kv[:i]) {
			case "hca_handle":
				handles = uint32(v)
			case "hca_object":
				objects = uint32(v)
			}
		}
		out = append(out, mk(string(dev), handles, objects))
	}
	return out
}

func (s *v1Stats) readHugetlb(r *fileReader, m *v1.Metrics) error {
	for _, p := range v1PageSizes() {
		h := &v1.HugetlbStat{Pagesize: p.size}
		for i, v := range [...]*uint64{&h.Usage, &h.Max, &h.Failcnt} {
			n, err := v1Uint(r, s.hugetlb, p.files[i])
			if err != nil {
				return err
			}
			*v = n
		}
		m.Hugetlb = append(m.Hugetlb, h)
	}
	return nil
}

// v1PageSize is a huge page size as the v1 manager names it ("2MB"), with
// its usage_in_bytes, max_usage_in_bytes and failcnt file names.
type v1PageSize struct {
	size  string
	files [3]string
}

var v1PageSizes = sync.OnceValue(func() []v1PageSize {
	ents, err := os.ReadDir("/sys/kernel/mm/hugepages")
	if err != nil {
		return nil
	}
	var out []v1PageSize
	for _, e := range ents {
		// "hugepages-2048kB", in kibibytes
		kb, ok := strings.CutSuffix(strings.TrimPrefix(e.Name(), "hugepages-"), "kB")
		n, err := strconv.ParseUint(kb, 10, 64)
		if !ok || err != nil {
			return nil // the manager then leaves hugetlb out
		}
		size := humanSize(float64(n) * 1024)
		out = append(out, v1PageSize{size: size, files: [3]string{
			"hugetlb." + size + ".usage_in_bytes",
			"hugetlb." + size + ".max_usage_in_bytes",
			"hugetlb." + size + ".failcnt",
		}})
	}
	return out
})

// humanSize writes a byte count in binary units, "2MB", "1GB", "64KB", the
// names of the kernel's v1 hugetlb files.
func humanSize(v float64) string {
	units := [...]string{"B", "KB", "MB", "GB", "TB", "PB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(v, 'g', -1, 64) + units[i]
}
