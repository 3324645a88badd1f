package stdio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// pipes are the standard streams of a process in pipe mode, as handed to the
// runtime (a runc.IO). Unlike go-runc's pipe I/O, CloseAfterStart closes
// every end the process uses, the read end of stdin included: the shim keeps
// only its own ends, so a process that exits without reading its stdin gives
// the shim's writer EPIPE instead of a pipe that fills up and blocks it.
// A stream without a target is /dev/null for the process.
//
// The shim's ends are non-blocking (the runtime poller's), so closing one
// ends a read or write blocked on it.
type pipes struct {
	in, out, err *pipe    // nil for a stream without a target
	devNull      *os.File // for the streams without a target; nil when every stream has one

	started   atomic.Bool // CloseAfterStart ran: the process holds its ends
	closeOnce sync.Once
	closeErr  error
}

type pipe struct {
	r, w *os.File
}

// newPipes creates the pipes of the streams asked for, the process's ends
// owned by uid and gid.
func newPipes(uid, gid int, stdin, stdout, stderr bool) (_ *pipes, retErr error) {
	p := &pipes{}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	mk := func(want bool, chown func(*pipe) *os.File) (*pipe, error) {
		if !want {
			return nil, nil
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create pipe: %w", err)
		}
		pp := &pipe{r: r, w: w}
		if err := fchown(chown(pp), uid, gid); err != nil {
			r.Close()
			w.Close()
			return nil, err
		}
		return pp, nil
	}
	var err error
	if p.in, err = mk(stdin, func(pp *pipe) *os.File { return pp.r }); err != nil {
		return nil, err
	}
	if p.out, err = mk(stdout, func(pp *pipe) *os.File { return pp.w }); err != nil {
		return nil, err
	}
	if p.err, err = mk(stderr, func(pp *pipe) *os.File { return pp.w }); err != nil {
		return nil, err
	}
	if !stdout || !stderr {
		// Left unset, go-runc would collect the runtime's output through
		// a pipe that the container inherits, and wait for its end forever.
		if p.devNull, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// fchown changes the owner of f without switching it to blocking mode (as
// f.Fd() would).
func fchown(f *os.File, uid, gid int) error {
	if uid == 0 && gid == 0 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Fchown(int(fd), uid, gid) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("chown stdio pipe: %w", cerr)
	}
	return nil
}

// Set implements runc.IO: the process's ends become the command's streams.
func (p *pipes) Set(cmd *exec.Cmd) {
	if p.in != nil {
		cmd.Stdin = p.in.r
	}
	if p.out != nil {
		cmd.Stdout = p.out.w
	} else {
		cmd.Stdout = p.devNull
	}
	if p.err != nil {
		cmd.Stderr = p.err.w
	} else {
		cmd.Stderr = p.devNull
	}
}

// CloseAfterStart implements runc.StartCloser: the process holds its ends
// now, the shim drops its copies of them.
func (p *pipes) CloseAfterStart() error {
	p.started.Store(true)
	var err error
	for _, f := range p.processEnds() {
		if cerr := f.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = errors.Join(err, cerr)
		}
	}
	return err
}

func (p *pipes) processEnds() []*os.File {
	var fs []*os.File
	if p.in != nil {
		fs = append(fs, p.in.r)
	}
	if p.out != nil {
		fs = append(fs, p.out.w)
	}
	if p.err != nil {
		fs = append(fs, p.err.w)
	}
	if p.devNull != nil {
		fs = append(fs, p.devNull)
	}
	return fs
}

// Stdin implements runc.IO: the shim's write end of stdin, or nil.
func (p *pipes) Stdin() io.WriteCloser {
	if p.in == nil {
		return nil
	}
	return p.in.w
}

// Stdout implements runc.IO: the shim's read end of stdout, or nil.
func (p *pipes) Stdout() io.ReadCloser {
	if p.out == nil {
		return nil
	}
	return p.out.r
}

// Stderr implements runc.IO: the shim's read end of stderr, or nil.
func (p *pipes) Stderr() io.ReadCloser {
	if p.err == nil {
		return nil
	}
	return p.err.r
}

// Close implements runc.IO: every end still open is closed, once.
func (p *pipes) Close() error {
	p.closeOnce.Do(func() {
		fs := p.processEnds()
		for _, pp := range []*pipe{p.in, p.out, p.err} {
			if pp != nil {
				fs = append(fs, pp.r, pp.w)
			}
		}
		seen := make(map[*os.File]bool, len(fs))
		for _, f := range fs {
			if seen[f] {
				continue
			}
			seen[f] = true
			if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				p.closeErr = errors.Join(p.closeErr, err)
			}
		}
	})
	return p.closeErr
}

var (
	_ runc.IO          = (*pipes)(nil)
	_ runc.StartCloser = (*pipes)(nil)
)

// outputCopy copies one output pipe of a process into its target and can
// tell whether everything written into the pipe so far has been read and
// written on (drained), without waiting for the pipe to close: a background
// child that inherited the pipe may keep it open long after the process
// exited. The read happens under mu together with the in-flight mark, so
// drained never sees bytes that have left the pipe but are not yet written.
//
// The copy runs in a goroutine only while the pipe has something to read;
// an empty pipe is handed to the idle poller, which starts a goroutine
// again once it is readable.
type outputCopy struct {
	src    *os.File
	raw    syscall.RawConn
	dst    io.Writer   // nil once it failed: what is read is dropped
	end    func()      // called once, when the copy ends
	poller *idlePoller // nil: the copy waits in its goroutine
	token  int32       // the poller's name for it
	// parkAfter is how long an empty pipe keeps the goroutine (defaultParkAfter).
	parkAfter time.Duration

	mu         sync.Mutex
	inflight   bool // guarded by mu: bytes read from the pipe and not yet written
	parked     bool // guarded by mu: waiting in the idle poller, no goroutine
	stopping   bool // guarded by mu: the pipe is about to close; never parks again
	registered bool // guarded by mu: the pipe is in the idle poller's epoll
	done       chan struct{}
}

