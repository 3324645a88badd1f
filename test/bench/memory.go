package bench

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ShimMemory is the idle memory of the shims of one runtime with a number
// of running containers, one shim each. Per-shim figures are summaries
// over the shims, in KiB; totals are sums over them.
type ShimMemory struct {
	Processes int     `json:"processes"`
	Rss       Summary `json:"rss_kib"`
	Pss       Summary `json:"pss_kib"`
	PssAnon   Summary `json:"pss_anon_kib"`
	PssFile   Summary `json:"pss_file_kib"`
	VmRSS     Summary `json:"vmrss_kib"`
	PeakRss   Summary `json:"vmhwm_kib"`
	Threads   Summary `json:"threads"`
	TotalRss  float64 `json:"total_rss_kib"`
	TotalPss  float64 `json:"total_pss_kib"`
	TotalAnon float64 `json:"total_pss_anon_kib"`
	Samples   []Mem   `json:"samples"`
}

// MemoryPoint is the idle memory of both runtimes' shims at one container
// count, with the ratios of the per-shim medians.
type MemoryPoint struct {
	Containers   int        `json:"containers"`
	Mine         ShimMemory `json:"mine"`
	Runc         ShimMemory `json:"runc_v2"`
	RssRatio     float64    `json:"rss_ratio"`
	PssRatio     float64    `json:"pss_ratio"`
	PssAnonRatio float64    `json:"pss_anon_ratio"`
}

// IdleMemory starts n `sleep` containers with runtime rt, waits settle,
// flushes dirty pages (sync: file pages of a binary written moments ago
// count as dirty until written back), reads every shim's smaps_rollup and
// status, and removes the containers.
func (e *Env) IdleMemory(ctx context.Context, rt Runtime, n int, settle time.Duration) (out ShimMemory, err error) {
	prefix := fmt.Sprintf("mem-%s-%d-%s", rt.Short(), n, e.tag)
	// No shim of rt runs now: every count starts from the same state, the
	// binary's pages out of the page cache (file-backed RSS depends on what
	// is cached, and in which folio sizes, when a shim faults its pages in).
	if err := dropCache(e.shimExe[rt]); err != nil {
		return out, err
	}
	boxes, err := e.startSleepers(ctx, rt, prefix, n)
	if err != nil {
		return out, err
	}
	defer func() {
		if rerr := e.removeAll(ctx, boxes); rerr != nil && err == nil {
			err = rerr
		}
	}()
	time.Sleep(settle) // idle: no synchronisation, the point is to wait
	unix.Sync()
	want := map[string]bool{}
	for _, b := range boxes {
		want[b.id] = true
	}
	procs, err := e.shimProcs(want)
	if err != nil {
		return out, err
	}
	if len(procs) != n {
		return out, fmt.Errorf("%d %s shim processes for %d containers, want one each; processes naming them:\n%s",
			len(procs), rt.Short(), n, describeProcs(want))
	}
	var rss, pss, anon, file, vm, hwm, threads []float64
	for _, p := range procs {
		m, err := readMem(p.pid)
		if err != nil {
			return out, fmt.Errorf("shim %d: %w", p.pid, err)
		}
		out.Samples = append(out.Samples, m)
		rss, pss, anon, file, vm = append(rss, m.Rss), append(pss, m.Pss), append(anon, m.PssAnon), append(file, m.PssFile), append(vm, m.VmRSS)
		hwm, threads = append(hwm, m.VmHWM), append(threads, float64(m.Threads))
		out.TotalRss += m.Rss
		out.TotalPss += m.Pss
		out.TotalAnon += m.PssAnon
	}
	out.Processes = len(procs)
	out.Rss, out.Pss, out.PssAnon, out.PssFile = Summarize(rss), Summarize(pss), Summarize(anon), Summarize(file)
	out.VmRSS, out.PeakRss, out.Threads = Summarize(vm), Summarize(hwm), Summarize(threads)
	return out, err
}

// Memory measures IdleMemory for each count, both runtimes in turn.
func (e *Env) Memory(ctx context.Context, counts []int, settle time.Duration) ([]MemoryPoint, error) {
	var points []MemoryPoint
	for i, n := range counts {
		p := MemoryPoint{Containers: n}
		for _, rt := range order(i) {
			e.logf("idle memory: %d %s containers", n, rt.Short())
			m, err := e.IdleMemory(ctx, rt, n, settle)
			if err != nil {
				return points, err
			}
			if rt == Mine {
				p.Mine = m
			} else {
				p.Runc = m
			}
		}
		p.RssRatio = Ratio(p.Mine.Rss.Median, p.Runc.Rss.Median)
		p.PssRatio = Ratio(p.Mine.Pss.Median, p.Runc.Pss.Median)
		p.PssAnonRatio = Ratio(p.Mine.PssAnon.Median, p.Runc.PssAnon.Median)
		points = append(points, p)
	}
	return points, nil
}

// Binary is a shim binary on disk.
type Binary struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
	// Stripped tells whether the file has no symbol table (.symtab).
	Stripped bool `json:"stripped"`
	// Static tells whether it has no program interpreter (no dynamic
	// libc: built with CGO_ENABLED=0).
	Static bool `json:"static"`
}

// Binaries describes both shim binaries.
func (e *Env) Binaries() (map[string]Binary, error) {
	out := map[string]Binary{}
	for _, rt := range Runtimes {
		p := e.shimExe[rt]
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		symtab, interp := elfInfo(p)
		out[rt.Short()] = Binary{Path: p, Bytes: fi.Size(), Stripped: !symtab, Static: !interp}
	}
	return out, nil
}

// elfInfo tells whether the ELF file has a symbol table and an interpreter.
func elfInfo(path string) (symtab, interp bool) {
	f, err := elf.Open(path)
	if err != nil {
		return false, false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp = true
		}
	}
	return f.Section(".symtab") != nil, interp
}
