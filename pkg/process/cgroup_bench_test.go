package process

import (
	"os"
	"testing"
)

// BenchmarkMetrics reads the cgroup metrics of the test process's own
// cgroup, as Stats does for a container: b.ReportAllocs shows what one
// Stats call allocates.
func BenchmarkMetrics(b *testing.B) {
	src, err := loadMetricsSource(os.Getpid())
	if err != nil {
		b.Skipf("no cgroup metrics here: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := src.metrics(); err != nil {
			b.Fatal(err)
		}
	}
}
