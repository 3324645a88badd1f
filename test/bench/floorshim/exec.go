package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
)

// execs runs exec processes in one container, the least a shim does for
// an exec probe: it keeps the process spec that Exec carries, runs
// `runc exec --detach` on Start with the process's stdio on /dev/null,
// reaps the process as the child subreaper it has become, answers Wait
// with its status and forgets it on Delete. No stdio, no terminal, no
// event, no OOM watch.
type execs struct {
	runc      *runc.Runc
	container string
	dir       string // pid files and runc's log

	mu    sync.Mutex
	procs map[string]*execProc
	seq   int // names the pid files
}

// execProc is one exec; its fields are guarded by execs.mu, status is
// also readable once done is closed.
type execProc struct {
	spec    specs.Process
	started bool
	pid     int
	status  uint32
	done    chan struct{} // closed once reaped, once Start failed, or on Delete before Start
}

// newExecs makes the process a child subreaper, so that every exec, which
// runc leaves behind as an orphan, is reparented to it.
func newExecs(runcRoot, container string) (*execs, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("child subreaper: %w", err)
	}
	dir, err := os.MkdirTemp("", "floorshim")
	if err != nil {
		return nil, err
	}
	return &execs{
		runc:      &runc.Runc{Root: runcRoot, Log: filepath.Join(dir, "runc.log"), PdeathSignal: unix.SIGKILL},
		container: container,
		dir:       dir,
		procs:     map[string]*execProc{},
	}, nil
}

// get returns exec execID of container id.
func (x *execs) get(id, execID string) (*execProc, error) {
	if id != x.container {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	p, ok := x.procs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q: %w", execID, errdefs.ErrNotFound)
	}
	return p, nil
}

func (x *execs) exec(req *taskAPI.ExecProcessRequest) error {
	if req.ID != x.container {
		return fmt.Errorf("container %q: %w", req.ID, errdefs.ErrNotFound)
	}
	if req.ExecID == "" {
		return fmt.Errorf("exec without an ID: %w", errdefs.ErrInvalidArgument)
	}
	if req.Terminal || req.Stdin != "" || req.Stdout != "" || req.Stderr != "" {
		return fmt.Errorf("exec %q with stdio: %w", req.ExecID, errdefs.ErrNotImplemented)
	}
	if req.Spec == nil {
		return fmt.Errorf("exec %q without a spec: %w", req.ExecID, errdefs.ErrInvalidArgument)
	}
	p := &execProc{done: make(chan struct{})}
	if err := json.Unmarshal(req.Spec.Value, &p.spec); err != nil {
		return fmt.Errorf("exec %q spec: %v: %w", req.ExecID, err, errdefs.ErrInvalidArgument)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.procs[req.ExecID]; ok {
		return fmt.Errorf("exec %q: %w", req.ExecID, errdefs.ErrAlreadyExists)
	}
	x.procs[req.ExecID] = p
	return nil
}

func (x *execs) start(ctx context.Context, id, execID string) (uint32, error) {
	if execID == "" {
		return 0, fmt.Errorf("the container's own start: %w", errdefs.ErrNotImplemented)
	}
	x.mu.Lock()
	p, ok := x.procs[execID]
	if id != x.container || !ok {
		x.mu.Unlock()
		return 0, fmt.Errorf("exec %q of %q: %w", execID, id, errdefs.ErrNotFound)
	}
	if p.started {
		x.mu.Unlock()
		return 0, fmt.Errorf("exec %q started already: %w", execID, errdefs.ErrFailedPrecondition)
	}
	p.started = true
	x.seq++
	pidFile := filepath.Join(x.dir, fmt.Sprintf("%d.pid", x.seq))
	x.mu.Unlock()
	defer os.Remove(pidFile)
	fail := func(err error) (uint32, error) {
		x.mu.Lock()
		p.status = 255
		x.mu.Unlock()
		close(p.done)
		return 0, err
	}
	// The process gets runc's stdio: /dev/null, not a pipe that go-runc
	// would read until the process and its children have all exited.
	null, err := runc.NewNullIO()
	if err != nil {
		return fail(err)
	}
	defer null.Close()
	if err := x.runc.Exec(ctx, x.container, p.spec, &runc.ExecOpts{IO: null, Detach: true, PidFile: pidFile}); err != nil {
		return fail(fmt.Errorf("runc exec (log %s): %w", x.runc.Log, err))
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return fail(err)
	}
	x.mu.Lock()
	p.pid = pid
	x.mu.Unlock()
	go func() {
		status := uint32(255) // wait4 failed: no status to tell
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err == unix.EINTR {
				continue
			}
			if err == nil {
				switch {
				case ws.Exited():
					status = uint32(ws.ExitStatus())
				case ws.Signaled():
					status = 128 + uint32(ws.Signal())
				}
			}
			break
		}
		x.mu.Lock()
		p.status = status
		x.mu.Unlock()
		close(p.done)
	}()
	return uint32(pid), nil
}

func (x *execs) wait(ctx context.Context, id, execID string) (uint32, error) {
	p, err := x.get(id, execID)
	if err != nil {
		return 0, err
	}
	select {
	case <-p.done:
		x.mu.Lock()
		defer x.mu.Unlock()
		return p.status, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// delete forgets an exec that has exited or was never started; a running
// one is refused, as containerd's runc shim refuses it.
func (x *execs) delete(id, execID string) (*taskAPI.DeleteResponse, error) {
	p, err := x.get(id, execID)
	if err != nil {
		return nil, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.procs[execID] != p {
		return nil, fmt.Errorf("exec %q: %w", execID, errdefs.ErrNotFound)
	}
	if !p.started {
		p.started = true // no Start after this
		close(p.done)    // a Wait in flight returns
	} else {
		select {
		case <-p.done:
		default:
			return nil, fmt.Errorf("exec %q is running: %w", execID, errdefs.ErrFailedPrecondition)
		}
	}
	delete(x.procs, execID)
	return &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: p.status}, nil
}

// methods returns the methods of the Task API that x serves. Wait for the
// container itself (no exec ID) is wait's.
func (x *execs) methods(wait func(context.Context) (any, error)) map[string]ttrpc.Method {
	grpc := func(v any, err error) (any, error) {
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return v, nil
	}
	return map[string]ttrpc.Method{
		"Exec": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.ExecProcessRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return grpc(&emptypb.Empty{}, x.exec(&req))
		},
		"Start": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.StartRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			pid, err := x.start(ctx, req.ID, req.ExecID)
			return grpc(&taskAPI.StartResponse{Pid: pid}, err)
		},
		"Wait": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.WaitRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			if req.ExecID == "" {
				return wait(ctx)
			}
			status, err := x.wait(ctx, req.ID, req.ExecID)
			return grpc(&taskAPI.WaitResponse{ExitStatus: status}, err)
		},
		"Delete": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.DeleteRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return grpc(x.delete(req.ID, req.ExecID))
		},
	}
}
