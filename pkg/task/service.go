package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/pkg/cgroup"
	"github.com/mineshim/mine/pkg/oom"
	"github.com/mineshim/mine/pkg/process"
	"github.com/mineshim/mine/pkg/stdio"
)

// Event topics, as containerd names them.
const (
	TopicCreate       = "/tasks/create"
	TopicStart        = "/tasks/start"
	TopicExit         = "/tasks/exit"
	TopicDelete       = "/tasks/delete"
	TopicExecAdded    = "/tasks/exec-added"
	TopicExecStarted  = "/tasks/exec-started"
	TopicPaused       = "/tasks/paused"
	TopicResumed      = "/tasks/resumed"
	TopicCheckpointed = "/tasks/checkpointed"
	TopicOOM          = "/tasks/oom"
)

// Events is where the service sends task events (a Publisher).
type Events interface {
	Publish(ns, topic string, event proto.Message)
}

// Config wires a Service.
type Config struct {
	Namespace string
	Version   string
	Reaper    *process.Reaper
	Consoles  *stdio.Consoles
	Events    Events
	// Shutdown is called once, when Shutdown is asked of a shim that has no
	// containers left (or with now set). It must not block.
	Shutdown func()
	// Runtime holds defaults for runtime options not given at Create (from
	// the bootstrap parameters).
	Runtime process.Runtime
	// BeforeCreate, when set, is called with a container's id and bundle
	// before the container is created: the sandbox adds the pod's mounts
	// to a member's spec there. An error fails the Create.
	BeforeCreate func(ctx context.Context, id, bundle string) error
	// KeepAlive, when set, keeps the shim up while it returns true: a
	// Shutdown without now is then ignored (containerd sends one after
	// every member's Delete; the sandbox's ShutdownSandbox ends the shim).
	KeepAlive func() bool
}

// Service implements the Task API v3 over the process package.
type Service struct {
	cfg Config
	oom *oom.Watcher

	mu         sync.Mutex
	containers map[string]*process.Container // guarded by mu
	creating   map[string]struct{}           // guarded by mu; IDs reserved by a Create in progress
	ending     bool                          // guarded by mu; Shutdown has ended the shim
	shutdown   sync.Once
	// teardowns runs what deleted containers left after their Delete
	// replied (process.Config.Go, through goTeardown): Close waits for it.
	teardowns  sync.WaitGroup
	teardownMu sync.Mutex
	closing    bool // guarded by teardownMu; Close waits: no teardown joins
}

// New returns a Service, with its OOM watcher running. Close stops it.
func New(cfg Config) (*Service, error) {
	s := &Service{
		cfg:        cfg,
		containers: make(map[string]*process.Container),
		creating:   make(map[string]struct{}),
	}
	w, err := oom.New(s.publishOOM)
	if err != nil {
		return nil, fmt.Errorf("start oom watcher: %w", err)
	}
	s.oom = w
	return s, nil
}

// teardownBound bounds Close's wait for the rootfs teardowns of deleted
// containers. A teardown syncs the filesystem of the overlay's upper layer,
// milliseconds on a local disk; one that hangs does not hold Close longer.
var teardownBound = 10 * time.Second

// goTeardown runs fn, the rootfs teardown of a deleted container, in a
// goroutine that Close waits for. A Delete still in flight when Close has
// begun to wait (its call outlived the server's drain) gets a goroutine of
// its own: a WaitGroup must not grow from zero while it is waited for.
func (s *Service) goTeardown(fn func()) {
	s.teardownMu.Lock()
	defer s.teardownMu.Unlock()
	if s.closing {
		go fn()
		return
	}
	s.teardowns.Go(fn)
}

// Close stops the OOM watcher and waits, up to teardownBound, for the
// rootfs teardowns that deleted containers left running.
func (s *Service) Close() error {
	err := s.oom.Close()
	s.teardownMu.Lock()
	s.closing = true
	s.teardownMu.Unlock()
	done := make(chan struct{})
	go func() {
		s.teardowns.Wait()
		close(done)
	}()
	t := time.NewTimer(teardownBound)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		err = errors.Join(err, fmt.Errorf("rootfs teardowns still running after %v: %w", teardownBound, context.DeadlineExceeded))
	}
	return err
}

