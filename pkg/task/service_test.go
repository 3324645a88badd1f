package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/mineshim/mine/pkg/process"
)

var testReaper = process.NewReaper()

func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go testReaper.Run(ctx)
	runc.Monitor = testReaper
	code := m.Run()
	cancel()
	os.Exit(code)
}

// eventsServer records what a Publisher forwards, in arrival order.
type eventsServer struct {
	mu     sync.Mutex
	topics []string
	got    chan string
	// stopped makes Forward fail, as a service on its way out does: a
	// stopped ttrpc server may still serve a connection it had.
	stopped atomic.Bool
}

func (e *eventsServer) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if e.stopped.Load() {
		return nil, errgrpc.ToGRPC(fmt.Errorf("events service stopped: %w", errdefs.ErrUnavailable))
	}
	e.mu.Lock()
	e.topics = append(e.topics, r.Envelope.Topic)
	e.mu.Unlock()
	e.got <- r.Envelope.Topic
	return &emptypb.Empty{}, nil
}

func (e *eventsServer) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		e.mu.Lock()
		if len(e.topics) >= n {
			out := append([]string(nil), e.topics...)
			e.mu.Unlock()
			return out
		}
		e.mu.Unlock()
		select {
		case <-e.got:
		case <-deadline:
			t.Fatalf("only %v within 10s", e.topics)
		}
	}
}

func serveUnix(t *testing.T, path string, register func(*ttrpc.Server)) {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	register(srv)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
}

func dial(t *testing.T, path string) *ttrpc.Client {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

type fixture struct {
	bundle string
	svc    *Service
	events *eventsServer
	v3     v3.TTRPCTaskService
	v2     v2.TTRPCTaskService
}

// newFixture serves a Service on a unix socket with the fake runtime of
// package process, and records its events on another.
func newFixture(t *testing.T) fixture {
	t.Helper()
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("../process/testdata/fake-runtime.sh")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_RUNTIME_LOG", filepath.Join(dir, "argv"))
	t.Setenv("FAKE_RUNTIME_FAIL", "")
	t.Setenv("FAKE_RUNTIME_EXIT_ON_START", "")

	ev := &eventsServer{got: make(chan string, 64)}
	evSock := filepath.Join(dir, "events.sock")
	serveUnix(t, evSock, func(s *ttrpc.Server) { eventsapi.RegisterTTRPCEventsService(s, ev) })
	pub := NewPublisher(evSock)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pub.Close(ctx)
	})
	svc, err := New(Config{
		Namespace: "test", Version: "test", Reaper: testReaper, Events: pub,
		Runtime: process.Runtime{Binary: script, Root: filepath.Join(dir, "root")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	sock := filepath.Join(dir, "shim.sock")
	serveUnix(t, sock, func(s *ttrpc.Server) {
		svc.RegisterTTRPC(s)
		svc.RegisterTTRPCv2(s)
	})
	c := dial(t, sock)
	return fixture{bundle: bundle, svc: svc, events: ev, v3: v3.NewTTRPCTaskClient(c), v2: v2.NewTTRPCTaskClient(c)}
}

// killAndWait sends SIGKILL to the container id and waits, 10 s at most,
// for its exit.
func (f fixture) killAndWait(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.v3.Kill(ctx, &v3.KillRequest{ID: id, Signal: 9}); err != nil {
		t.Fatalf("kill %s: %v", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := f.v3.Wait(wctx, &v3.WaitRequest{ID: id}); err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
}

func TestServiceLifecycleOverTTRPC(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	created, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c1", Bundle: f.bundle})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c1", Bundle: f.bundle}); !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Fatalf("duplicate create: %v, want already exists", err)
	}
	if _, err := f.v3.Start(ctx, &v3.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	// The same container through the v2 API.
	st, err := f.v2.State(ctx, &v2.StateRequest{ID: "c1"})
	if err != nil {
		t.Fatalf("v2 state: %v", err)
	}
	if st.Pid != created.Pid || st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("v2 state %+v, want running pid %d", st, created.Pid)
	}
	if _, err := f.v2.Kill(ctx, &v2.KillRequest{ID: "c1", Signal: 9}); err != nil {
		t.Fatalf("v2 kill: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := f.v3.Wait(wctx, &v3.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	d, err := f.v3.Delete(ctx, &v3.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 137 || d.Pid != created.Pid {
		t.Fatalf("delete: %v %v", d, err)
	}
	got := f.events.waitFor(t, 4)
	if want := []string{TopicCreate, TopicStart, TopicExit, TopicDelete}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestServiceErrorsAreClassified(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"state of unknown id", func() error { _, err := f.v3.State(ctx, &v3.StateRequest{ID: "nope"}); return err }, errdefs.ErrNotFound},
		{"v2 state of unknown id", func() error { _, err := f.v2.State(ctx, &v2.StateRequest{ID: "nope"}); return err }, errdefs.ErrNotFound},
		{"create with bad id", func() error {
			_, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "../x", Bundle: f.bundle})
			return err
		}, errdefs.ErrInvalidArgument},
		{"create with missing bundle", func() error {
			_, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "x", Bundle: "/nonexistent"})
			return err
		}, errdefs.ErrInvalidArgument},
		{"create with unknown stdio scheme", func() error {
			_, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "x", Bundle: f.bundle, Stdout: "gopher://x"})
			return err
		}, errdefs.ErrNotImplemented},
		{"kill of unknown id", func() error { _, err := f.v3.Kill(ctx, &v3.KillRequest{ID: "nope", Signal: 9}); return err }, errdefs.ErrNotFound},
		{"exec without spec", func() error {
			_, err := f.v3.Exec(ctx, &v3.ExecProcessRequest{ID: "nope", ExecID: "e"})
			return err
		}, errdefs.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := errgrpc.ToNative(tc.call())
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// A Shutdown that ends the shim refuses the creates that come after it
// (Unavailable): the shim waits for its clients to hang up before it exits,
// and a container created meanwhile would be lost with it. A Shutdown while
// a container remains ends nothing.
func TestCreateAfterShutdownIsRefused(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c1", Bundle: f.bundle}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := f.v3.Shutdown(ctx, &v3.ShutdownRequest{ID: "c1"}); err != nil {
		t.Fatalf("shutdown with a container: %v", err)
	}
	f.killAndWait(t, "c1")
	if _, err := f.v3.Delete(ctx, &v3.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	// The first Shutdown ended nothing: a create still succeeds.
	if _, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c2", Bundle: f.bundle}); err != nil {
		t.Fatalf("create after a shutdown that ended nothing: %v", err)
	}
	if _, err := f.v3.Delete(ctx, &v3.DeleteRequest{ID: "c2"}); err != nil {
		t.Fatalf("delete c2: %v", err)
	}
	if _, err := f.v3.Shutdown(ctx, &v3.ShutdownRequest{ID: "c2"}); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	_, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c3", Bundle: f.bundle})
	if err := errgrpc.ToNative(err); !errdefs.IsUnavailable(err) {
		t.Fatalf("create after the shim's shutdown: %v, want unavailable", err)
	}
}

