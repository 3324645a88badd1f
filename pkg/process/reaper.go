package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Exit is the end of one child process, as reaped by the Reaper.
type Exit struct {
	Pid    int
	Status int // exit code, or 128+signal for a process killed by a signal
	Time   time.Time
}

// Mark is a point in the Reaper's sequence of exits. Taken before a process
// is spawned, it lets a later Claim accept an exit that was reaped before the
// pid was known, and reject an older exit of a reused pid.
type Mark struct{ seq uint64 }

// maxUnclaimed bounds the exits kept for pids nobody has claimed yet (orphans
// reparented to the subreaper, or processes whose pid is being learned).
const maxUnclaimed = 4096

type unclaimedExit struct {
	exit Exit
	seq  uint64
}

// Reaper reaps every child of the process (which should be a child
// subreaper) with wait4(-1) and hands each exit to the one party that claimed
// its pid. It implements go-runc's ProcessMonitor so that runc invocations
// and container processes share one reaping loop without racing exec.Cmd.
type Reaper struct {
	// reapMu is held for writing around each wait4 and the delivery of its
	// exit, and for reading by Pidfd and Signal: while it is read-held no
	// child is reaped, so a pid whose claim is still waiting cannot be
	// released and reused.
	reapMu sync.RWMutex

	mu        sync.Mutex
	seq       uint64                // guarded by mu
	waiters   map[int]func(Exit)    // guarded by mu
	unclaimed map[int]unclaimedExit // guarded by mu
	order     []int                 // guarded by mu; FIFO of unclaimed pids
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper() *Reaper {
	return &Reaper{
		waiters:   make(map[int]func(Exit)),
		unclaimed: make(map[int]unclaimedExit),
	}
}

// Run reaps children on every SIGCHLD until ctx is done.
func (r *Reaper) Run(ctx context.Context) error {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	r.reapAll() // children that ended before Notify was armed
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sigs:
			r.reapAll()
		}
	}
}

func (r *Reaper) reapAll() {
	for r.reapOne() {
	}
}

// reapOne reaps one exited child and delivers its exit; it reports whether
// there was one.
func (r *Reaper) reapOne() bool {
	r.reapMu.Lock()
	defer r.reapMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return false
		}
		r.deliver(Exit{Pid: pid, Status: exitCode(ws), Time: time.Now()})
		return true
	}
}

// errReaped says that a process has exited and been reaped: its pid may
// belong to another process by now.
var errReaped = fmt.Errorf("process has exited: %w", errdefs.ErrNotFound)

// waiting reports whether a claim of pid waits for its exit. Called
// with reapMu read-held, a true answer means that pid is still that process
// (alive, or a zombie nobody reaped).
func (r *Reaper) waiting(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.waiters[pid]
	return ok
}

// Pidfd opens a pidfd of the claimed process pid, or fails with errReaped
// when its exit has already been reaped. Signals sent through the pidfd can
// never reach another process. Where the kernel has no pidfd_open (before
// 5.3) it returns -1 and no error: use Signal.
func (r *Reaper) Pidfd(pid int) (int, error) {
	r.reapMu.RLock()
	defer r.reapMu.RUnlock()
	if !r.waiting(pid) {
		return -1, errReaped
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	return fd, nil
}

// Signal sends sig to the claimed process pid, unless its exit has been
// reaped (errReaped): it never signals a recycled pid.
func (r *Reaper) Signal(pid int, sig unix.Signal) error {
	r.reapMu.RLock()
	defer r.reapMu.RUnlock()
	if !r.waiting(pid) {
		return errReaped
	}
	return unix.Kill(pid, sig)
}

func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func (r *Reaper) deliver(e Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	if fn, ok := r.waiters[e.Pid]; ok {
		delete(r.waiters, e.Pid)
		fn(e) // must not block (OnExit)
		return
	}
	if _, dup := r.unclaimed[e.Pid]; !dup {
		r.order = append(r.order, e.Pid)
	}
	r.unclaimed[e.Pid] = unclaimedExit{exit: e, seq: r.seq}
	for len(r.order) > maxUnclaimed {
		old := r.order[0]
		r.order = r.order[1:]
		delete(r.unclaimed, old)
	}
}

// Mark returns the current point of the exit sequence. Take it before
// spawning a process whose pid will be claimed.
func (r *Reaper) Mark() Mark {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Mark{seq: r.seq}
}

// Claim returns a channel that receives the exit of pid exactly once. An exit
// of pid already reaped after since is delivered at once; an older one
// belongs to an earlier process with the same pid and is dropped.
func (r *Reaper) Claim(pid int, since Mark) <-chan Exit {
	ch := make(chan Exit, 1)
	r.OnExit(pid, since, func(e Exit) { ch <- e })
	return ch
}

// OnExit calls fn with the exit of pid, exactly once: from the reaping
// goroutine when the exit comes, or at once when it was reaped after since
// (an older exit belongs to an earlier process with the same pid and is
// dropped). fn must not block nor call the Reaper. Unlike Claim, it costs
// no goroutine while the process lives.
func (r *Reaper) OnExit(pid int, since Mark, fn func(Exit)) {
	r.mu.Lock()
	if u, ok := r.unclaimed[pid]; ok {
		delete(r.unclaimed, pid)
		r.dropOrderLocked(pid)
		if u.seq > since.seq {
			r.mu.Unlock()
			fn(u.exit)
			return
		}
	}
	r.waiters[pid] = fn
	r.mu.Unlock()
}

// Unclaim forgets a claim whose exit is no longer wanted.
func (r *Reaper) Unclaim(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters, pid)
}

