package minimgr

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/internal/replyhold"
	"github.com/mineshim/mine/internal/replyhold/streamtest"
	"github.com/mineshim/mine/internal/unixsock"
	"github.com/mineshim/mine/internal/unixsock/socktest"
)

// eventsOnlyManager is a Manager for tests of its events server: no shim
// runs, so any executable serves as the runtime binary. Its root is short,
// for the socket path's sake.
func eventsOnlyManager(t *testing.T) *Manager {
	t.Helper()
	dir, err := os.MkdirTemp("", "mev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m, err := New(Config{Root: dir, Namespace: "events-test", RuntimeBinary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A shim forwards all its events over one connection for its whole life;
// the events server must not keep a stream recorded per event answered
// before ttrpc stored it (see replyhold), or a long `minimgr events` grows
// with every event of every shim.
func TestEventsServerLeavesNoStreamRecorded(t *testing.T) {
	m := eventsOnlyManager(t)
	srv, err := m.ListenEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer streamtest.Track()()
	before := streamtest.Count()
	unheld := replyhold.Unheld()

	var handled atomic.Int64
	entered, release := make(chan struct{}), make(chan struct{})
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- srv.Serve(ctx, func(e Event) {
			if e.Topic == "/test/hold" {
				close(entered)
				<-release
				return
			}
			handled.Add(1)
		})
	}()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	conn, err := net.DialTimeout("unix", srv.Path(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	events := eventsapi.NewTTRPCEventsClient(client)
	body, err := typeurl.MarshalAnyToProto(&eventstypes.TaskExit{ContainerID: "c", ID: "c", Pid: 1})
	if err != nil {
		t.Fatal(err)
	}
	forward := func(topic string) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := events.Forward(cctx, &eventsapi.ForwardRequest{Envelope: &apitypes.Envelope{
			Timestamp: timestamppb.Now(), Namespace: "events-test", Topic: topic, Event: body,
		}})
		return err
	}

	// The count sees a stream while its call is in flight: it counts what
	// it is meant to.
	held := make(chan error, 1)
	go func() { held <- forward("/test/hold") }()
	<-entered
	if n := streamtest.Settle(func(n int) bool { return n > before }) - before; n != 1 {
		t.Fatalf("%d streams counted while one call is in flight, want 1", n)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}

	const calls, callers = 4000, 8
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls / callers {
				if err := forward("/tasks/exit"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := handled.Load(); got != calls {
		t.Fatalf("%d events handled, want %d", got, calls)
	}
	notHeld := func() int { return int(replyhold.Unheld() - unheld) }
	left := streamtest.Settle(func(n int) bool { return n-before <= notHeld() }) - before
	t.Logf("%d streams left after %d events (%d before), %d replies not held back", left, calls, before, notHeld())
	if left > notHeld() {
		t.Errorf("the events server left %d streams recorded after %d events (%d replies not held back); stored at:\n%s",
			left, calls, notHeld(), streamtest.Stacks())
	}
	if notHeld() > calls/100 {
		t.Errorf("%d of %d replies went out unheld", notHeld(), calls)
	}
}

// An events socket whose server is too busy to accept at once belongs to
// another live `minimgr events`: it is not taken over.
func TestListenEventsKeepsBusyServer(t *testing.T) {
	m := eventsOnlyManager(t)
	if err := os.MkdirAll(filepath.Dir(m.EventsAddress()), 0o711); err != nil {
		t.Fatal(err)
	}
	socktest.Busy(t, m.EventsAddress())
	srv, err := m.ListenEvents()
	if err == nil {
		srv.l.Close()
	}
	if !errdefs.IsAlreadyExists(err) {
		t.Errorf("listen beside a busy events server: %v, want already exists", err)
	}
}

// An events server that takes the connection and never answers does not
// hold the exit minimgr forwards for a dead shim past publishTimeout: the
// Delete that found the shim dead returns.
func TestPublishDeadExitBounded(t *testing.T) {
	m := eventsOnlyManager(t)
	l, err := net.Listen("unix", m.EventsAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // never accepts: the connection waits in its backlog
	done := make(chan time.Duration, 1)
	begin := time.Now()
	go func() {
		m.publishDeadExit(context.Background(), "c1", Exit{Pid: 42, Status: 3, ExitedAt: begin})
		done <- time.Since(begin)
	}()
	select {
	case took := <-done:
		t.Logf("gave up after %s", took)
	case <-time.After(publishTimeout + 5*time.Second):
		t.Fatalf("publishDeadExit still blocked %s after its %s bound", 5*time.Second, publishTimeout)
	}
}

// endShim and a shim told to shut down: it is given time to answer the
// calls in flight and to send its last events and, when it ends by itself,
// is not killed, whether or not anyone listens for its events; one that
// never ends is killed after shimExitBound; one that was not told (or did
// not answer) is killed at once. The shims are stand-ins (the test binary)
// whose command line names the test's namespace, container and address, as
// a daemon's does.
func TestEndShim(t *testing.T) {
	for _, tc := range []struct {
		name     string
		told     bool
		listen   bool
		lives    string // how long the stand-in lives
		killed   bool
		min, max time.Duration
	}{
		{"nobody listens", true, false, "1s", false, 500 * time.Millisecond, 5 * time.Second},
		{"ends by itself", true, true, "1s", false, 500 * time.Millisecond, 5 * time.Second},
		{"never ends, nobody listens", true, false, "1m", true, shimExitBound, shimExitBound + 5*time.Second},
		{"not told", false, false, "1m", true, 0, 3 * time.Second},
		{"never ends", true, true, "1m", true, shimExitBound, shimExitBound + 5*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := eventsOnlyManager(t)
			if tc.listen {
				l, err := net.Listen("unix", m.EventsAddress())
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
			}
			shim := exec.Command(os.Args[0], "-namespace", m.Namespace(), "-id", "c1", "-address", m.grpcAddress())
			shim.Env = append(os.Environ(), standInLives+"="+tc.lives)
			if err := shim.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = shim.Process.Kill(); _ = shim.Wait() })
			// Start returns once the exec began: the new program's
			// arguments are in /proc a moment later (under -race, 1 of 24
			// subtests here, and one in CI, read none, and endShim took
			// the stand-in for no shim at all).
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				if _, _, _, ok := shimArgs(shim.Process.Pid); ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the stand-in's command line never showed its arguments")
				}
			}
			begin := time.Now()
			if err := m.endShim(shim.Process.Pid, "c1", tc.told); err != nil {
				t.Fatal(err)
			}
			took := time.Since(begin)
			err := shim.Wait()
			var ee *exec.ExitError
			killed := errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
			if killed != tc.killed {
				t.Errorf("killed %v (%v), want %v", killed, err, tc.killed)
			}
			if took < tc.min || took > tc.max {
				t.Errorf("endShim returned after %s, want %s to %s", took, tc.min, tc.max)
			}
		})
	}
}

