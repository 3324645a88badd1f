package minimgr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/internal/replyhold"
	"github.com/mineshim/mine/internal/unixsock"
)

// Event is one event a shim forwarded.
type Event struct {
	Timestamp time.Time
	Namespace string
	Topic     string
	// TypeURL names the event's type.
	TypeURL string
	// Event is the decoded event (an events.Task* message), nil when its
	// type is unknown.
	Event proto.Message
	// Raw is the encoded event.
	Raw []byte
}

func decodeEvent(env *apitypes.Envelope) Event {
	e := Event{Namespace: env.Namespace, Topic: env.Topic}
	if env.Timestamp != nil {
		e.Timestamp = env.Timestamp.AsTime()
	}
	if env.Event != nil {
		e.TypeURL, e.Raw = env.Event.TypeUrl, env.Event.Value
		if v, err := typeurl.UnmarshalAny(env.Event); err == nil {
			if m, ok := v.(proto.Message); ok {
				e.Event = m
			}
		}
	}
	return e
}

// EventsServer serves containerd's Events.Forward on the events socket, to
// which every shim of a Root forwards its events (TTRPC_ADDRESS).
type EventsServer struct {
	path string
	l    net.Listener
	ino  uint64 // the socket's inode: Serve removes the path only while it is this one
}

// socketLockWait bounds the wait for the events socket's lock, which a
// minimgr holds only to bind or remove the socket.
const socketLockWait = 2 * time.Second

// lockSocket takes the flock beside the events socket (PATH.lock) that
// every minimgr holds while it replaces a stale socket at path or removes
// its own: two of them never remove each other's socket.
func lockSocket(path string) (*stateLock, error) {
	deadline := time.Now().Add(socketLockWait)
	for {
		f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		lk, err := lockFD(path, f)
		if !errors.Is(err, ErrBusy) {
			return lk, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s.lock held for %v: %w", path, socketLockWait, errdefs.ErrUnavailable)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func inode(path string) uint64 {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// ListenEvents creates the events socket of the Manager's Root. A socket
// that someone answers on is another server: ErrAlreadyExists. A stale one
// is replaced.
func (m *Manager) ListenEvents() (*EventsServer, error) {
	path := m.EventsAddress()
	if len(path) > maxSunPath {
		return nil, fmt.Errorf("events socket %s: longer than %d bytes: %w", path, maxSunPath, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	lk, err := lockSocket(path)
	if err != nil {
		return nil, fmt.Errorf("events socket %s: %w", path, err)
	}
	defer lk.unlock()
	l, err := net.Listen("unix", path)
	if errors.Is(err, syscall.EADDRINUSE) {
		if !unixsock.Dead(path) {
			return nil, fmt.Errorf("events socket %s: another minimgr events serves it: %w", path, errdefs.ErrAlreadyExists)
		}
		if rerr := os.Remove(path); rerr != nil {
			return nil, fmt.Errorf("events socket %s: %w", path, rerr)
		}
		l, err = net.Listen("unix", path)
	}
	if err != nil {
		return nil, fmt.Errorf("events socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	// Removed by Serve under the lock, not by the listener's Close: a
	// socket that is closed is stale and may be replaced at once.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	return &EventsServer{path: path, l: l, ino: inode(path)}, nil
}

// Path returns the socket's path.
func (s *EventsServer) Path() string { return s.path }

// Serve hands every forwarded event to handle until ctx is done, then stops
// and removes the socket. handle is called for one event at a time, in the
// order each shim sent them.
func (s *EventsServer) Serve(ctx context.Context, handle func(Event)) error {
	// Shims forward every event over one connection each: a reply must not
	// leave its stream recorded in ttrpc (see replyhold).
	server, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(replyhold.Handshaker(ttrpc.UnixSocketRequireSameUser())))
	if err != nil {
		s.removeAndClose()
		return err
	}
	eventsapi.RegisterTTRPCEventsService(server, &forwarder{handle: handle})
	errc := make(chan error, 1)
	go func() { errc <- server.Serve(ctx, s.l) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.removeAndClose()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = server.Shutdown(sctx)
	server.Close()
	if errors.Is(err, ttrpc.ErrServerClosed) {
		err = nil
	}
	return err
}

// removeAndClose removes the socket, then closes the listener, under the
// lock: while the listener is open the socket answers, so no other server
// has replaced it, and once it is closed the path is gone. (Closed first,
// the socket would be stale for a moment, replaced by another server, and
// then removed under it: a new socket at the path may have the old one's
// inode number.)
func (s *EventsServer) removeAndClose() {
	lk, err := lockSocket(s.path)
	if err == nil {
		defer lk.unlock()
		if inode(s.path) == s.ino {
			os.Remove(s.path)
		}
	}
	// Without the lock the socket is left: the next server finds it stale.
	s.l.Close()
}

type forwarder struct {
	mu     sync.Mutex
	handle func(Event)
}

func (f *forwarder) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if r.Envelope != nil {
		e := decodeEvent(r.Envelope)
		f.mu.Lock()
		f.handle(e)
		f.mu.Unlock()
	}
	return &emptypb.Empty{}, nil
}

// publishTimeout bounds the best-effort events minimgr sends itself (both
// of a dead shim's), as the shim bounds a forward: a listener that a loaded
// machine schedules late still gets them.
const publishTimeout = 5 * time.Second

// publishDeadExit forwards TaskExit and TaskDelete for a container whose
// shim died, as containerd does, when an events server listens.
func (m *Manager) publishDeadExit(ctx context.Context, id string, exit Exit) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	d := net.Dialer{}
	conn, err := d.DialContext(ctx, "unix", m.EventsAddress())
	if err != nil {
		return
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	svc := eventsapi.NewTTRPCEventsClient(client)
	at := timestamppb.New(exit.ExitedAt)
	for _, ev := range []struct {
		topic string
		msg   proto.Message
	}{
		{"/tasks/exit", &eventstypes.TaskExit{ContainerID: id, ID: id, Pid: uint32(exit.Pid), ExitStatus: uint32(exit.Status), ExitedAt: at}},
		{"/tasks/delete", &eventstypes.TaskDelete{ContainerID: id, ID: id, Pid: uint32(exit.Pid), ExitStatus: uint32(exit.Status), ExitedAt: at}},
	} {
		body, err := typeurl.MarshalAnyToProto(ev.msg)
		if err != nil {
			return
		}
		_, err = svc.Forward(ctx, &eventsapi.ForwardRequest{Envelope: &apitypes.Envelope{
			Timestamp: timestamppb.Now(), Namespace: m.cfg.Namespace, Topic: ev.topic, Event: body,
		}})
		if err != nil {
			return
		}
	}
}
