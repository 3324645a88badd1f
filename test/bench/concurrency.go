package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// BurstResult is the wall time of a burst of concurrent operations, and the
// CPU the shims spent per operation: Self is the shim daemons' own CPU,
// Children the CPU of the processes they reaped (runc, and for execs the
// exec'd process).
type BurstResult struct {
	Ops      int        `json:"ops"`
	Wall     Comparison `json:"wall_ms"`
	SelfCPU  Comparison `json:"shim_cpu_ms_per_op"`
	ChildCPU Comparison `json:"children_cpu_ms_per_op"`
}

// burstSamples accumulates rounds of a burst measurement.
type burstSamples struct {
	wall, self, child Pair
}

func (s *burstSamples) add(rt Runtime, wall time.Duration, cpu CPU, ops int) {
	s.wall.add(rt, ms(wall))
	s.self.add(rt, cpu.Self/float64(ops))
	s.child.add(rt, cpu.Children/float64(ops))
}

func (s *burstSamples) result(ops int) *BurstResult {
	return &BurstResult{Ops: ops, Wall: s.wall.Compare("ms"), SelfCPU: s.self.Compare("ms"), ChildCPU: s.child.Compare("ms")}
}

// execTargets starts a `sleep` container for each runtime and warms each
// with one exec.
func (e *Env) execTargets(ctx context.Context, prefix string) (map[Runtime]*box, error) {
	targets := map[Runtime]*box{}
	for _, rt := range Runtimes {
		boxes, err := e.startSleepers(ctx, rt, fmt.Sprintf("%s-%s-%s", prefix, rt.Short(), e.tag), 1)
		if err != nil {
			return nil, errors.Join(err, e.removeTargets(ctx, targets))
		}
		targets[rt] = boxes[0]
		spec, err := boxes[0].execSpec(ctx, e, "true")
		if err == nil {
			err = boxes[0].execTrue(ctx, e, spec, "warm")
		}
		if err != nil {
			return nil, errors.Join(err, e.removeTargets(ctx, targets))
		}
	}
	return targets, nil
}

func (e *Env) removeTargets(ctx context.Context, targets map[Runtime]*box) error {
	var errs []error
	for _, b := range targets {
		errs = append(errs, b.remove(ctx, e))
	}
	return errors.Join(errs...)
}

// execBurst runs n execs of `true` into b at once, released together, and
// returns the wall time until the last one was deleted.
func (e *Env) execBurst(ctx context.Context, b *box, n int, tag string) (time.Duration, error) {
	spec, err := b.execSpec(ctx, e, "true")
	if err != nil {
		return 0, err
	}
	release := make(chan struct{})
	errs := make([]error, n)
	var ready, done sync.WaitGroup
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			errs[i] = b.execTrue(ctx, e, spec, fmt.Sprintf("%s-%d", tag, i))
		}()
	}
	ready.Wait()
	begin := time.Now()
	close(release)
	done.Wait()
	return time.Since(begin), errors.Join(errs...)
}

// ParallelExec measures rounds of n concurrent execs of `true` into one
// running container per runtime, alternating the runtimes.
func (e *Env) ParallelExec(ctx context.Context, n, rounds int) (_ *BurstResult, err error) {
	targets, err := e.execTargets(ctx, "px")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, e.removeTargets(ctx, targets)) }()
	var s burstSamples
	for i := range rounds {
		for _, rt := range order(i) {
			b := targets[rt]
			pid, err := e.shimOf(b)
			if err != nil {
				return nil, err
			}
			before, err := readCPU(pid)
			if err != nil {
				return nil, err
			}
			wall, err := e.execBurst(ctx, b, n, fmt.Sprintf("r%d", i))
			if err != nil {
				return nil, err
			}
			after, err := readCPU(pid)
			if err != nil {
				return nil, err
			}
			s.add(rt, wall, after.sub(before), n)
		}
	}
	return s.result(n), nil
}

// startBurst creates n containers (untimed), then creates and starts their
// tasks all at once and returns the wall time until the last one started,
// with the CPU their shims used so far, summed. The containers are removed
// after.
func (e *Env) startBurst(ctx context.Context, rt Runtime, n int, tag string) (_ time.Duration, _ CPU, err error) {
	boxes := make([]*box, n)
	defer func() { err = errors.Join(err, e.removeAll(ctx, boxes)) }()
	err = parallel(n, setupParallelism, func(i int) error {
		b, err := e.newBox(ctx, rt, fmt.Sprintf("cs-%s-%s-%s-%d", rt.Short(), e.tag, tag, i), []string{"sleep", "3600"})
		boxes[i] = b
		return err
	})
	if err != nil {
		return 0, CPU{}, err
	}
	release := make(chan struct{})
	errs := make([]error, n)
	var ready, done sync.WaitGroup
	for i, b := range boxes {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			if errs[i] = b.createTask(ctx, e); errs[i] == nil {
				errs[i] = b.start(ctx, e)
			}
		}()
	}
	ready.Wait()
	begin := time.Now()
	close(release)
	done.Wait()
	wall := time.Since(begin)
	if err := errors.Join(errs...); err != nil {
		return 0, CPU{}, err
	}
	var total CPU
	for _, b := range boxes {
		pid, err := e.shimOf(b)
		if err != nil {
			return 0, CPU{}, err
		}
		c, err := readCPU(pid)
		if err != nil {
			return 0, CPU{}, err
		}
		total.Self += c.Self
		total.Children += c.Children
	}
	return wall, total, nil
}

// ConcurrentStart measures rounds of n containers started at once,
// alternating the runtimes.
func (e *Env) ConcurrentStart(ctx context.Context, n, rounds int) (*BurstResult, error) {
	var s burstSamples
	for i := range rounds {
		for _, rt := range order(i) {
			e.logf("concurrent start: %d %s containers, round %d", n, rt.Short(), i+1)
			wall, cpu, err := e.startBurst(ctx, rt, n, fmt.Sprintf("r%d", i))
			if err != nil {
				return nil, err
			}
			s.add(rt, wall, cpu, n)
		}
	}
	return s.result(n), nil
}
