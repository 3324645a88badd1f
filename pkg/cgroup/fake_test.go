package cgroup

import (
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"google.golang.org/protobuf/proto"
)

// Cgroup files in the kernel's formats, for the cases a real cgroup of the
// test host cannot show (CFQ blkio, rdma, PSI, io.stat, cgroup v2 on a v1
// host): the reader must read them as the managers do.

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var v1Files = map[string]map[string]string{
	"pids": {"pids.current": "3\n", "pids.max": "max\n"},
	"cpu": {"cpu.stat": "nr_periods 120\nnr_throttled 7\nthrottled_time 912345678\nnr_bursts 0\nburst_time 0\n" +
		"wait_sum 0\n"},
	"cpuacct": {
		"cpuacct.stat":         "user 1234\nsystem 567\n",
		"cpuacct.usage":        "18010203040\n",
		"cpuacct.usage_percpu": "9000000000 9010203040 \n",
	},
	"memory": {
		"memory.stat": "cache 4096\nrss 8388608\nrss_huge 2097152\nshmem 0\nmapped_file 1024\ndirty 12\nwriteback 3\n" +
			"swap 0\npgpgin 2100\npgpgout 50\npgfault 2500\npgmajfault 2\ninactive_anon 8000000\nactive_anon 388608\n" +
			"inactive_file 4096\nactive_file 0\nunevictable 0\nhierarchical_memory_limit 268435456\n" +
			"hierarchical_memsw_limit 9223372036854771712\ntotal_cache 4096\ntotal_rss 8388608\ntotal_rss_huge 2097152\n" +
			"total_shmem 0\ntotal_mapped_file 1024\ntotal_dirty 12\ntotal_writeback 3\ntotal_swap 0\ntotal_pgpgin 2100\n" +
			"total_pgpgout 50\ntotal_pgfault 2500\ntotal_pgmajfault 2\ntotal_inactive_anon 8000000\n" +
			"total_active_anon 388608\ntotal_inactive_file 4096\ntotal_active_file 0\ntotal_unevictable 0\n",
		"memory.oom_control":                 "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
		"memory.usage_in_bytes":              "8392704\n",
		"memory.max_usage_in_bytes":          "9000000\n",
		"memory.failcnt":                     "11\n",
		"memory.limit_in_bytes":              "268435456\n",
		"memory.memsw.usage_in_bytes":        "8392704\n",
		"memory.memsw.max_usage_in_bytes":    "9000000\n",
		"memory.memsw.failcnt":               "0\n",
		"memory.memsw.limit_in_bytes":        "9223372036854771712\n",
		"memory.kmem.usage_in_bytes":         "65536\n",
		"memory.kmem.max_usage_in_bytes":     "70000\n",
		"memory.kmem.failcnt":                "0\n",
		"memory.kmem.limit_in_bytes":         "-1\n",
		"memory.kmem.tcp.usage_in_bytes":     "0\n",
		"memory.kmem.tcp.max_usage_in_bytes": "0\n",
		"memory.kmem.tcp.failcnt":            "0\n",
		"memory.kmem.tcp.limit_in_bytes":     "9223372036854771712\n",
	},
	"blkio": {
		"blkio.throttle.io_serviced":      "8:0 Read 10\n8:0 Write 2\n8:0 Sync 12\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 12\n253:1 Read 1\nTotal 13\n",
		"blkio.throttle.io_service_bytes": "8:0 Read 40960\n8:0 Write 8192\n8:0 Total 49152\n9:9 Read 7\nTotal 49159\n",
	},
	"rdma": {
		"rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\nocrdma1 hca_handle=3 hca_object=max\n",
		"rdma.max":     "mlx4_0 hca_handle=max hca_object=max\nocrdma1 hca_handle=-1 hca_object=99999999999\n",
	},
}

var cfqFiles = map[string]string{
	"blkio.sectors_recursive":          "8:0 80\n8:16 8\n",
	"blkio.io_service_bytes_recursive": "8:0 Read 40960\n8:0 Write 0\n8:0 Sync 0\n8:0 Async 40960\n8:0 Total 40960\nTotal 40960\n",
	"blkio.io_serviced_recursive":      "8:0 Read 10\n8:0 Write 0\nTotal 10\n",
	"blkio.io_queued_recursive":        "8:0 Read 0\nTotal 0\n",
	"blkio.io_service_time_recursive":  "8:0 Read 12345\nTotal 12345\n",
	"blkio.io_wait_time_recursive":     "8:0 Read 456\nTotal 456\n",
	"blkio.io_merged_recursive":        "8:0 Read 1\nTotal 1\n",
	"blkio.time_recursive":             "8:0 33\n",
}

