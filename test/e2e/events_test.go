package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
)

// readyTopic carries the recorder's own sentinel event: once it comes back,
// the subscription is live and no later event can be missed.
const readyTopic = "/mine-e2e/ready"

const subscribeTimeout = 10 * time.Second

// recordedEvent is one event of the recorded container.
type recordedEvent struct {
	Topic string
	Event any // decoded: *apievents.TaskCreate, *apievents.TaskExit, ...
}

// eventRecorder records the /tasks/* events of one container from
// containerd's event stream, in the order containerd delivered them.
type eventRecorder struct {
	id string

	mu      sync.Mutex
	events  []recordedEvent // guarded by mu
	err     error           // guarded by mu; why the stream ended early
	changed chan struct{}   // guarded by mu; closed and replaced on each change
}

// recordEvents subscribes to the task events of container id in namespace
// ns and returns once the subscription is known to be live. The
// subscription ends when t ends.
func (h *harness) recordEvents(t *testing.T, ns, id string) *eventRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), ns))
	r := &eventRecorder{id: id, changed: make(chan struct{})}
	ready := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})

	envelopes, errs := h.client.EventService().Subscribe(ctx,
		fmt.Sprintf(`namespace==%q,topic~="^/tasks/"`, ns),
		fmt.Sprintf(`namespace==%q,topic==%q`, ns, readyTopic))
	go func() {
		defer close(done)
		var readyClosed bool
		for {
			select {
			case env := <-envelopes:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					r.fail(fmt.Errorf("decode %s event: %w", env.Topic, err))
					return
				}
				if env.Topic == readyTopic {
					if u, ok := ev.(*apievents.ContainerUpdate); ok && u.GetID() == id && !readyClosed {
						readyClosed = true
						close(ready)
					}
					continue
				}
				if c, ok := ev.(interface{ GetContainerID() string }); ok && c.GetContainerID() == id {
					r.add(recordedEvent{Topic: env.Topic, Event: ev})
				}
			case err := <-errs:
				if ctx.Err() == nil {
					r.fail(fmt.Errorf("event stream ended: %w", err))
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()

	// Subscribe returns before containerd has registered the subscriber.
	// Publish a sentinel until it comes back through the subscription.
	deadline := time.NewTimer(subscribeTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, subscribeTimeout)
		err := h.client.EventService().Publish(pctx, readyTopic, &apievents.ContainerUpdate{ID: id})
		pcancel()
		if err != nil {
			t.Fatalf("publish %s: %v", readyTopic, err)
		}
		select {
		case <-ready:
			return r
		case <-done:
			t.Fatalf("event subscription ended: %v", r.streamErr())
		case <-deadline.C:
			t.Fatalf("event subscription not live after %v", subscribeTimeout)
		case <-tick.C:
		}
	}
}

func (r *eventRecorder) add(e recordedEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *eventRecorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *eventRecorder) streamErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// waitFor waits until an event with topic was recorded. It returns the
// events recorded up to then, and an error when the topic did not come
// within timeout or the stream ended.
func (r *eventRecorder) waitFor(topic string, timeout time.Duration) ([]recordedEvent, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		events, err, changed := append([]recordedEvent(nil), r.events...), r.err, r.changed
		r.mu.Unlock()
		for _, e := range events {
			if e.Topic == topic {
				return events, nil
			}
		}
		if err != nil {
			return events, fmt.Errorf("waiting for %s of %s: %w", topic, r.id, err)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return events, fmt.Errorf("no %s event for %s within %v", topic, r.id, timeout)
		}
	}
}

func topics(events []recordedEvent) string {
	if len(events) == 0 {
		return "(none)"
	}
	names := make([]string, len(events))
	for i, e := range events {
		names[i] = e.Topic
	}
	return strings.Join(names, " ")
}
