package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/docker/go-units"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/minimgr"
)

// sample is one sample of a container's metrics, whichever cgroup version
// the shim measured.
type sample struct {
	at       time.Time
	cpuNanos uint64
	mem      uint64 // bytes in use, less the inactive page cache (as docker counts)
	memLimit uint64
	pids     uint64
	raw      proto.Message
}

// decodeMetrics reads the metrics Any of a shim: cgroup v1 or v2 metrics.
func decodeMetrics(ctx context.Context, ct *minimgr.Container) (sample, error) {
	a, err := ct.Stats(ctx)
	if err != nil {
		return sample{}, err
	}
	if a == nil {
		return sample{}, fmt.Errorf("stats of %s: the shim sent none: %w", ct.ID(), errdefs.ErrNotFound)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return sample{}, fmt.Errorf("stats of %s: %s: %w", ct.ID(), a.GetTypeUrl(), errdefs.ErrNotImplemented)
	}
	u := sample{at: time.Now()}
	switch m := v.(type) {
	case *v1.Metrics:
		u.raw = m
		u.cpuNanos = m.GetCPU().GetUsage().GetTotal()
		mem := m.GetMemory()
		u.mem = mem.GetUsage().GetUsage()
		if inactive := mem.GetTotalInactiveFile(); inactive < u.mem {
			u.mem -= inactive
		}
		u.memLimit = mem.GetUsage().GetLimit()
		u.pids = m.GetPids().GetCurrent()
	case *v2.Metrics:
		u.raw = m
		u.cpuNanos = m.GetCPU().GetUsageUsec() * 1000
		mem := m.GetMemory()
		u.mem = mem.GetUsage()
		if inactive := mem.GetInactiveFile(); inactive < u.mem {
			u.mem -= inactive
		}
		u.memLimit = mem.GetUsageLimit()
		u.pids = m.GetPids().GetCurrent()
	default:
		return sample{}, fmt.Errorf("stats of %s: %s: %w", ct.ID(), a.GetTypeUrl(), errdefs.ErrNotImplemented)
	}
	return u, nil
}

// statsInterval is the time between two samples: CPU % is the usage over it.
const statsInterval = time.Second

// unlimited is a memory limit that is no limit (cgroup v1 reports the
// largest page-aligned int64).
const unlimited = 1 << 62

func statsFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	noStream := fs.Bool("no-stream", false, "print one sample and exit")
	asJSON := fs.Bool("json", false, "print the decoded metrics as JSON, once")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var cts []*minimgr.Container
		defer func() {
			for _, ct := range cts {
				ct.Close()
			}
		}()
		for _, id := range args {
			ct, err := m.Open(c.ctx, id)
			if err != nil {
				return 0, err
			}
			cts = append(cts, ct)
		}
		if *asJSON {
			for _, ct := range cts {
				u, err := decodeMetrics(c.ctx, ct)
				if err != nil {
					return 0, err
				}
				data, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(u.raw)
				if err != nil {
					return 0, err
				}
				fmt.Fprintf(c.stdout, "%s\n", data)
			}
			return 0, nil
		}
		ctx, cancel := interruptible(c.ctx)
		defer cancel()
		prev := make([]sample, len(cts))
		for i, ct := range cts {
			if prev[i], err = decodeMetrics(ctx, ct); err != nil {
				return 0, err
			}
		}
		for {
			t := time.NewTimer(statsInterval)
			select {
			case <-ctx.Done():
				t.Stop()
				return 0, nil
			case <-t.C:
			}
			w := tabwriter.NewWriter(c.stdout, 4, 8, 2, ' ', 0)
			if !*noStream {
				fmt.Fprint(c.stdout, "\033[2J\033[H") // clear the screen, as docker does
			}
			fmt.Fprintln(w, "ID\tCPU %\tMEM USAGE / LIMIT\tMEM %\tPIDS")
			for i, ct := range cts {
				u, err := decodeMetrics(ctx, ct)
				if errors.Is(err, context.Canceled) {
					return 0, nil
				}
				if err != nil {
					return 0, err
				}
				fmt.Fprintln(w, statsRow(ct.ID(), prev[i], u))
				prev[i] = u
			}
			if err := w.Flush(); err != nil || *noStream {
				return 0, err
			}
		}
	}
}

func statsRow(id string, prev, cur sample) string {
	cpu := 0.0
	if d := cur.at.Sub(prev.at); d > 0 && cur.cpuNanos >= prev.cpuNanos {
		cpu = float64(cur.cpuNanos-prev.cpuNanos) / float64(d.Nanoseconds()) * 100
	}
	limit, memPct := "unlimited", "-"
	if cur.memLimit > 0 && cur.memLimit < unlimited {
		limit = units.BytesSize(float64(cur.memLimit))
		memPct = fmt.Sprintf("%.2f%%", float64(cur.mem)/float64(cur.memLimit)*100)
	}
	return strings.Join([]string{
		id,
		fmt.Sprintf("%.2f%%", cpu),
		units.BytesSize(float64(cur.mem)) + " / " + limit,
		memPct,
		fmt.Sprint(cur.pids),
	}, "\t")
}

func updateFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	memory := fs.StringP("memory", "m", "", "memory limit (e.g. 64m)")
	cpus := fs.String("cpus", "", "CPU limit (e.g. 0.5)")
	pids := fs.Int64("pids-limit", 0, "limit of processes")
	return func(c *cli, args []string) (int, error) {
		r, err := resources(*memory, *cpus, *pids)
		if err != nil {
			return 0, err
		}
		if r == nil {
			return 0, usagef("nothing to update: give --memory, --cpus or --pids-limit")
		}
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			return ct.Update(c.ctx, r)
		})
	}
}
