package process

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"google.golang.org/protobuf/proto"
)

// Stats returns the cgroup metrics of the container: a cgroup v1 or v2
// Metrics message, for the hierarchy in use. They are there from the create
// until the delete, after the init's exit too, as long as the cgroup is:
// CRI reads the kill counter of a container that exited with 137 when the
// exit reached it before the TaskOOM event. A stopped container whose
// cgroup is gone (systemd removes a scope once it is empty) has none: not
// found.
func (c *Container) Stats(ctx context.Context) (proto.Message, error) {
	c.mu.Lock()
	st := c.init.status
	err := check(st, opStats)
	src, where, pid := c.metrics, c.cgroupOf, c.init.pid
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if src == nil {
		if src, err = loadMetricsSource(where, pid); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.metrics, c.cgroupOf = src, nil
		c.mu.Unlock()
	}
	if st == Stopped && !src.exists() {
		return nil, fmt.Errorf("the cgroup of stopped container %s is gone: %w", c.id, errdefs.ErrNotFound)
	}
	return src.metrics()
}

// PidInfo is one process of the container; ExecID is set for exec processes.
type PidInfo struct {
	Pid    int
	ExecID string
}

// Pids lists the processes of the container. A container whose init has
// stopped has none, and says so with a failed precondition rather than an
// empty list: containerd, reloading its shims after a restart, takes an
// empty list for a leaked shim and deletes the task, and with it the exit
// status that nobody has read yet.
func (c *Container) Pids(ctx context.Context) ([]PidInfo, error) {
	c.mu.Lock()
	err := check(c.init.status, opPids)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	pids, err := c.rt.ps(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	byPid := make(map[int]string, len(c.execs))
	for id, p := range c.execs {
		if p.pid > 0 {
			byPid[p.pid] = id
		}
	}
	c.mu.Unlock()
	out := make([]PidInfo, 0, len(pids))
	for _, pid := range pids {
		out = append(out, PidInfo{Pid: pid, ExecID: byPid[pid]})
	}
	return out, nil
}
