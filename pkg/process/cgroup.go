package process

import (
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/cgroup"
)

// metricsSource reads the cgroup metrics of a container: cgroup v1 metrics
// (io.containerd.cgroups.v1.Metrics) on legacy and hybrid hosts, cgroup v2
// metrics (io.containerd.cgroups.v2.Metrics) on unified ones, as containerd
// and CRI decode them.
type metricsSource interface {
	metrics() (proto.Message, error)
	// exists tells whether the cgroup is still there.
	exists() bool
}

type cgroupSource struct{ s *cgroup.Stats }

func (c cgroupSource) metrics() (proto.Message, error) { return c.s.Read() }
func (c cgroupSource) exists() bool                    { return c.s.Exists() }

// loadMetricsSource finds the cgroup that procCgroup (the content of the
// init's /proc/<pid>/cgroup, read while it lived) names, or when that is
// nil the cgroup of pid.
func loadMetricsSource(procCgroup []byte, pid int) (metricsSource, error) {
	var s *cgroup.Stats
	var err error
	if procCgroup != nil {
		s, err = cgroup.ForProcCgroup(procCgroup)
	} else {
		s, err = cgroup.ForPid(pid)
	}
	if err != nil {
		return nil, err
	}
	return cgroupSource{s}, nil
}

// JoinCgroup moves pid into the cgroup at path (relative to the cgroup
// root), creating it if needed: the ShimCgroup runtime option.
func JoinCgroup(path string, pid int) error { return cgroup.Join(path, pid) }