func (r *Reaper) dropOrderLocked(pid int) {
	for i, p := range r.order {
		if p == pid {
			r.order = append(r.order[:i], r.order[i+1:]...)
			return
		}
	}
}

// Start implements runc.ProcessMonitor.
func (r *Reaper) Start(c *exec.Cmd) (chan runc.Exit, error) {
	boundOutput(c)
	m := r.Mark()
	if err := c.Start(); err != nil {
		return nil, err
	}
	return r.forward(c.Process.Pid, m), nil
}

// StartLocked implements runc.ProcessMonitor: the process is started from a
// goroutine locked to its OS thread, as Pdeathsig requires, and the thread
// stays locked until the process has exited.
func (r *Reaper) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	boundOutput(c)
	started := make(chan error, 1)
	out := make(chan runc.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		m := r.Mark()
		if err := c.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		e := <-r.Claim(c.Process.Pid, m)
		out <- runc.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Time}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return out, nil
}

func (r *Reaper) forward(pid int, m Mark) chan runc.Exit {
	out := make(chan runc.Exit, 1)
	in := r.Claim(pid, m)
	go func() {
		e := <-in
		out <- runc.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Time}
	}()
	return out
}

// Wait implements runc.ProcessMonitor. The exit has already been reaped by
// the loop, so cmd.Wait only collects the command's I/O goroutines; its
// "no child processes" error is expected. A failed Wait keeps the process's
// pidfd open until the garbage collector finds it, so it is released here.
func (r *Reaper) Wait(c *exec.Cmd, ec chan runc.Exit) (int, error) {
	e, ok := <-ec
	if !ok {
		return -1, fmt.Errorf("exit of %s not delivered", c.Path)
	}
	_ = c.Wait()
	_ = c.Process.Release()
	return e.Status, nil
}

var _ runc.ProcessMonitor = (*Reaper)(nil)

// outputDrain bounds how long a runtime command's output is still read
// after the command has exited, or has been killed because its context
// ended. exec.Cmd otherwise reads until every holder of the pipe has closed
// it: a child that inherited runc's stdout or stderr (a hook that
// daemonised, a helper that hangs) held the call, and `shim delete` with
// it, for as long as that child lived.
const outputDrain = 500 * time.Millisecond

// boundOutput sets the output bound of a runtime command before it starts.
func boundOutput(c *exec.Cmd) {
	if c.WaitDelay == 0 {
		c.WaitDelay = outputDrain
	}
}

// DirectMonitor is go-runc's process monitor for a process that runs the
// runtime without a Reaper (`shim delete`): exec.Cmd's own Start and Wait,
// with the Reaper's output bound. The status is the process's own, also
// when its output was cut: go-runc's default monitor reports 255 then.
type DirectMonitor struct{}

// Start implements runc.ProcessMonitor.
func (DirectMonitor) Start(c *exec.Cmd) (chan runc.Exit, error) {
	boundOutput(c)
	if err := c.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	go func() { ec <- directWait(c) }()
	return ec, nil
}

// StartLocked implements runc.ProcessMonitor: the process is started from a
// goroutine locked to its OS thread, as Pdeathsig requires, and the thread
// stays locked until the process has exited.
func (DirectMonitor) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	boundOutput(c)
	started := make(chan error, 1)
	ec := make(chan runc.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := c.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		ec <- directWait(c)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return ec, nil
}

// directWait waits for a command DirectMonitor started and returns its exit
// with the process's own status.
func directWait(c *exec.Cmd) runc.Exit {
	status := -1
	_ = c.Wait()
	if ps := c.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			status = exitCode(unix.WaitStatus(ws))
		}
	}
	return runc.Exit{Pid: c.Process.Pid, Status: status, Timestamp: time.Now()}
}

// Wait implements runc.ProcessMonitor.
func (DirectMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

var _ runc.ProcessMonitor = DirectMonitor{}
