package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// oomLimit is the memory limit of the OOM container; its process asks for
// four times as much.
const oomLimit = 16 << 20

// oomArgs allocate 64 MiB and fill it: busybox dd reads /dev/zero into one
// buffer of bs bytes.
var oomArgs = []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}

// OOMResult is the latency from the kernel's OOM kill of the container's
// process to the arrival of /tasks/oom, and of /tasks/exit, at a subscriber
// of containerd's event stream. KillClock says how the kill was timed:
// "oom:mark_victim" (the kernel's tracepoint, see killTracer) or, where
// tracefs is missing, "oom_kill counter" (the moment the cgroup's counter
// was seen to move, see oomProbe).
type OOMResult struct {
	LimitBytes int        `json:"limit_bytes"`
	KillClock  string     `json:"kill_clock"`
	OOMEvent   Comparison `json:"kill_to_task_oom_ms"`
	ExitEvent  Comparison `json:"kill_to_task_exit_ms"`
	// KillToCounter is, with the tracepoint clock, the time from the kill
	// to the moment the cgroup's oom_kill counter was seen to move by a
	// probe of the harness (the notification, then re-reads every
	// counterPoll): the floor of any shim that reports kills only. It is
	// measured in the runs of both runtimes.
	KillToCounter Comparison `json:"kill_to_counter_ms"`
	// Forward is the time from a TaskOOM forwarded over containerd's ttrpc
	// events service, as a shim publishes one, to its arrival on the event
	// stream: containerd's part of every /tasks/oom latency, whatever the
	// shim (the same in both runtimes' runs, so reported once).
	Forward Summary `json:"forward_to_stream_ms"`
}

// forwardRounds is how many TaskOOM events the OOM step forwards itself.
const forwardRounds = 50