// Bad input gets a classified error, loses nothing, and the shim goes on
// serving the containers it has.
func TestBadInputKeepsServing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "good", Bundle: f.bundle}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v3.Start(ctx, &v3.StartRequest{ID: "good"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v3.Exec(ctx, &v3.ExecProcessRequest{ID: "good", ExecID: "e1", Spec: processSpec(t, "sleep", "1")}); err != nil {
		t.Fatal(err)
	}
	badBundle := func(config string) string {
		dir := t.TempDir()
		if config != "" {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	optsWith := func(o *runcoptions.Options) *anypb.Any {
		a, err := typeurl.MarshalAnyToProto(o)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		name string
		req  *v3.CreateTaskRequest
		exec *v3.ExecProcessRequest
		want error
	}{
		{name: "id with slash", req: &v3.CreateTaskRequest{ID: "a/b", Bundle: f.bundle}, want: errdefs.ErrInvalidArgument},
		{name: "id with dots", req: &v3.CreateTaskRequest{ID: "..", Bundle: f.bundle}, want: errdefs.ErrInvalidArgument},
		{name: "empty id", req: &v3.CreateTaskRequest{ID: "", Bundle: f.bundle}, want: errdefs.ErrInvalidArgument},
		{name: "duplicate container id", req: &v3.CreateTaskRequest{ID: "good", Bundle: f.bundle}, want: errdefs.ErrAlreadyExists},
		{name: "relative bundle", req: &v3.CreateTaskRequest{ID: "x", Bundle: "bundle"}, want: errdefs.ErrInvalidArgument},
		{name: "bundle without config.json", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle("")}, want: errdefs.ErrInvalidArgument},
		{name: "bad config.json", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle("{not json")}, want: errdefs.ErrInvalidArgument},
		{name: "missing rootfs", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle(`{"root":{"path":"rootfs"}}`)}, want: errdefs.ErrInvalidArgument},
		{name: "missing runtime binary", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle("{}"),
			Options: optsWith(&runcoptions.Options{BinaryName: "/nonexistent/runc"})}, want: errdefs.ErrFailedPrecondition},
		{name: "absurd stdout path", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle("{}"), Stdout: "/nonexistent/dir/stdout"}, want: errdefs.ErrInvalidArgument},
		{name: "stdio path too long", req: &v3.CreateTaskRequest{ID: "x", Bundle: badBundle("{}"), Stdout: "/" + strings.Repeat("x", 5000)}, want: errdefs.ErrInvalidArgument},
		{name: "duplicate exec id", exec: &v3.ExecProcessRequest{ID: "good", ExecID: "e1", Spec: processSpec(t, "true")}, want: errdefs.ErrAlreadyExists},
		{name: "exec into unknown container", exec: &v3.ExecProcessRequest{ID: "nope", ExecID: "e2", Spec: processSpec(t, "true")}, want: errdefs.ErrNotFound},
		{name: "exec id with slash", exec: &v3.ExecProcessRequest{ID: "good", ExecID: "../e", Spec: processSpec(t, "true")}, want: errdefs.ErrInvalidArgument},
		{name: "exec without args", exec: &v3.ExecProcessRequest{ID: "good", ExecID: "e3", Spec: processSpec(t)}, want: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.req != nil {
				_, err = f.v3.Create(ctx, tc.req)
			} else {
				_, err = f.v3.Exec(ctx, tc.exec)
			}
			if got := errgrpc.ToNative(err); !errors.Is(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			st, err := f.v3.State(ctx, &v3.StateRequest{ID: "good"})
			if err != nil || st.Status != tasktypes.Status_RUNNING {
				t.Fatalf("good container after bad input: %v %v", st, err)
			}
			if _, err := f.v3.State(ctx, &v3.StateRequest{ID: "x"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
				t.Fatalf("a failed create left container x: %v", err)
			}
		})
	}
	// End the container before the test's directories go: its exit and
	// delete write into the bundle, and a removal racing with them failed
	// ("directory not empty").
	f.killAndWait(t, "good")
	if _, err := f.v3.Delete(ctx, &v3.DeleteRequest{ID: "good"}); err != nil {
		t.Fatal(err)
	}
}

