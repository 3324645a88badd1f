package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/process"
)

// joinPodCgroup moves the holder into <parent>/<id>, where a pause
// container of the pod would run, and returns that path. Only cgroupfs
// parents (absolute paths) are supported.
func joinPodCgroup(parent, id string, pid int) (string, error) {
	if !strings.HasPrefix(parent, "/") {
		return "", fmt.Errorf("cgroup parent %q (systemd slices are not supported): %w", parent, errdefs.ErrNotImplemented)
	}
	p := path.Join(parent, id)
	if err := process.JoinCgroup(p, pid); err != nil {
		return "", err
	}
	return p, nil
}

// removeCgroup removes the holder's cgroup once the holder is gone.
func removeCgroup(p string) {
	if p == "" {
		return
	}
	if cgroups.Mode() == cgroups.Unified {
		if m, err := cgroup2.Load(p); err == nil {
			_ = m.Delete()
		}
		return
	}
	if cg, err := cgroup1.Load(cgroup1.StaticPath(p)); err == nil {
		_ = cg.Delete()
	}
}

// podStats reads the metrics of the pod's cgroup parent, or of the cgroup
// of pid when there is no parent.
func podStats(parent string, pid int) (proto.Message, error) {
	if parent == "" && pid == 0 {
		return nil, fmt.Errorf("no pod cgroup and no holder: %w", errdefs.ErrFailedPrecondition)
	}
	if cgroups.Mode() == cgroups.Unified {
		group := parent
		if group == "" {
			var err error
			if group, err = cgroup2.PidGroupPath(pid); err != nil {
				return nil, err
			}
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		return m.Stat()
	}
	p := cgroup1.PidPath(pid)
	if parent != "" {
		p = cgroup1.StaticPath(parent)
	}
	cg, err := cgroup1.Load(p)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil, fmt.Errorf("pod cgroup %q: %v: %w", parent, err, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return cg.Stat(cgroup1.IgnoreNotExist)
}
