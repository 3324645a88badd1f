package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	floorName    = "mine-floor"
	floorPackage = "github.com/mineshim/mine/test/bench/floorshim"
)

// prepareFloor builds the floor server (command floorshim) into the work
// directory. Without go (a prebuilt shim given and no toolchain) there is
// no floor: e.floorExe stays empty and the figures that need it are left
// out of the report.
func (e *Env) prepareFloor(ctx context.Context) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		e.logf("no go in PATH: no floor server, its figures are left out")
		return nil
	}
	dst := filepath.Join(e.binDir, floorName)
	if err := e.goBuild(ctx, goBin, floorPackage, dst); err != nil {
		return err
	}
	e.floorExe = dst
	return nil
}

// floor is one running floor server with one connection to it, on which a
// Wait is in flight, as containerd holds one per task.
type floor struct {
	cmd    *exec.Cmd
	exited chan error
	client *ttrpc.Client
	task   taskv3.TTRPCTaskService
	cancel context.CancelFunc
	waited chan struct{}
	early  chan error // the Wait, if it returned before close
	once   sync.Once
	err    error // of close
	// container is where execTrue runs its execs, if anywhere.
	container string
}

// startFloor starts a floor server whose Stats reads the cgroup of pid,
// with one processor (fewer than containerd's 2 for a shim: the floor is the
// least memory, whatever it costs in latency), connects to it and calls
// Wait. With execIn, the ID of a container in the benchmark's namespace, the
// floor also runs execs in that container (floor.execTrue).
func (e *Env) startFloor(ctx context.Context, name string, pid uint32, execIn string) (_ *floor, err error) {
	if e.floorExe == "" {
		return nil, errors.New("no floor server")
	}
	socket := filepath.Join(e.dir, name+".sock")
	_ = os.Remove(socket)
	f := &floor{exited: make(chan error, 1), waited: make(chan struct{}), early: make(chan error, 1), container: execIn}
	args := []string{"-socket", socket, "-pid", fmt.Sprint(pid)}
	if execIn != "" {
		args = append(args, "-runc-root", filepath.Join(runcStateRoot, Namespace), "-container", execIn)
	}
	f.cmd = exec.Command(e.floorExe, args...)
	f.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	f.cmd.Stderr = os.Stderr
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start floor server: %w", err)
	}
	go func() { f.exited <- f.cmd.Wait() }()
	defer func() {
		if err != nil {
			err = errors.Join(err, f.close())
		}
	}()
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.DialTimeout("unix", socket, time.Second); err == nil {
			break
		}
		select {
		case xerr := <-f.exited:
			f.exited <- xerr
			return f, fmt.Errorf("floor server exited: %v", xerr)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return f, fmt.Errorf("floor server %s: %w", socket, err)
		}
	}
	f.client = ttrpc.NewClient(conn)
	f.task = taskv3.NewTTRPCTaskClient(f.client)
	wctx, cancel := context.WithCancel(e.nsCtx(context.WithoutCancel(ctx)))
	f.cancel = cancel
	go func() {
		defer close(f.waited)
		_, err := f.task.Wait(wctx, &taskv3.WaitRequest{ID: name})
		if wctx.Err() == nil {
			f.early <- fmt.Errorf("floor server's Wait returned early: %v", err)
		}
	}()
	return f, nil
}

// pid is the floor server's process ID.
func (f *floor) pid() int { return f.cmd.Process.Pid }

// mem reads the floor server's memory, which must still hold its Wait.
func (f *floor) mem() (Mem, error) {
	select {
	case err := <-f.early:
		f.early <- err
		return Mem{}, err
	default:
	}
	return readMem(f.pid())
}

// stats calls Stats once.
func (f *floor) stats(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := f.task.Stats(ctx, &taskv3.StatsRequest{ID: "floor"})
	return err
}

// execTrue runs spec in the floor's container as exec execID, directly
// over the floor's connection, with the calls containerd makes for
// `ctr task exec` (Exec, Wait, Start, Delete), and checks that it exits 0.
func (f *floor) execTrue(ctx context.Context, spec *specs.Process, execID string) error {
	if f.container == "" {
		return errors.New("floor server runs no execs")
	}
	ctx, cancel := context.WithTimeout(ctx, exitTimeout)
	defer cancel()
	body, err := typeurl.MarshalAnyToProto(spec)
	if err != nil {
		return err
	}
	if _, err := f.task.Exec(ctx, &taskv3.ExecProcessRequest{ID: f.container, ExecID: execID, Spec: body}); err != nil {
		return fmt.Errorf("floor exec %s: %w", execID, err)
	}
	waited := make(chan error, 1)
	var status uint32
	go func() {
		r, err := f.task.Wait(ctx, &taskv3.WaitRequest{ID: f.container, ExecID: execID})
		if err == nil {
			status = r.ExitStatus
		}
		waited <- err
	}()
	_, err = f.task.Start(ctx, &taskv3.StartRequest{ID: f.container, ExecID: execID})
	if err == nil {
		if err = <-waited; err == nil && status != 0 {
			err = fmt.Errorf("exit status %d", status)
		}
	}
	// Delete even when ctx has expired, so that the floor forgets the exec.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer dcancel()
	_, derr := f.task.Delete(dctx, &taskv3.DeleteRequest{ID: f.container, ExecID: execID})
	if err = errors.Join(err, derr); err != nil {
		return fmt.Errorf("floor exec %s: %w", execID, err)
	}
	return nil
}

// close ends the Wait and the connection and stops the server; once.
func (f *floor) close() error {
	f.once.Do(func() { f.err = f.stop() })
	return f.err
}

func (f *floor) stop() error {
	if f.cancel != nil {
		f.cancel()
	}
	if f.client != nil {
		f.client.Close()
		<-f.waited
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-f.exited:
		var xerr *exec.ExitError
		if errors.As(err, &xerr) && xerr.Exited() {
			return fmt.Errorf("floor server: %w", err)
		}
		return nil // ended by the signal
	case <-time.After(5 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.exited
		return errors.New("floor server did not stop on SIGTERM")
	}
}

// closeFloors closes every floor of fs.
func closeFloors(fs []*floor) error {
	var errs []error
	for _, f := range fs {
		errs = append(errs, f.close())
	}
	return errors.Join(errs...)
}