const partitions = "major minor  #blocks  name\n\n   8        0   52428800 sda\n   8        1   52427776 sda1\n" +
	"   8       16   10485760 sdb\n 253        1    1048576 dm-1\n   8        0          1 sda-again\n"

func TestCompareV1Files(t *testing.T) {
	hugetlb := map[string]string{}
	for _, p := range v1PageSizes() {
		hugetlb[p.files[0]], hugetlb[p.files[1]], hugetlb[p.files[2]] = "2097152\n", "4194304\n", "1\n"
	}
	for _, tc := range []struct {
		name   string
		change func(files map[string]map[string]string)
	}{
		{"throttle", nil},
		{"cfq", func(f map[string]map[string]string) { maps.Copy(f["blkio"], cfqFiles) }},
		{"cfq files empty", func(f map[string]map[string]string) {
			for n := range cfqFiles {
				f["blkio"][n] = "Total 0\n"
			}
		}},
		{"no swap accounting", func(f map[string]map[string]string) {
			for n := range f["memory"] {
				if filepath.Ext(n) != ".stat" && len(n) > 13 && n[:13] == "memory.memsw." {
					delete(f["memory"], n)
				}
			}
		}},
		{"no oom_control", func(f map[string]map[string]string) { delete(f["memory"], "memory.oom_control") }},
		{"no cpuacct.usage_percpu", func(f map[string]map[string]string) { delete(f["cpuacct"], "cpuacct.usage_percpu") }},
		{"rdma device gone", func(f map[string]map[string]string) {
			f["rdma"]["rdma.max"] = "mlx4_0 hca_handle=max hca_object=max\n"
		}},
		{"empty", func(f map[string]map[string]string) { clear(f) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]map[string]string{"hugetlb": hugetlb}
			for c, fs := range v1Files {
				files[c] = maps.Clone(fs)
			}
			if tc.change != nil {
				tc.change(files)
			}
			root, proc := t.TempDir(), t.TempDir()
			writeFiles(t, proc, map[string]string{"partitions": partitions})
			s := &v1Stats{procDir: proc}
			for _, c := range v1Controllers {
				dir := filepath.Join(root, c, "cg")
				writeFiles(t, dir, files[c])
				*s.dir(c) = dir
			}
			if len(v1PageSizes()) == 0 {
				s.hugetlb = ""
			}
			var r fileReader
			ours := func() (proto.Message, error) { return s.read(&r) }
			theirs := func() (proto.Message, error) {
				cg, err := cgroup1.Load(cgroup1.StaticPath("/cg"), cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) {
					subs := []cgroup1.Subsystem{
						cgroup1.NewPids(root), cgroup1.NewCpu(root), cgroup1.NewCpuacct(root), cgroup1.NewMemory(root),
						cgroup1.NewBlkio(root, cgroup1.ProcRoot(proc)), cgroup1.NewRdma(root),
					}
					if h, err := cgroup1.NewHugetlb(root); err == nil {
						subs = append(subs, h)
					}
					return subs, nil
				}))
				if err != nil {
					return nil, err
				}
				return cg.Stat(cgroup1.IgnoreNotExist)
			}
			sameMetrics(t, ours, theirs)
			fds := openFDs(t)
			for range 10 {
				if _, err := ours(); err != nil {
					t.Fatal(err)
				}
			}
			if n := openFDs(t); n != fds {
				t.Errorf("%d fds open after 10 readings, %d before", n, fds)
			}
		})
	}
}

// openFDs counts the test process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