func processSpec(t *testing.T, args ...string) *anypb.Any {
	t.Helper()
	data, err := json.Marshal(specs.Process{Args: args, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data}
}

// Close waits for the rootfs teardowns that deleted containers left
// running (process.Config.Go), and no longer than teardownBound.
func TestCloseWaitsForTeardowns(t *testing.T) {
	newService := func(t *testing.T) *Service {
		svc, err := New(Config{Namespace: "test", Reaper: testReaper, Events: discard{}})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	t.Run("until they end", func(t *testing.T) {
		svc := newService(t)
		release := make(chan struct{})
		svc.goTeardown(func() { <-release })
		closed := make(chan error, 1)
		go func() { closed <- svc.Close() }()
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a teardown ran", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return once the teardown ended")
		}
	})
	t.Run("a teardown handed over after Close still runs", func(t *testing.T) {
		svc := newService(t)
		if err := svc.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		ran := make(chan struct{})
		svc.goTeardown(func() { close(ran) })
		select {
		case <-ran:
		case <-time.After(5 * time.Second):
			t.Fatal("not run")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		defer func(d time.Duration) { teardownBound = d }(teardownBound)
		teardownBound = 50 * time.Millisecond
		svc := newService(t)
		hung := make(chan struct{})
		defer close(hung)
		svc.goTeardown(func() { <-hung })
		if err := svc.Close(); !errdefs.IsDeadlineExceeded(err) {
			t.Fatalf("Close with a hung teardown: %v, want a deadline exceeded", err)
		}
	})
}

// The service owns the rootfs teardown that a container's Delete leaves
// (process.Config.Go): the Delete of a container whose rootfs is an
// overlay hands it to goTeardown, which Close waits for. With goTeardown's
// lock held, that Delete cannot return.
func TestServiceOwnsTheRootfsTeardown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts an overlay as the container's rootfs")
	}
	f := newFixture(t)
	layers := t.TempDir()
	for _, d := range []string{"lower", "upper", "work"} {
		if err := os.Mkdir(filepath.Join(layers, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rootfs := filepath.Join(f.bundle, "rootfs")
	t.Cleanup(func() { _ = mount.UnmountRecursive(rootfs, unix.MNT_DETACH) })
	ctx := context.Background()
	if _, err := f.v3.Create(ctx, &v3.CreateTaskRequest{ID: "c1", Bundle: f.bundle, Rootfs: []*apitypes.Mount{{
		Type: "overlay", Source: "overlay", Options: []string{
			"lowerdir=" + filepath.Join(layers, "lower"),
			"upperdir=" + filepath.Join(layers, "upper"),
			"workdir=" + filepath.Join(layers, "work"),
		},
	}}}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := f.v3.Start(ctx, &v3.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	f.killAndWait(t, "c1")

	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f.svc.teardownMu.Lock()
	deleted := make(chan error, 1)
	go func() {
		_, err := f.v3.Delete(dctx, &v3.DeleteRequest{ID: "c1"})
		deleted <- err
	}()
	select {
	case err := <-deleted:
		f.svc.teardownMu.Unlock()
		t.Fatalf("Delete returned (%v) without handing its teardown to the service", err)
	case <-time.After(300 * time.Millisecond):
	}
	f.svc.teardownMu.Unlock()
	select {
	case err := <-deleted:
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Delete did not return once goTeardown could run")
	}
	if err := f.svc.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