func (s *Service) publishOOM(e oom.Event) {
	s.cfg.Events.Publish(s.cfg.Namespace, TopicOOM, &eventstypes.TaskOOM{ContainerID: e.ID})
}

// RegisterTTRPC registers the service (Task API v3) on a ttrpc server.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) {
	registerV3(server, s)
}

// wire converts a domain error to its ttrpc status, once, at the edge.
func wire(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *Service) get(id string) (*process.Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// Count returns how many containers the shim serves.
func (s *Service) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.containers) + len(s.creating)
}

// emit maps a domain event to its containerd event and publishes it.
func (s *Service) emit(e process.Event) {
	var (
		topic string
		msg   proto.Message
	)
	switch e.Kind {
	case process.EventCreate:
		topic = TopicCreate
		msg = &eventstypes.TaskCreate{
			ContainerID: e.ContainerID,
			Bundle:      e.Bundle,
			Rootfs:      toAPIMounts(e.Rootfs),
			IO:          &eventstypes.TaskIO{Stdin: e.Stdio.Stdin, Stdout: e.Stdio.Stdout, Stderr: e.Stdio.Stderr, Terminal: e.Stdio.Terminal},
			Checkpoint:  e.Checkpoint,
			Pid:         uint32(e.Pid),
		}
	case process.EventStart:
		topic, msg = TopicStart, &eventstypes.TaskStart{ContainerID: e.ContainerID, Pid: uint32(e.Pid)}
	case process.EventExit:
		id := e.ExecID
		if id == "" {
			id = e.ContainerID
		}
		topic, msg = TopicExit, &eventstypes.TaskExit{
			ContainerID: e.ContainerID, ID: id, Pid: uint32(e.Pid),
			ExitStatus: uint32(e.ExitStatus), ExitedAt: timestamppb.New(e.ExitedAt),
		}
	case process.EventDelete:
		topic, msg = TopicDelete, &eventstypes.TaskDelete{
			ContainerID: e.ContainerID, ID: e.ContainerID, Pid: uint32(e.Pid),
			ExitStatus: uint32(e.ExitStatus), ExitedAt: timestamppb.New(e.ExitedAt),
		}
	case process.EventExecAdded:
		topic, msg = TopicExecAdded, &eventstypes.TaskExecAdded{ContainerID: e.ContainerID, ExecID: e.ExecID}
	case process.EventExecStarted:
		topic, msg = TopicExecStarted, &eventstypes.TaskExecStarted{ContainerID: e.ContainerID, ExecID: e.ExecID, Pid: uint32(e.Pid)}
	case process.EventPaused:
		topic, msg = TopicPaused, &eventstypes.TaskPaused{ContainerID: e.ContainerID}
	case process.EventResumed:
		topic, msg = TopicResumed, &eventstypes.TaskResumed{ContainerID: e.ContainerID}
	case process.EventCheckpointed:
		topic, msg = TopicCheckpointed, &eventstypes.TaskCheckpointed{ContainerID: e.ContainerID, Checkpoint: e.Checkpoint}
	default:
		log.L.WithField("event", e.Kind.String()).Error("unknown event kind")
		return
	}
	s.cfg.Events.Publish(s.cfg.Namespace, topic, msg)
}