// forward times forwardRounds TaskOOM events of a container that does not
// exist, each forwarded as a shim does (Events.Forward on containerd's ttrpc
// socket), from the call to the arrival on the event stream.
func (e *Env) forward(ctx context.Context) (Summary, error) {
	conn, err := net.DialTimeout("unix", e.d.Config.TTRPCAddress(), 2*time.Second)
	if err != nil {
		return Summary{}, err
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	svc := ttrpcevents.NewTTRPCEventsClient(c)
	var took []float64
	for i := range forwardRounds {
		id := fmt.Sprintf("forward-%s-%d", e.tag, i)
		ev, err := typeurl.MarshalAnyToProto(&apievents.TaskOOM{ContainerID: id})
		if err != nil {
			return Summary{}, err
		}
		key := eventKey{topic: topicOOM, container: id}
		ch := e.events.expect(key)
		sent := monotonic()
		_, err = svc.Forward(e.nsCtx(ctx), &ttrpcevents.ForwardRequest{Envelope: &apitypes.Envelope{
			Timestamp: timestamppb.Now(), Namespace: Namespace, Topic: topicOOM, Event: ev,
		}})
		if err != nil {
			e.events.forget(key)
			return Summary{}, fmt.Errorf("forward: %w", err)
		}
		at, err := e.events.await(ch, key, exitTimeout)
		if err != nil {
			return Summary{}, err
		}
		took = append(took, (at-sent)*1000)
		time.Sleep(10 * time.Millisecond) // one at a time, as OOMs come
	}
	return Summarize(took), nil
}

// oomOnce runs one container into its memory limit and returns the two
// latencies, in seconds. kills may be nil: the probe times the kill then.
func (e *Env) oomOnce(ctx context.Context, rt Runtime, id string, kills *killTracer) (oom, exit, counter float64, err error) {
	b, err := e.newBox(ctx, rt, id, oomArgs, oci.WithMemoryLimit(oomLimit))
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() { err = errors.Join(err, b.remove(ctx, e)) }()
	if err := b.createTask(ctx, e); err != nil {
		return 0, 0, 0, err
	}
	pid := int(b.t.Pid())
	probe, err := newOOMProbe(pid)
	if err != nil {
		if kills == nil {
			return 0, 0, 0, err
		}
		probe = nil
	} else {
		defer probe.close()
	}
	type seen struct {
		at  float64
		err error
	}
	counterC := make(chan seen, 1)
	oomKey := eventKey{topic: topicOOM, container: id}
	exitKey := eventKey{topic: topicExit, container: id}
	oomC, exitC := e.events.expect(oomKey), e.events.expect(exitKey)
	defer e.events.forget(oomKey)
	defer e.events.forget(exitKey)
	if err := b.start(ctx, e); err != nil {
		return 0, 0, 0, err
	}
	if probe != nil {
		go func() {
			at, err := probe.wait(time.Now().Add(exitTimeout))
			counterC <- seen{at, err}
		}()
	}
	var killed, counterAt float64
	if kills == nil {
		s := <-counterC
		if s.err != nil {
			return 0, 0, 0, fmt.Errorf("%s (%s): %w", id, rt.Short(), s.err)
		}
		killed = s.at
	}
	oomAt, err := e.events.await(oomC, oomKey, exitTimeout)
	if err != nil {
		return 0, 0, 0, err
	}
	exitAt, err := e.events.await(exitC, exitKey, exitTimeout)
	if err != nil {
		return 0, 0, 0, err
	}
	if kills != nil {
		if killed, err = kills.killTime(pid); err != nil {
			return 0, 0, 0, fmt.Errorf("%s (%s): %w", id, rt.Short(), err)
		}
		if probe != nil {
			if s := <-counterC; s.err == nil {
				counterAt = s.at
			}
		}
	}
	if counterAt != 0 {
		counter = counterAt - killed
	}
	return oomAt - killed, exitAt - killed, counter, nil
}

// OOM measures n OOM kills per runtime, alternating.
func (e *Env) OOM(ctx context.Context, n int) (*OOMResult, error) {
	res := &OOMResult{LimitBytes: oomLimit, KillClock: "oom:mark_victim"}
	kills, err := newKillTracer(Namespace + "-" + e.tag)
	if err != nil {
		e.logf("oom: timing kills by the oom_kill counter: %v", err)
		res.KillClock = "oom_kill counter"
	} else {
		defer kills.close()
	}
	var oom, exit, counter Pair
	for i := range n {
		for _, rt := range order(i) {
			o, x, c, err := e.oomOnce(ctx, rt, fmt.Sprintf("oom-%s-%s-%d", rt.Short(), e.tag, i), kills)
			if err != nil {
				return nil, err
			}
			oom.add(rt, o*1000)
			exit.add(rt, x*1000)
			if c != 0 {
				counter.add(rt, c*1000)
			}
		}
	}
	res.OOMEvent, res.ExitEvent = oom.Compare("ms"), exit.Compare("ms")
	res.KillToCounter = counter.Compare("ms")
	if res.Forward, err = e.forward(ctx); err != nil {
		return nil, err
	}
	return res, nil
}

// ExecExitResult is the latency of /tasks/exit of an exec of `true`:
// measured from the return of the exec's Start call (FromStartReturn; it
// can be negative, when the exit is published before Start's reply
// arrives) and from the call (FromStartCall).
type ExecExitResult struct {
	FromStartReturn Comparison `json:"start_return_to_task_exit_ms"`
	FromStartCall   Comparison `json:"start_call_to_task_exit_ms"`
}

// execExitOnce execs `true` into b and times its /tasks/exit.
func (e *Env) execExitOnce(ctx context.Context, b *box, spec *specs.Process, execID string) (fromReturn, fromCall float64, err error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	key := eventKey{topic: topicExit, container: b.id, exec: execID}
	ch := e.events.expect(key)
	defer e.events.forget(key)
	p, err := b.t.Exec(ctx, execID, spec, cio.NullIO)
	if err != nil {
		return 0, 0, fmt.Errorf("exec %s in %s: %w", execID, b.id, err)
	}
	defer func() {
		if _, derr := p.Delete(ctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete exec %s: %w", execID, derr))
		}
	}()
	call := monotonic()
	if err := p.Start(ctx); err != nil {
		return 0, 0, fmt.Errorf("start exec %s in %s: %w", execID, b.id, err)
	}
	ret := monotonic()
	at, err := e.events.await(ch, key, exitTimeout)
	if err != nil {
		return 0, 0, err
	}
	return at - ret, at - call, nil
}

// ExecExit measures n execs per runtime into one running container each,
// one at a time, alternating.
func (e *Env) ExecExit(ctx context.Context, n int) (_ *ExecExitResult, err error) {
	targets, err := e.execTargets(ctx, "xl")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, e.removeTargets(ctx, targets)) }()
	fromReturn, fromCall := Pair{}, Pair{}
	for i := range n {
		for _, rt := range order(i) {
			b := targets[rt]
			spec, err := b.execSpec(ctx, e, "true")
			if err != nil {
				return nil, err
			}
			r, c, err := e.execExitOnce(ctx, b, spec, fmt.Sprintf("x%d", i))
			if err != nil {
				return nil, err
			}
			fromReturn.add(rt, r*1000)
			fromCall.add(rt, c*1000)
		}
	}
	return &ExecExitResult{FromStartReturn: fromReturn.Compare("ms"), FromStartCall: fromCall.Compare("ms")}, nil
}
