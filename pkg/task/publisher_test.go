package task

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// A publisher whose events address is gone must not hold the shim's exit.
func TestPublisherCloseWithoutListener(t *testing.T) {
	p := NewPublisher(filepath.Join(t.TempDir(), "nobody.sock"))
	for i := 0; i < 3; i++ {
		p.Publish("ns", TopicExit, &eventstypes.TaskExit{ContainerID: "c"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("close took %s", d)
	}
	// Publish after Close is a no-op, not a panic.
	p.Publish("ns", TopicExit, &eventstypes.TaskExit{ContainerID: "c"})
}

// Close does not wait out the pause before an event's second try: the
// shim's last Delete event, sent when nobody listens, would otherwise hold
// every shim's exit that long.
func TestPublisherCloseCutsRetryPause(t *testing.T) {
	p := NewPublisher(filepath.Join(t.TempDir(), "nobody.sock"))
	p.Publish("ns", TopicDelete, &eventstypes.TaskDelete{ContainerID: "c"})
	time.Sleep(retryDelay / 10) // its first try has failed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > retryDelay/2 {
		t.Fatalf("close took %s, waiting for a retry %s after the first try", d, retryDelay)
	}
}

// An exit published while the shim shuts down, after the events service
// restarted, goes to the new service: the connection kept from before the
// restart fails, and a new one is tried at once although Close allows no
// retry.
func TestPublisherRedialsAfterRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "events.sock")
	before := &eventsServer{got: make(chan string, 16)}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(srv, before)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	p := NewPublisher("unix://" + sock)
	p.Publish("ns", TopicStart, &eventstypes.TaskStart{ContainerID: "c"})
	before.waitFor(t, 1)
	// The restart: the socket goes and the old service answers no more.
	// Server.Close does not end the connections it serves at once: one
	// still open delivered the exit to the old service under load.
	before.stopped.Store(true)
	srv.Close()

	after := &eventsServer{got: make(chan string, 16)}
	serveUnix(t, sock, func(s *ttrpc.Server) { eventsapi.RegisterTTRPCEventsService(s, after) })
	p.Publish("ns", TopicExit, &eventstypes.TaskExit{ContainerID: "c"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-after.got:
		if got != TopicExit {
			t.Fatalf("delivered %s, want %s", got, TopicExit)
		}
	default:
		t.Fatal("the exit published at shutdown was dropped after the events service restarted")
	}
}

// Events are forwarded in the order they were published, and Close drains
// what is queued.
func TestPublisherOrder(t *testing.T) {
	ev := &eventsServer{got: make(chan string, 256)}
	sock := filepath.Join(t.TempDir(), "events.sock")
	serveUnix(t, sock, func(s *ttrpc.Server) { eventsapi.RegisterTTRPCEventsService(s, ev) })
	p := NewPublisher("unix://" + sock)
	var want []string
	for i := 0; i < 100; i++ {
		topic := []string{TopicCreate, TopicStart, TopicExit, TopicDelete}[i%4]
		want = append(want, topic)
		p.Publish("ns", topic, &eventstypes.TaskExit{ContainerID: "c"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := ev.waitFor(t, len(want))
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("order %v", got)
	}
}

// flakyEvents fails every Forward while down is set.
type flakyEvents struct {
	eventsServer
	down atomic.Bool
}

func (f *flakyEvents) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if f.down.Load() {
		return nil, errors.New("events service down")
	}
	return f.eventsServer.Forward(ctx, r)
}

// While the events service fails, exits and OOMs are held (never dropped,
// never reordered), other events do not wait behind them longer than one
// retry, and a full queue never drops an exit.
func TestPublisherHoldsExitsWhileDown(t *testing.T) {
	ev := &flakyEvents{eventsServer: eventsServer{got: make(chan string, 4096)}}
	ev.down.Store(true)
	sock := filepath.Join(t.TempDir(), "events.sock")
	serveUnix(t, sock, func(s *ttrpc.Server) { eventsapi.RegisterTTRPCEventsService(s, ev) })
	p := NewPublisher("unix://" + sock)
	p.Publish("ns", TopicStart, &eventstypes.TaskStart{ContainerID: "c"})
	p.Publish("ns", TopicOOM, &eventstypes.TaskOOM{ContainerID: "c"})
	p.Publish("ns", TopicExit, &eventstypes.TaskExit{ContainerID: "c"})
	// More events than the queue holds: the exits among them stay.
	exits := 2
	for i := 0; i < queueSize+10; i++ {
		topic := TopicDelete
		if i == queueSize+5 {
			topic = TopicExit
			exits++
		}
		p.Publish("ns", topic, &eventstypes.TaskExit{ContainerID: "c"})
	}
	// All of it passes through the sender within a few retries.
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.mu.Lock()
		left := len(p.queue)
		p.mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events still queued: one failing event held the queue", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ev.down.Store(false)
	got := ev.waitFor(t, exits)
	want := []string{TopicOOM, TopicExit, TopicExit}
	if strings.Join(got[:3], ",") != strings.Join(want, ",") {
		t.Fatalf("delivered %v, want %v first", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
