package minimgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// Bounds of Container operations that must not hang on a misbehaving shim.
const (
	// rpcTimeout bounds the calls that answer at once (State, Kill, ...).
	rpcTimeout = 10 * time.Second
	// lifecycleTimeout bounds the calls that run the runtime (Create,
	// Start, Exec, Delete).
	lifecycleTimeout = time.Minute
	// forceExitTimeout bounds how long a forced Delete waits for the
	// killed container to exit.
	forceExitTimeout = 10 * time.Second
	// outputDrain bounds how long output may keep arriving after exit.
	outputDrain = 2 * time.Second
)

// Container is a connection to the shim of one container. It is not the
// container: closing it leaves the container and its shim running.
// Methods may be called concurrently.
type Container struct {
	m      *Manager
	dir    string
	rec    record
	client *ttrpc.Client
	task   taskAPI.TTRPCTaskService
	// io is the init's attachment when this handle created it.
	io *attachment
}

// connect dials the shim of rec and asks Connect, both within dialTimeout.
// A shim that does not answer within that bound is taken for dead; the
// caller's own context ending first says nothing of the shim, and its error
// is returned as it is.
func (m *Manager) connect(ctx context.Context, dir string, rec record) (*Container, error) {
	cctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	client, err := dial(cctx, rec.Address)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("container %q: dial: %w", rec.ID, ctx.Err())
		}
		return nil, fmt.Errorf("container %q: %w", rec.ID, err)
	}
	c := &Container{m: m, dir: dir, rec: rec, client: client, task: taskAPI.NewTTRPCTaskClient(client)}
	resp, err := c.task.Connect(cctx, &taskAPI.ConnectRequest{ID: rec.ID})
	if err != nil {
		client.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("container %q: connect: %w", rec.ID, ctx.Err())
		}
		err = fromShim(err)
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s: %w", dialTimeout, ErrShimDead)
		}
		return nil, fmt.Errorf("container %q: connect: %w", rec.ID, err)
	}
	c.rec.ShimPid = int(resp.ShimPid)
	return c, nil
}

// Close closes the connection to the shim. The container is unaffected.
func (c *Container) Close() error {
	return c.client.Close()
}

// ID returns the container's ID.
func (c *Container) ID() string { return c.rec.ID }

// Bundle returns the user's bundle the container was created from.
func (c *Container) Bundle() string { return c.rec.Bundle }

// StateDir returns the container's state directory (the shim's bundle).
func (c *Container) StateDir() string { return c.dir }

// Pid returns the init's pid as Create reported it.
func (c *Container) Pid() int { return c.rec.Pid }

// ShimPid returns the shim's pid as Connect reported it.
func (c *Container) ShimPid() int { return c.rec.ShimPid }

// LogPath returns the init's log file when it runs with IO.Log.
func (c *Container) LogPath() string { return c.rec.Log }

// Terminal reports whether the init has a terminal.
func (c *Container) Terminal() bool { return c.rec.Terminal }

// WaitIO waits, at most bound, until the output of the init (attached by
// Create through this handle) has all arrived, then closes its FIFOs. Call
// it after Wait.
func (c *Container) WaitIO(bound time.Duration) bool { return c.io.waitOutput(bound) }

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, rpcTimeout)
}

// Start starts the init process and returns its pid.
func (c *Container) Start(ctx context.Context) (int, error) { return c.start(ctx, "", nil) }

func (c *Container) start(ctx context.Context, execID string, att *attachment) (int, error) {
	sctx, cancel := context.WithTimeout(ctx, lifecycleTimeout)
	defer cancel()
	resp, err := c.task.Start(sctx, &taskAPI.StartRequest{ID: c.rec.ID, ExecID: execID})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	if err := att.connectStdin(func() { _ = c.closeStdin(context.Background(), execID) }); err != nil {
		return int(resp.Pid), err
	}
	return int(resp.Pid), nil
}

func procName(id, execID string) string {
	if execID == "" {
		return id
	}
	return id + "/" + execID
}

