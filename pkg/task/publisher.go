package task

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Publisher bounds and timings. Each event gets one try and, when that
// fails, one more after retryDelay; an exit or OOM event that still could
// not be delivered is held and sent before anything else as soon as the
// events service answers again (tried every heldRetry); any other event is
// dropped with a log line. Events other than exits and OOMs beyond
// queueSize are dropped when they are published.
const (
	queueSize      = 1024
	forwardTimeout = 5 * time.Second
	dialTimeout    = 2 * time.Second
	retryDelay     = 200 * time.Millisecond
	heldRetry      = time.Second
)

// Publisher forwards task events to containerd's (or minimgr's) Events
// service over ttrpc. Exactly one goroutine sends, in the order Publish was
// called; Publish never blocks. No exit or OOM event is dropped while the
// shim lives: a failing one is held, in order, until the service answers
// again, and it never holds back the events behind it longer than one
// bounded retry. Close drains what is queued (bounded by its context) and
// closes the connection, which the sending goroutine owns.
type Publisher struct {
	address string
	wake    chan struct{} // buffered 1: something was queued, or Close
	done    chan struct{}

	mu      sync.Mutex
	queue   []*eventsapi.ForwardRequest // guarded by mu
	closed  bool                        // guarded by mu
	dropped uint64                      // guarded by mu

	// closing is set by Close: from then on an event that cannot be
	// delivered at once is dropped rather than retried, so that a shim
	// whose events address is gone exits without waiting. closeCh is
	// closed then too: it cuts a retry's pause.
	closing atomic.Bool
	closeCh chan struct{}

	// Owned by the sending goroutine.
	client *ttrpc.Client
	svc    eventsapi.TTRPCEventsService
	held   []*eventsapi.ForwardRequest
}

// NewPublisher starts the sending goroutine. An empty address discards events.
func NewPublisher(address string) *Publisher {
	p := &Publisher{
		address: strings.TrimPrefix(address, "unix://"),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		closeCh: make(chan struct{}),
	}
	go p.run()
	return p
}

// critical reports whether an event of topic must never be dropped.
func critical(topic string) bool { return topic == TopicExit || topic == TopicOOM }

// Publish queues one event of namespace ns under topic.
func (p *Publisher) Publish(ns, topic string, event proto.Message) {
	body, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		log.L.WithError(err).WithField("topic", topic).Error("encode event")
		return
	}
	req := &eventsapi.ForwardRequest{Envelope: &apitypes.Envelope{
		Timestamp: timestamppb.Now(),
		Namespace: ns,
		Topic:     topic,
		Event:     body,
	}}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if len(p.queue) >= queueSize && !critical(topic) {
		p.dropped++
		log.L.WithField("topic", topic).WithField("dropped", p.dropped).Error("event queue full; event dropped")
		p.mu.Unlock()
		return
	}
	p.queue = append(p.queue, req)
	p.mu.Unlock()
	p.signal()
}

func (p *Publisher) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// next returns the next queued event, or nil when Close was called and the
// queue is empty. While events are held it wakes every heldRetry to try
// them.
func (p *Publisher) next() *eventsapi.ForwardRequest {
	for {
		p.mu.Lock()
		if len(p.queue) > 0 {
			req := p.queue[0]
			p.queue[0] = nil
			p.queue = p.queue[1:]
			p.mu.Unlock()
			return req
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return nil
		}
		if len(p.held) == 0 {
			<-p.wake
			continue
		}
		t := time.NewTimer(heldRetry)
		select {
		case <-p.wake:
		case <-t.C:
			p.sendHeld()
		}
		t.Stop()
	}
}

func (p *Publisher) run() {
	defer close(p.done)
	defer func() {
		if p.client != nil {
			p.client.Close()
		}
	}()
	warmed := false
	for {
		req := p.next()
		if req == nil {
			break
		}
		if p.address == "" {
			continue
		}
		// Held events go first; while they cannot, the service is down
		// and this one is not tried either.
		if p.sendHeld() && p.send(req, !p.closing.Load()) {
			if !warmed {
				warmed = true
				warmCritical()
			}
			continue
		}
		p.undelivered(req)
	}
	if len(p.held) > 0 && p.address != "" && !p.sendHeld() {
		log.L.WithField("events", len(p.held)).Warn("exit events not delivered at shutdown")
	}
}

// warmCritical encodes one exit and one OOM event, once, after the shim's
// first event was sent: the protobuf runtime sets up the encoding of a
// message type on its first use, and the first TaskOOM of a shim spent
// about 150 µs there, between the kill and its publication (docs/
// BENCHMARKS.md, "OOM: where the time goes").
func warmCritical() {
	for _, ev := range []proto.Message{&eventstypes.TaskOOM{}, &eventstypes.TaskExit{}} {
		if _, err := typeurl.MarshalAnyToProto(ev); err != nil {
			log.L.WithError(err).Debug("encode event")
		}
	}
}

// undelivered holds an exit or OOM event, and drops any other.
func (p *Publisher) undelivered(req *eventsapi.ForwardRequest) {
	topic := req.Envelope.Topic
	if critical(topic) && !p.closing.Load() {
		p.held = append(p.held, req)
		log.L.WithField("topic", topic).WithField("held", len(p.held)).Warn("forward event failed; held until the events service answers")
		return
	}
	log.L.WithField("topic", topic).Warn("forward event failed; dropped")
}

// sendHeld sends the held events in order; it reports whether none is left.
func (p *Publisher) sendHeld() bool {
	for len(p.held) > 0 {
		if !p.send(p.held[0], false) {
			return false
		}
		p.held[0] = nil
		p.held = p.held[1:]
	}
	return true
}

// send forwards one event: one try and, with retry, one more after
// retryDelay, unless Close comes first.
func (p *Publisher) send(req *eventsapi.ForwardRequest, retry bool) bool {
	cached := p.client != nil
	if p.forward(req) == nil {
		return true
	}
	// The connection kept from an earlier event may be one the events
	// service closed when it restarted: a new one is tried at once.
	if cached && p.forward(req) == nil {
		return true
	}
	if !retry {
		return false
	}
	t := time.NewTimer(retryDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.closeCh:
		return false
	}
	return p.forward(req) == nil
}

func (p *Publisher) forward(req *eventsapi.ForwardRequest) error {
	if p.client == nil {
		conn, err := net.DialTimeout("unix", p.address, dialTimeout)
		if err != nil {
			return err
		}
		p.client = ttrpc.NewClient(conn)
		p.svc = eventsapi.NewTTRPCEventsClient(p.client)
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	if _, err := p.svc.Forward(ctx, req); err != nil {
		p.client.Close()
		p.client, p.svc = nil, nil
		return err
	}
	return nil
}

// Close stops accepting events and waits until the queued ones are sent or
// ctx is done.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.closing.Store(true)
		close(p.closeCh)
	}
	p.mu.Unlock()
	p.signal()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