func newOutputCopy(src *os.File) (*outputCopy, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	o := &outputCopy{src: src, raw: raw, done: make(chan struct{}), poller: idle(), parkAfter: defaultParkAfter}
	if o.poller != nil {
		o.token = o.poller.token()
	}
	return o, nil
}

// start copies into dst until the pipe reaches EOF or is closed, then calls
// end. A target that fails is dropped and the pipe is still read, so the
// process never blocks on it.
func (o *outputCopy) start(dst io.Writer, end func()) {
	o.dst, o.end = dst, end
	go o.run()
}

// defaultParkAfter is how long a copy whose pipe went empty keeps its goroutine,
// waiting in the runtime's poller, before it parks in the idle poller: a
// stream that writes again within it (a chatty log) does not pay a rearm, a
// wake-up and a new goroutine per line (BenchmarkOutputLine: about 6 µs).
const defaultParkAfter = time.Second

// run copies while the pipe has something to read. It holds a buffer only
// meanwhile: it takes one from the pool when the pipe is readable and gives
// it back when the pipe is empty again, so that the output of an idle
// process (most processes, most of the time) costs no buffer. A pipe that
// stays empty for parkAfter is parked in the idle poller and the goroutine
// returns, so that it costs no goroutine either. Without the idle poller
// (or once stopping), the copy waits in the runtime's poller for good.
func (o *outputCopy) run() {
	var buf *[]byte
	defer func() {
		if buf != nil {
			putBuf(buf)
		}
	}()
	warm := o.poller != nil && o.parkAfter > 0 // empty now: wait parkAfter before parking
	for {
		var (
			n      int
			rerr   error
			parked bool
		)
		if warm {
			_ = o.src.SetReadDeadline(time.Now().Add(o.parkAfter))
		}
		err := o.raw.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = getBuf()
			}
			o.mu.Lock()
			defer o.mu.Unlock()
			n, rerr = unix.Read(int(fd), *buf)
			if n > 0 {
				o.inflight = true
			}
			if rerr != unix.EAGAIN {
				return true
			}
			putBuf(buf)
			buf = nil
			if warm {
				return false // wait for data, up to the deadline
			}
			parked = o.parkLocked(int(fd))
			return parked // else wait for the pipe to be readable
		})
		if parked {
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Empty for parkAfter: park on the next empty read.
			_ = o.src.SetReadDeadline(time.Time{})
			warm = false
			continue
		}
		if n > 0 && o.dst != nil {
			if _, werr := o.dst.Write((*buf)[:n]); werr != nil {
				o.dst = nil
			}
		}
		o.mu.Lock()
		o.inflight = false
		o.mu.Unlock()
		if err != nil || rerr != nil || n <= 0 {
			if buf != nil {
				putBuf(buf) // before done: an ended copy holds nothing
				buf = nil
			}
			o.finish()
			return
		}
		warm = o.poller != nil && o.parkAfter > 0
	}
}

// parkLocked hands the empty pipe fd to the idle poller; false when the
// copy must wait in its goroutine. The caller holds o.mu.
func (o *outputCopy) parkLocked(fd int) bool {
	if o.poller == nil || o.stopping {
		return false
	}
	if err := o.poller.arm(o, fd); err != nil {
		log.L.WithError(err).Warn("output copy waits in its goroutine")
		return false
	}
	o.parked = true
	return true
}

// resume is the idle poller's: the pipe is readable again.
func (o *outputCopy) resume() {
	o.mu.Lock()
	if !o.parked {
		o.mu.Unlock()
		return
	}
	o.parked = false
	o.mu.Unlock()
	go o.run()
}

// stop is called before the pipe is closed: a parked copy ends now, one
// under way ends when the close ends its read.
func (o *outputCopy) stop() {
	o.mu.Lock()
	o.stopping = true
	wasParked := o.parked
	o.parked = false
	o.mu.Unlock()
	if wasParked {
		o.finish()
	}
}

// finish ends the copy, once.
func (o *outputCopy) finish() {
	o.mu.Lock()
	if o.poller != nil {
		_ = o.raw.Control(func(fd uintptr) { o.poller.forget(o, int(fd)) })
	}
	o.mu.Unlock()
	close(o.done)
	if o.end != nil {
		o.end()
	}
}

// drained reports whether the copy has ended, or nothing is left in the pipe
// and nothing read is still being written.
func (o *outputCopy) drained() bool {
	select {
	case <-o.done:
		return true
	default:
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.inflight {
		return false
	}
	avail := -1
	if err := o.raw.Control(func(fd uintptr) {
		// TIOCINQ is FIONREAD: the bytes waiting in the pipe.
		if v, err := unix.IoctlGetInt(int(fd), unix.TIOCINQ); err == nil {
			avail = v
		}
	}); err != nil {
		return true // closed
	}
	return avail == 0
}