var v2Files = map[string]string{
	"pids.current": "3\n",
	"pids.max":     "max\n",
	"cpu.stat": "usage_usec 18010203\nuser_usec 12340000\nsystem_usec 5670203\ncore_sched.force_idle_usec 0\n" +
		"nr_periods 120\nnr_throttled 7\nthrottled_usec 912345\nnr_bursts 1\nburst_usec 20\n",
	"cpu.pressure": "some avg10=1.23 avg60=0.40 avg300=0.08 total=123456\nfull avg10=0.00 avg60=12.34 avg300=99.99 total=1\n",
	"memory.stat": "anon 8388608\nfile 4096\nkernel 131072\nkernel_stack 32768\npagetables 65536\nsec_pagetables 0\n" +
		"percpu 1024\nsock 0\nvmalloc 0\nshmem 0\nzswap 0\nzswapped 0\nfile_mapped 1024\nfile_dirty 12\n" +
		"file_writeback 3\nswapcached 0\nanon_thp 2097152\nfile_thp 0\nshmem_thp 0\ninactive_anon 8000000\n" +
		"active_anon 388608\ninactive_file 4096\nactive_file 0\nunevictable 0\nslab_reclaimable 2048\n" +
		"slab_unreclaimable 4096\nslab 6144\nworkingset_refault_anon 0\nworkingset_refault_file 5\n" +
		"workingset_activate_anon 0\nworkingset_activate_file 1\nworkingset_restore_anon 0\n" +
		"workingset_restore_file 0\nworkingset_nodereclaim 2\npgdemote_kswapd 0\npgscan 30\npgsteal 20\n" +
		"pgscan_kswapd 0\npgscan_direct 30\npgsteal_kswapd 0\npgsteal_direct 20\npgfault 2500\npgmajfault 2\n" +
		"pgrefill 4\npgactivate 5\npgdeactivate 6\npglazyfree 7\npglazyfreed 8\nthp_fault_alloc 9\n" +
		"thp_collapse_alloc 10\n",
	"memory.current":      "8392704\n",
	"memory.max":          "268435456\n",
	"memory.peak":         "9000000\n",
	"memory.swap.current": "0\n",
	"memory.swap.max":     "max\n",
	"memory.events":       "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
	"memory.pressure":     "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
	"io.stat": "8:0 rbytes=40960 wbytes=8192 rios=10 wios=2 dbytes=0 dios=0\n" +
		"253:1 rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
	"io.pressure":  "some avg10=0.00 avg60=0.00 avg300=0.00 total=77\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=70\n",
	"rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n",
	"rdma.max":     "mlx4_0 hca_handle=max hca_object=max\n",
}

func TestCompareV2Files(t *testing.T) {
	hugetlb := map[string]string{}
	for _, p := range v2PageSizes() {
		hugetlb[p.files[0]], hugetlb[p.files[1]], hugetlb[p.files[2]] = "max\n", "2097152\n", "max 3\n"
	}
	for _, tc := range []struct {
		name   string
		change func(map[string]string)
	}{
		{"all", nil},
		{"no cpu.stat", func(f map[string]string) { delete(f, "cpu.stat") }},
		{"no memory.stat", func(f map[string]string) { delete(f, "memory.stat") }},
		{"no memory.events", func(f map[string]string) { delete(f, "memory.events") }},
		{"empty memory.events", func(f map[string]string) { f["memory.events"] = "" }},
		{"no psi", func(f map[string]string) {
			delete(f, "cpu.pressure")
			delete(f, "memory.pressure")
			delete(f, "io.pressure")
		}},
		{"psi only some", func(f map[string]string) {
			f["cpu.pressure"] = "some avg10=100.00 avg60=3.01 avg300=0.17 total=9\n"
		}},
		{"bad psi", func(f map[string]string) { f["memory.pressure"] = "some avg10 avg60=0.00\n" }},
		{"odd io.stat", func(f map[string]string) {
			f["io.stat"] = "8:0 rbytes=1 wbytes=x rios= =3 wios=4=5  dbytes=0\n8:16\n\n1:2:3 rbytes=1\n8:32 \nx:1 rbytes=5\n9:9 rbytes=6\n"
		}},
		{"odd values", func(f map[string]string) {
			f["pids.current"] = "-1\n"
			f["memory.peak"] = "garbage\n"
			f["rdma.current"] = "mlx4_0 hca_handle=x hca_object=-3\nshort line\n"
		}},
		{"empty", func(f map[string]string) { clear(f) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := maps.Clone(v2Files)
			maps.Copy(files, hugetlb)
			if tc.change != nil {
				tc.change(files)
			}
			root := t.TempDir()
			writeFiles(t, filepath.Join(root, "cg"), files)
			s := &v2Stats{dir: filepath.Join(root, "cg")}
			var r fileReader
			ours := func() (proto.Message, error) { return s.read(&r) }
			theirs := func() (proto.Message, error) {
				m, err := cgroup2.Load("/cg", cgroup2.WithMountpoint(root))
				if err != nil {
					return nil, err
				}
				return m.Stat()
			}
			sameMetrics(t, ours, theirs)
		})
	}
}