// standInLives is the environment variable that makes the test binary a
// stand-in shim daemon living that long (a time.Duration).
const standInLives = "MINIMGR_TEST_STAND_IN_LIVES"

// Two `minimgr events` that find the same stale socket: one takes it over,
// the other is told that it is served, and the one that serves owns the
// path; neither removes the other's socket.
func TestListenEventsStaleRace(t *testing.T) {
	m := eventsOnlyManager(t)
	path := m.EventsAddress()
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		os.Remove(path)
		stale, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()

		var (
			wg   sync.WaitGroup
			srvs [2]*EventsServer
			errs [2]error
		)
		for j := range srvs {
			wg.Go(func() { srvs[j], errs[j] = m.ListenEvents() })
		}
		wg.Wait()
		serving := 0
		for j, srv := range srvs {
			if srv != nil {
				serving++
				continue
			}
			if !errdefs.IsAlreadyExists(errs[j]) {
				t.Fatalf("round %d: listen %d: %v, want served or already exists", i, j, errs[j])
			}
		}
		if serving != 1 {
			t.Errorf("round %d: %d servers listen on one stale socket, want 1", i, serving)
		}
		for _, srv := range srvs {
			if srv == nil {
				continue
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Errorf("round %d: the server's socket: %v", i, err)
			} else {
				c.Close()
			}
			srv.l.(*net.UnixListener).SetUnlinkOnClose(false)
			srv.l.Close()
		}
		if t.Failed() {
			return
		}
	}
}

// An events server that ends keeps its socket served until it has removed
// it under the socket's lock: another server that takes the lock to replace
// a stale socket never finds it stale and then sees it removed under its
// own.
func TestEventsServerEndKeepsSocketServed(t *testing.T) {
	m := eventsOnlyManager(t)
	srv, err := m.ListenEvents()
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, func(Event) {}) }()
	lk, err := lockSocket(srv.Path()) // as another server replacing a stale one
	if err != nil {
		stop()
		t.Fatal(err)
	}
	stop()
	for range 20 {
		if unixsock.Dead(srv.Path()) {
			t.Errorf("the socket is stale while its server waits for the lock to remove it")
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	lk.unlock()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	if _, err := os.Lstat(srv.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket after its server's end: %v", err)
	}
}
