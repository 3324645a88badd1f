package process

import (
	"os"
	"testing"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"google.golang.org/protobuf/proto"
)

// BenchmarkMetrics reads the cgroup metrics of the test process's own
// cgroup, as Stats does for a container: b.ReportAllocs shows what one
// Stats call allocates. "manager" is the same reading through the
// cgroups/v3 manager, which the shim used before pkg/cgroup, for
// comparison in the same run.
func BenchmarkMetrics(b *testing.B) {
	b.Run("reader", func(b *testing.B) {
		src, err := loadMetricsSource(nil, os.Getpid())
		if err != nil {
			b.Skipf("no cgroup metrics here: %v", err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := src.metrics(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("manager", func(b *testing.B) {
		var read func() (proto.Message, error)
		if cgroups.Mode() == cgroups.Unified {
			g, err := cgroup2.PidGroupPath(os.Getpid())
			if err != nil {
				b.Skipf("no cgroup here: %v", err)
			}
			m, err := cgroup2.Load(g)
			if err != nil {
				b.Skipf("no cgroup here: %v", err)
			}
			read = func() (proto.Message, error) { return m.Stat() }
		} else {
			cg, err := cgroup1.Load(cgroup1.PidPath(os.Getpid()))
			if err != nil {
				b.Skipf("no cgroup here: %v", err)
			}
			read = func() (proto.Message, error) { return cg.Stat(cgroup1.IgnoreNotExist) }
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := read(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
