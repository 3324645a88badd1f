package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/typeurl/v2"
)

const (
	topicExit  = "/tasks/exit"
	topicOOM   = "/tasks/oom"
	topicReady = "/mine-bench/ready"

	subscribeTimeout = 10 * time.Second
)

// eventKey names one awaited event: a topic, the container, and the exec
// (empty for the container's init process, and for OOM).
type eventKey struct {
	topic, container, exec string
}

// eventRouter holds one subscription to containerd's event stream of the
// benchmark namespace and hands the arrival time of an awaited event
// (CLOCK_MONOTONIC seconds, see monotonic) to the one waiter registered for
// its key. Events nobody waits for are dropped.
type eventRouter struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop returned

	mu      sync.Mutex
	waiters map[eventKey]chan float64 // guarded by mu
	err     error                     // guarded by mu; why the stream ended
}

// newEventRouter subscribes and returns once the subscription is live: an
// event it published itself came back.
func newEventRouter(ctx context.Context, c *client.Client) (*eventRouter, error) {
	ctx, cancel := context.WithCancel(ctx)
	r := &eventRouter{cancel: cancel, done: make(chan struct{}), waiters: map[eventKey]chan float64{}}
	envs, errs := c.EventService().Subscribe(ctx,
		fmt.Sprintf(`namespace==%q,topic~="^/tasks/(exit|oom)$"`, Namespace),
		fmt.Sprintf(`topic==%q`, topicReady))
	go r.loop(envs, errs)

	// Subscribe returns before containerd registered the subscriber:
	// publish until one of ours arrives.
	ready := r.expect(eventKey{topic: topicReady})
	deadline := time.NewTimer(subscribeTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.EventService().Publish(ctx, topicReady, &apievents.ContainerCreate{ID: "ready"}); err != nil {
			r.close()
			return nil, fmt.Errorf("publish %s: %w", topicReady, err)
		}
		select {
		case <-ready:
			return r, nil
		case <-r.done:
			return nil, fmt.Errorf("event subscription ended: %w", r.streamErr())
		case <-deadline.C:
			r.close()
			return nil, fmt.Errorf("event subscription not live after %v", subscribeTimeout)
		case <-tick.C:
		}
	}
}

func (r *eventRouter) loop(envs <-chan *events.Envelope, errs <-chan error) {
	defer close(r.done)
	for {
		select {
		case env, ok := <-envs:
			if !ok {
				r.setErr(errors.New("event channel closed"))
				return
			}
			now := monotonic()
			if key, ok := keyOf(env); ok {
				r.deliver(key, now)
			}
		case err, ok := <-errs:
			if !ok || err == nil {
				err = errors.New("event stream closed")
			}
			r.setErr(err)
			return
		}
	}
}

// keyOf decodes an envelope into the key its waiter registered. TaskExit of
// an init process carries the container ID as its ID.
func keyOf(env *events.Envelope) (eventKey, bool) {
	if env.Topic == topicReady {
		return eventKey{topic: topicReady}, true
	}
	ev, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return eventKey{}, false
	}
	switch ev := ev.(type) {
	case *apievents.TaskExit:
		k := eventKey{topic: topicExit, container: ev.ContainerID}
		if ev.ID != ev.ContainerID {
			k.exec = ev.ID
		}
		return k, true
	case *apievents.TaskOOM:
		return eventKey{topic: topicOOM, container: ev.ContainerID}, true
	}
	return eventKey{}, false
}

func (r *eventRouter) setErr(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

func (r *eventRouter) deliver(k eventKey, at float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiters[k]; ok {
		delete(r.waiters, k)
		ch <- at // buffered, and used once
	}
}

// expect registers a waiter for k, before the action that causes the event.
// The channel receives the arrival time of the first such event.
func (r *eventRouter) expect(k eventKey) <-chan float64 {
	ch := make(chan float64, 1)
	r.mu.Lock()
	r.waiters[k] = ch
	r.mu.Unlock()
	return ch
}

// forget drops the waiter of k, if still registered.
func (r *eventRouter) forget(k eventKey) {
	r.mu.Lock()
	delete(r.waiters, k)
	r.mu.Unlock()
}

// await waits for the event of ch, bounded by timeout and by the stream.
func (r *eventRouter) await(ch <-chan float64, k eventKey, timeout time.Duration) (float64, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case at := <-ch:
		return at, nil
	case <-r.done:
		return 0, fmt.Errorf("event stream ended while waiting for %s of %s/%s: %w", k.topic, k.container, k.exec, r.streamErr())
	case <-t.C:
		r.forget(k)
		return 0, fmt.Errorf("no %s event for %s/%s within %v", k.topic, k.container, k.exec, timeout)
	}
}

func (r *eventRouter) streamErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		return errors.New("closed")
	}
	return r.err
}

// close ends the subscription and waits for the loop.
func (r *eventRouter) close() {
	r.cancel()
	<-r.done
}
