package task

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Publisher bounds and timings. An event whose forward keeps failing is
// retried, in order, for forwardRetryBound (containerd restarting), then
// dropped with a log line; the queue holds queueSize events meanwhile.
const (
	queueSize         = 1024
	forwardTimeout    = 5 * time.Second
	forwardRetryBound = 30 * time.Second
	dialTimeout       = 2 * time.Second
)

// Publisher forwards task events to containerd's (or minimgr's) Events
// service over ttrpc. Exactly one goroutine sends, in the order Publish was
// called; Publish never blocks. Close drains what is queued (bounded by its
// context) and closes the connection, which the sending goroutine owns.
type Publisher struct {
	address string
	queue   chan *eventsapi.ForwardRequest
	done    chan struct{}

	mu     sync.Mutex
	closed bool // guarded by mu

	// closing is set by Close: from then on an event that cannot be
	// delivered at once is dropped rather than retried, so that a shim
	// whose events address is gone exits without waiting.
	closing atomic.Bool

	dropped uint64 // owned by Publish callers under mu
}

// NewPublisher starts the sending goroutine. An empty address discards events.
func NewPublisher(address string) *Publisher {
	p := &Publisher{
		address: strings.TrimPrefix(address, "unix://"),
		queue:   make(chan *eventsapi.ForwardRequest, queueSize),
		done:    make(chan struct{}),
	}
	go p.run()
	return p
}

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
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	select {
	case p.queue <- req:
	default:
		p.dropped++
		log.L.WithField("topic", topic).WithField("dropped", p.dropped).Error("event queue full; event dropped")
	}
}

func (p *Publisher) run() {
	defer close(p.done)
	var (
		client *ttrpc.Client
		svc    eventsapi.TTRPCEventsService
	)
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	for req := range p.queue {
		if p.address == "" {
			continue
		}
		deadline := time.Now().Add(forwardRetryBound)
		backoff := 50 * time.Millisecond
		for {
			if client == nil {
				conn, err := net.DialTimeout("unix", p.address, dialTimeout)
				if err == nil {
					client = ttrpc.NewClient(conn)
					svc = eventsapi.NewTTRPCEventsClient(client)
				}
			}
			var err error = errNotConnected
			if client != nil {
				ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
				_, err = svc.Forward(ctx, req)
				cancel()
				if err != nil {
					client.Close()
					client = nil
				}
			}
			if err == nil {
				break
			}
			if p.closing.Load() {
				log.L.WithError(err).WithField("topic", req.Envelope.Topic).Warn("forward event at shutdown; dropped")
				break
			}
			if time.Now().After(deadline) {
				log.L.WithError(err).WithField("topic", req.Envelope.Topic).Error("forward event; dropped")
				break
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

var errNotConnected = errors.New("events address not reachable")

// Close stops accepting events and waits until the queued ones are sent or
// ctx is done.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.closing.Store(true)
		close(p.queue)
	}
	p.mu.Unlock()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
