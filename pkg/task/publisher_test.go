package task

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/ttrpc"
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