func toAPIMounts(ms []mount.Mount) []*apitypes.Mount {
	out := make([]*apitypes.Mount, 0, len(ms))
	for _, m := range ms {
		out = append(out, &apitypes.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	return out
}

func fromAPIMounts(ms []*apitypes.Mount) []mount.Mount {
	out := make([]mount.Mount, 0, len(ms))
	for _, m := range ms {
		out = append(out, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	return out
}

// Create creates a container (runc create) and publishes TaskCreate.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	c, err := s.create(ctx, r)
	if err != nil {
		return nil, wire(err)
	}
	return &taskAPI.CreateTaskResponse{Pid: uint32(c.Pid())}, nil
}

func (s *Service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*process.Container, error) {
	if err := process.ValidateID(r.ID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.ending {
		// The shim is letting its clients hang up before it exits: a
		// container created now would be lost with it.
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: the shim is shutting down: %w", r.ID, errdefs.ErrUnavailable)
	}
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	if _, ok := s.creating[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q is being created: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.creating[r.ID] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		s.mu.Unlock()
	}()

	rt, err := runtimeOptions(s.cfg.Runtime, r.Options, s.cfg.Namespace)
	if err != nil {
		return nil, err
	}
	rt = rt.WithDefaults(s.cfg.Namespace)
	if err := process.ValidateBundle(r.Bundle); err != nil {
		return nil, err
	}
	if s.cfg.BeforeCreate != nil {
		if err := s.cfg.BeforeCreate(ctx, r.ID, r.Bundle); err != nil {
			return nil, err
		}
	}
	if err := process.SaveRuntime(r.Bundle, rt); err != nil {
		return nil, fmt.Errorf("save runtime options: %w", err)
	}
	c, err := process.Create(ctx, process.Config{
		ID:        r.ID,
		Bundle:    r.Bundle,
		Namespace: s.cfg.Namespace,
		Rootfs:    fromAPIMounts(r.Rootfs),
		Stdio: stdio.Config{
			Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal,
			UID: rt.IoUID, GID: rt.IoGID,
		},
		Runtime:    rt,
		Checkpoint: r.Checkpoint,
		Reaper:     s.cfg.Reaper,
		Consoles:   s.cfg.Consoles,
		Emit:       s.emit,
		// The OOM read before an exit is published, so that TaskOOM
		// precedes the TaskExit it caused.
		BeforeExit: func() { s.oom.Check(r.ID) },
		Go:         s.goTeardown,
	})
	if err != nil {
		return nil, err
	}
	// Armed between create and start: an OOM in the first millisecond of
	// the container's program is seen. (A restored container has no
	// process until Start; it is armed there.)
	s.armOOM(ctx, r.ID, c.Pid())
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	return c, nil
}

func (s *Service) armOOM(ctx context.Context, id string, pid int) {
	if pid == 0 {
		return
	}
	if err := s.oom.Add(id, pid); err != nil && !errdefs.IsAlreadyExists(err) {
		log.G(ctx).WithError(err).WithField("container_id", id).Warn("oom watch not armed")
	}
}

// Start starts the init or an exec process.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	pid, err := c.Start(ctx, r.ExecID)
	if err != nil {
		return nil, wire(err)
	}
	if r.ExecID == "" {
		s.armOOM(ctx, r.ID, pid)
	}
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// Delete deletes an exec process, or the container and its resources.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	st, err := c.State(r.ExecID)
	if err != nil {
		return nil, wire(err)
	}
	exit, err := c.Delete(ctx, r.ExecID)
	if err != nil {
		return nil, wire(err)
	}
	if r.ExecID == "" {
		// The watch goes first: once the ID is free, a new container of
		// the same ID may be created and watched under it.
		if err := s.oom.Remove(r.ID); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("container_id", r.ID).Warn("oom watch not removed")
		}
		s.mu.Lock()
		delete(s.containers, r.ID)
		s.mu.Unlock()
	}
	return &taskAPI.DeleteResponse{
		Pid:        uint32(st.Pid),
		ExitStatus: uint32(exit.Status),
		ExitedAt:   timestamppb.New(exit.ExitedAt),
	}, nil
}

// Exec adds an exec process to a container; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	spec, err := decodeProcessSpec(r.Spec)
	if err != nil {
		return nil, wire(fmt.Errorf("exec %q: %w", r.ExecID, err))
	}
	err = c.AddExec(ctx, process.ExecConfig{
		ID:    r.ExecID,
		Spec:  spec,
		Stdio: stdio.Config{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	if err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// State returns the state of the init or an exec process.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	st, err := c.State(r.ExecID)
	if err != nil {
		return nil, wire(err)
	}
	resp := &taskAPI.StateResponse{
		ID:       r.ID,
		Bundle:   c.Bundle(),
		Pid:      uint32(st.Pid),
		Status:   toAPIStatus(st.Status),
		Stdin:    st.Stdio.Stdin,
		Stdout:   st.Stdio.Stdout,
		Stderr:   st.Stdio.Stderr,
		Terminal: st.Terminal,
		ExecID:   r.ExecID,
	}
	// Before the exit, the zero time: clients read an unset exited_at as
	// 1970-01-01, and the zero time as none.
	var exitedAt time.Time
	if st.Status >= process.Stopped {
		resp.ExitStatus = uint32(st.Exit.Status)
		exitedAt = st.Exit.ExitedAt
	}
	resp.ExitedAt = timestamppb.New(exitedAt)
	return resp, nil
}

func toAPIStatus(s process.Status) tasktypes.Status {
	switch s {
	case process.Created:
		return tasktypes.Status_CREATED
	case process.Running:
		return tasktypes.Status_RUNNING
	case process.Pausing:
		return tasktypes.Status_PAUSING
	case process.Paused:
		return tasktypes.Status_PAUSED
	case process.Stopped, process.Deleted:
		return tasktypes.Status_STOPPED
	}
	return tasktypes.Status_UNKNOWN
}

// Kill signals the init (all: every process) or an exec process.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	if err := c.Kill(ctx, r.ExecID, int(r.Signal), r.All); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until the process has exited and its exit is published.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	exit, err := c.Wait(ctx, r.ExecID)
	if err != nil {
		return nil, wire(err)
	}
	return &taskAPI.WaitResponse{ExitStatus: uint32(exit.Status), ExitedAt: timestamppb.New(exit.ExitedAt)}, nil
}

// Pids lists the processes of a container.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	pids, err := c.Pids(ctx)
	if err != nil {
		return nil, wire(err)
	}
	resp := &taskAPI.PidsResponse{}
	for _, p := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(p.Pid)}
		if p.ExecID != "" {
			d, err := typeurl.MarshalAnyToProto(&runcoptions.ProcessDetails{ExecID: p.ExecID})
			if err != nil {
				return nil, wire(err)
			}
			info.Info = d
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// CloseIO closes the stdin of a process.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	if r.Stdin {
		if err := c.CloseStdin(r.ExecID); err != nil {
			return nil, wire(err)
		}
	}
	return &emptypb.Empty{}, nil
}

// Connect returns the shim's and the init's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: s.cfg.Version}
	if c, err := s.get(r.ID); err == nil {
		resp.TaskPid = uint32(c.Pid())
	}
	return resp, nil
}

