package sandbox

import (
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/mineshim/mine/pkg/cgroup"
)

// joinPodCgroup moves the holder into <parent>/<id>, where a pause
// container of the pod would run, and returns that path. Only cgroupfs
// parents (absolute paths) are supported.
func joinPodCgroup(parent, id string, pid int) (string, error) {
	if !strings.HasPrefix(parent, "/") {
		return "", fmt.Errorf("cgroup parent %q (systemd slices are not supported): %w", parent, errdefs.ErrNotImplemented)
	}
	p := path.Join(parent, id)
	if err := cgroup.Join(p, pid); err != nil {
		return "", err
	}
	return p, nil
}

// removeCgroup removes the holder's cgroup once the holder is gone.
func removeCgroup(p string) {
	if p == "" {
		return
	}
	_ = cgroup.Remove(p)
}

// podCgroup finds the pod's cgroup parent, or the cgroup of pid when there
// is no parent.
func podCgroup(parent string, pid int) (*cgroup.Stats, error) {
	if parent == "" && pid == 0 {
		return nil, fmt.Errorf("no pod cgroup and no holder: %w", errdefs.ErrFailedPrecondition)
	}
	var (
		s   *cgroup.Stats
		err error
	)
	if parent != "" {
		s, err = cgroup.ForPath(parent)
	} else {
		s, err = cgroup.ForPid(pid)
	}
	if err != nil {
		return nil, fmt.Errorf("pod cgroup %q: %w", parent, err)
	}
	return s, nil
}
