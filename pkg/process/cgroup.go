package process

import (
	"errors"
	"fmt"
	"os"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// metricsSource reads the cgroup metrics of a container: cgroup v1 metrics
// (io.containerd.cgroups.v1.Metrics) on legacy and hybrid hosts, cgroup v2
// metrics (io.containerd.cgroups.v2.Metrics) on unified ones, as containerd
// and CRI decode them.
type metricsSource interface {
	metrics() (proto.Message, error)
}

type v1Source struct{ cg cgroup1.Cgroup }

func (s v1Source) metrics() (proto.Message, error) {
	return s.cg.Stat(cgroup1.IgnoreNotExist)
}

type v2Source struct{ m *cgroup2.Manager }

func (s v2Source) metrics() (proto.Message, error) { return s.m.Stat() }

// loadMetricsSource finds the cgroup of pid.
func loadMetricsSource(pid int) (metricsSource, error) {
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		return v2Source{m}, nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
	}
	return v1Source{cg}, nil
}

// JoinCgroup moves pid into the cgroup at path (relative to the cgroup
// root), creating it if needed: the ShimCgroup runtime option.
func JoinCgroup(path string, pid int) error {
	if path == "" || path[0] != '/' {
		return fmt.Errorf("cgroup path %q must be absolute: %w", path, errdefs.ErrInvalidArgument)
	}
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("join cgroup %s: %w", path, err)
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if errors.Is(err, cgroup1.ErrCgroupDeleted) || errors.Is(err, os.ErrNotExist) {
		cg, err = cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	}
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, err)
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("join cgroup %s: %w", path, err)
	}
	return nil
}