// Shutdown ends the shim once it serves no container (or at once with now).
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	if !r.Now && s.cfg.KeepAlive != nil && s.cfg.KeepAlive() {
		return &emptypb.Empty{}, nil
	}
	s.mu.Lock()
	if !r.Now && len(s.containers)+len(s.creating) > 0 {
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	s.ending = true
	s.mu.Unlock()
	if s.cfg.Shutdown != nil {
		s.shutdown.Do(s.cfg.Shutdown)
	}
	return &emptypb.Empty{}, nil
}

func notImplemented(method string) error {
	return wire(fmt.Errorf("%s: %w", method, errdefs.ErrNotImplemented))
}

// Pause freezes a container.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	if err := c.Pause(ctx); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// Resume thaws a paused container.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	if err := c.Resume(ctx); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint dumps a container with CRIU (runc checkpoint).
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	cfg, err := checkpointConfig(r.Path, r.Options)
	if err != nil {
		return nil, wire(err)
	}
	if err := c.Checkpoint(ctx, cfg); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// ResizePty sets the terminal size of a process.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	if err := c.Resize(r.ExecID, r.Width, r.Height); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// Update changes the resource limits of a container.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	res, err := decodeResources(r.Resources)
	if err != nil {
		return nil, wire(fmt.Errorf("update of %q: %w", r.ID, err))
	}
	if err := c.Update(ctx, res); err != nil {
		return nil, wire(err)
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the cgroup metrics of a container as an Any.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, wire(err)
	}
	m, err := c.Stats(ctx)
	if err != nil {
		return nil, wire(err)
	}
	body, err := cgroup.MarshalAny(m)
	if err != nil {
		return nil, wire(err)
	}
	return &taskAPI.StatsResponse{Stats: body}, nil
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)