// State is the state of a process.
type State struct {
	ID       string `json:"id"`
	ExecID   string `json:"exec_id,omitempty"`
	Pid      int    `json:"pid"`
	Status   Status `json:"status"`
	Exit     *Exit  `json:"exit,omitempty"`
	Bundle   string `json:"bundle"`
	Terminal bool   `json:"terminal"`
	Stdin    string `json:"stdin,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
}

// State returns the state of the init process.
func (c *Container) State(ctx context.Context) (State, error) { return c.state(ctx, "") }

func (c *Container) state(ctx context.Context, execID string) (State, error) {
	sctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.task.State(sctx, &taskAPI.StateRequest{ID: c.rec.ID, ExecID: execID})
	if err != nil {
		return State{}, fmt.Errorf("state of %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	st := State{
		ID: c.rec.ID, ExecID: execID, Pid: int(resp.Pid), Status: fromAPIStatus(resp.Status),
		Bundle: resp.Bundle, Terminal: resp.Terminal, Stdin: resp.Stdin, Stdout: resp.Stdout, Stderr: resp.Stderr,
	}
	if st.Status == StatusStopped {
		st.Exit = &Exit{Pid: st.Pid, Status: int(resp.ExitStatus), ExitedAt: resp.ExitedAt.AsTime()}
	}
	return st, nil
}

func fromAPIStatus(s tasktypes.Status) Status {
	switch s {
	case tasktypes.Status_CREATED:
		return StatusCreated
	case tasktypes.Status_RUNNING:
		return StatusRunning
	case tasktypes.Status_STOPPED:
		return StatusStopped
	case tasktypes.Status_PAUSED:
		return StatusPaused
	case tasktypes.Status_PAUSING:
		return StatusPausing
	}
	return StatusUnknown
}

// Kill sends sig to the init process, or with all to every process of the
// container.
func (c *Container) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	return c.kill(ctx, "", sig, all)
}

func (c *Container) kill(ctx context.Context, execID string, sig syscall.Signal, all bool) error {
	sctx, cancel := bounded(ctx)
	defer cancel()
	_, err := c.task.Kill(sctx, &taskAPI.KillRequest{ID: c.rec.ID, ExecID: execID, Signal: uint32(sig), All: all})
	if err != nil {
		return fmt.Errorf("kill %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	return nil
}

// Wait waits until the init process has exited; ctx bounds the wait.
func (c *Container) Wait(ctx context.Context) (Exit, error) { return c.wait(ctx, "") }

func (c *Container) wait(ctx context.Context, execID string) (Exit, error) {
	resp, err := c.task.Wait(ctx, &taskAPI.WaitRequest{ID: c.rec.ID, ExecID: execID})
	if err != nil {
		return Exit{}, fmt.Errorf("wait %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	return Exit{Status: int(resp.ExitStatus), ExitedAt: resp.ExitedAt.AsTime()}, nil
}

// Resize sets the init's terminal size.
func (c *Container) Resize(ctx context.Context, width, height uint32) error {
	return c.resize(ctx, "", width, height)
}

func (c *Container) resize(ctx context.Context, execID string, width, height uint32) error {
	sctx, cancel := bounded(ctx)
	defer cancel()
	_, err := c.task.ResizePty(sctx, &taskAPI.ResizePtyRequest{ID: c.rec.ID, ExecID: execID, Width: width, Height: height})
	if err != nil {
		return fmt.Errorf("resize %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	return nil
}

// CloseStdin closes the init's stdin in the shim.
func (c *Container) CloseStdin(ctx context.Context) error { return c.closeStdin(ctx, "") }

func (c *Container) closeStdin(ctx context.Context, execID string) error {
	sctx, cancel := bounded(ctx)
	defer cancel()
	_, err := c.task.CloseIO(sctx, &taskAPI.CloseIORequest{ID: c.rec.ID, ExecID: execID, Stdin: true})
	if err != nil {
		return fmt.Errorf("close stdin of %s: %w", procName(c.rec.ID, execID), fromShim(err))
	}
	return nil
}

// Pause freezes the container.
func (c *Container) Pause(ctx context.Context) error {
	sctx, cancel := bounded(ctx)
	defer cancel()
	if _, err := c.task.Pause(sctx, &taskAPI.PauseRequest{ID: c.rec.ID}); err != nil {
		return fmt.Errorf("pause %s: %w", c.rec.ID, fromShim(err))
	}
	return nil
}

// Resume thaws the container.
func (c *Container) Resume(ctx context.Context) error {
	sctx, cancel := bounded(ctx)
	defer cancel()
	if _, err := c.task.Resume(sctx, &taskAPI.ResumeRequest{ID: c.rec.ID}); err != nil {
		return fmt.Errorf("resume %s: %w", c.rec.ID, fromShim(err))
	}
	return nil
}

// Stats returns the container's metrics as the shim encodes them (cgroup
// v1 or v2 metrics).
func (c *Container) Stats(ctx context.Context) (*anypb.Any, error) {
	sctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.task.Stats(sctx, &taskAPI.StatsRequest{ID: c.rec.ID})
	if err != nil {
		return nil, fmt.Errorf("stats of %s: %w", c.rec.ID, fromShim(err))
	}
	return resp.Stats, nil
}

// ProcessInfo is one process of a container.
type ProcessInfo struct {
	Pid    int    `json:"pid"`
	ExecID string `json:"exec_id,omitempty"`
	// Command is the process's command line, as /proc shows it.
	Command []string `json:"command,omitempty"`
}

// Pids lists the processes of the container.
func (c *Container) Pids(ctx context.Context) ([]ProcessInfo, error) {
	sctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.task.Pids(sctx, &taskAPI.PidsRequest{ID: c.rec.ID})
	if err != nil {
		return nil, fmt.Errorf("pids of %s: %w", c.rec.ID, fromShim(err))
	}
	out := make([]ProcessInfo, 0, len(resp.Processes))
	for _, p := range resp.Processes {
		pi := ProcessInfo{Pid: int(p.Pid), Command: cmdline(int(p.Pid))}
		var d runcoptions.ProcessDetails
		if p.Info != nil && typeurl.Is(p.Info, &d) && typeurl.UnmarshalTo(p.Info, &d) == nil {
			pi.ExecID = d.ExecID
		}
		out = append(out, pi)
	}
	return out, nil
}

// ExecOpts describes a process to run in a container.
type ExecOpts struct {
	ID       string
	Args     []string
	Terminal bool
	IO       IO
}

// Process is an exec process of a container.
type Process struct {
	c  *Container
	id string
	io *attachment
}

// Exec adds a process to the container, based on the container's process
// spec (user, env, cwd, capabilities) with Args and Terminal; Start runs it.
func (c *Container) Exec(ctx context.Context, o ExecOpts) (_ *Process, retErr error) {
	if err := validateName("exec id", o.ID); err != nil {
		return nil, err
	}
	if err := o.IO.validate(o.Terminal); err != nil {
		return nil, err
	}
	spec, err := execSpec(c.dir, o.Args, o.Terminal)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	// An exec ID is taken while its process runs; the record of one that
	// has exited (detached, or whose client is gone) is deleted so that
	// the ID can be used again.
	if st, err := c.state(ctx, o.ID); err == nil {
		if st.Status != StatusStopped {
			return nil, fmt.Errorf("exec %s is %s: %w", procName(c.rec.ID, o.ID), st.Status, errdefs.ErrAlreadyExists)
		}
		if _, err := c.Process(o.ID).Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return nil, err
		}
	} else if !errdefs.IsNotFound(err) {
		return nil, err
	}
	paths, att, err := openIO(c.dir, o.ID, o.IO, o.Terminal, c.m.cfg.LoggerBinary)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			att.close()
			att.removeFiles()
		}
	}()
	sctx, cancel := bounded(ctx)
	defer cancel()
	_, err = c.task.Exec(sctx, &taskAPI.ExecProcessRequest{
		ID: c.rec.ID, ExecID: o.ID, Terminal: o.Terminal,
		Stdin: paths.stdin, Stdout: paths.stdout, Stderr: paths.stderr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data},
	})
	if err != nil {
		return nil, fmt.Errorf("exec %s: %w", procName(c.rec.ID, o.ID), fromShim(err))
	}
	att.follow()
	return &Process{c: c, id: o.ID, io: att}, nil
}

// Detached is closed when the detach keys came on the process's stdin.
func (p *Process) Detached() <-chan struct{} { return p.io.Detached() }

// Process returns a handle on the existing exec process id, without its
// streams.
func (c *Container) Process(id string) *Process { return &Process{c: c, id: id} }

// ID returns the exec ID.
func (p *Process) ID() string { return p.id }

// Start runs the process and returns its pid.
func (p *Process) Start(ctx context.Context) (int, error) { return p.c.start(ctx, p.id, p.io) }

// State returns the process's state.
func (p *Process) State(ctx context.Context) (State, error) { return p.c.state(ctx, p.id) }

// Kill signals the process.
func (p *Process) Kill(ctx context.Context, sig syscall.Signal) error {
	return p.c.kill(ctx, p.id, sig, false)
}

// Wait waits until the process has exited; ctx bounds the wait.
func (p *Process) Wait(ctx context.Context) (Exit, error) { return p.c.wait(ctx, p.id) }

// Resize sets the process's terminal size.
func (p *Process) Resize(ctx context.Context, width, height uint32) error {
	return p.c.resize(ctx, p.id, width, height)
}

// CloseStdin closes the process's stdin in the shim.
func (p *Process) CloseStdin(ctx context.Context) error { return p.c.closeStdin(ctx, p.id) }

// WaitIO waits, at most bound, until the process's output has arrived,
// then closes its FIFOs.
func (p *Process) WaitIO(bound time.Duration) bool { return p.io.waitOutput(bound) }

// Delete removes the exited process from the shim, and its FIFOs.
func (p *Process) Delete(ctx context.Context) (Exit, error) {
	sctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := p.c.task.Delete(sctx, &taskAPI.DeleteRequest{ID: p.c.rec.ID, ExecID: p.id})
	p.io.close()
	p.io.removeFiles()
	if err != nil {
		return Exit{}, fmt.Errorf("delete %s: %w", procName(p.c.rec.ID, p.id), fromShim(err))
	}
	return Exit{Pid: int(resp.Pid), Status: int(resp.ExitStatus), ExitedAt: resp.ExitedAt.AsTime()}, nil
}

// Delete deletes the container: the Delete call, Shutdown of the shim,
// `shim delete` (idempotent cleanup, as containerd runs it after every
// shim), and the removal of the state directory. Without force a container
// that has not stopped is refused with ErrFailedPrecondition; with force it
// is killed (SIGKILL to all its processes) and awaited first, within a
// bound. The handle is closed.
func (c *Container) Delete(ctx context.Context, force bool) (Exit, error) {
	lk, err := tryLock(c.dir)
	if err != nil {
		return Exit{}, err
	}
	defer lk.unlock()
	st, err := c.State(ctx)
	if errdefs.IsNotFound(err) {
		// The shim holds no such container (a create that died half
		// way, or a delete that did): end the shim, clean up.
		return c.finish(ctx)
	}
	if err != nil {
		return Exit{}, err
	}
	if st.Status != StatusStopped {
		if !force {
			return Exit{}, fmt.Errorf("container %q is %s, not stopped: kill it first or force: %w", c.rec.ID, st.Status, errdefs.ErrFailedPrecondition)
		}
		if st.Status == StatusPaused {
			_ = c.Resume(ctx)
		}
		if err := c.Kill(ctx, unix.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
			return Exit{}, err
		}
		wctx, cancel := context.WithTimeout(ctx, forceExitTimeout)
		_, err := c.Wait(wctx)
		cancel()
		if err != nil {
			return Exit{}, fmt.Errorf("container %q did not exit after SIGKILL: %w", c.rec.ID, err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, lifecycleTimeout)
	resp, err := c.task.Delete(sctx, &taskAPI.DeleteRequest{ID: c.rec.ID})
	cancel()
	if err != nil {
		return Exit{}, fmt.Errorf("delete %s: %w", c.rec.ID, fromShim(err))
	}
	exit := Exit{Pid: int(resp.Pid), Status: int(resp.ExitStatus), ExitedAt: resp.ExitedAt.AsTime()}
	c.io.waitOutput(0)
	_, err = c.finish(ctx)
	return exit, err
}

// teardown asks the shim to shut down and closes the connection; it
// reports whether the shim answered. The shim process ends on its own once
// it has answered its calls in flight and sent (or given up on) its queued
// events; nothing here waits for that.
func (c *Container) teardown(ctx context.Context) bool {
	sctx, cancel := context.WithTimeout(ctx, shutdownTimeout)
	_, err := c.task.Shutdown(sctx, &taskAPI.ShutdownRequest{ID: c.rec.ID})
	cancel()
	c.Close()
	return err == nil
}

// finish ends the shim and removes what is left of the container. It
// returns the exit `shim delete` reports.
func (c *Container) finish(ctx context.Context) (Exit, error) {
	ctx = context.WithoutCancel(ctx)
	// The container is gone from the shim: a shim that answered the
	// Shutdown ends by itself.
	eerr := c.m.endShim(c.rec.ShimPid, c.rec.ID, c.teardown(ctx))
	endLoggers(c.dir)
	exit, derr := c.m.deleteShim(ctx, c.dir, c.rec)
	derr = errors.Join(eerr, derr)
	removeSocket(c.rec.Address)
	if err := removeStateDir(c.dir); err != nil {
		return exit, errors.Join(derr, fmt.Errorf("remove state of %s: %w", c.rec.ID, err))
	}
	c.m.removeOwnBundle(c.rec)
	return exit, derr
}
