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
// `runc exec --detach` on Start, reaps the process as the child subreaper
// it has become, answers Wait with its status and forgets it on Delete. No
// stdio, no terminal, no event, no OOM watch.
type execs struct {
	runc      *runc.Runc
	container string
	dir       string // pid files

	mu    sync.Mutex
	procs map[string]*execProc
	seq   int // names the pid files
}

type execProc struct {
	spec    specs.Process
	started bool
	pid     int
	status  uint32
	done    chan struct{} // closed once reaped, or once Start failed
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
		runc:      &runc.Runc{Root: runcRoot, PdeathSignal: unix.SIGKILL},
		container: container,
		dir:       dir,
		procs:     map[string]*execProc{},
	}, nil
}

func (x *execs) get(id string) (*execProc, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, ok := x.procs[id]
	if !ok {
		return nil, fmt.Errorf("exec %q: %w", id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (x *execs) exec(req *taskAPI.ExecProcessRequest) error {
	if req.Terminal || req.Stdin != "" || req.Stdout != "" || req.Stderr != "" {
		return fmt.Errorf("exec %q with stdio: %w", req.ExecID, errdefs.ErrNotImplemented)
	}
	p := &execProc{done: make(chan struct{})}
	if req.Spec == nil {
		return fmt.Errorf("exec %q without a spec: %w", req.ExecID, errdefs.ErrInvalidArgument)
	}
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

func (x *execs) start(ctx context.Context, id string) (uint32, error) {
	p, err := x.get(id)
	if err != nil {
		return 0, err
	}
	x.mu.Lock()
	if p.started {
		x.mu.Unlock()
		return 0, fmt.Errorf("exec %q: %w", id, errdefs.ErrFailedPrecondition)
	}
	p.started = true
	x.seq++
	pidFile := filepath.Join(x.dir, fmt.Sprintf("%d.pid", x.seq))
	x.mu.Unlock()
	defer os.Remove(pidFile)
	err = x.runc.Exec(ctx, x.container, p.spec, &runc.ExecOpts{Detach: true, PidFile: pidFile})
	var pid int
	if err == nil {
		pid, err = runc.ReadPidFile(pidFile)
	}
	if err != nil {
		p.status = 255
		close(p.done)
		return 0, err
	}
	p.pid = pid
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				break
			}
		}
		p.status = uint32(ws.ExitStatus())
		close(p.done)
	}()
	return uint32(pid), nil
}

func (x *execs) wait(ctx context.Context, id string) (uint32, error) {
	p, err := x.get(id)
	if err != nil {
		return 0, err
	}
	select {
	case <-p.done:
		return p.status, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (x *execs) delete(ctx context.Context, id string) (*taskAPI.DeleteResponse, error) {
	p, err := x.get(id)
	if err != nil {
		return nil, err
	}
	x.mu.Lock()
	started := p.started
	x.mu.Unlock()
	if started {
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	x.mu.Lock()
	delete(x.procs, id)
	x.mu.Unlock()
	return &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: p.status}, nil
}

// execMethods are the methods of the Task API that execs serve. Wait for
// the container itself (no exec ID) is wait's.
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
			pid, err := x.start(ctx, req.ExecID)
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
			status, err := x.wait(ctx, req.ExecID)
			return grpc(&taskAPI.WaitResponse{ExitStatus: status}, err)
		},
		"Delete": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.DeleteRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return grpc(x.delete(ctx, req.ExecID))
		},
	}
}
