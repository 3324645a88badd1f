package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Config names where a process's standard streams go, as containerd gives
// them: a FIFO path (or fifo:// URI), a binary:// or binary-v2:// logger, a
// file:// path, or "" for none. A terminal's output, one stream, goes to
// Stdout's target.
type Config struct {
	Stdin    string
	Stdout   string
	Stderr   string
	Terminal bool
	// UID and GID own the pipes handed to the process (runc's IoUid/IoGid).
	UID, GID int
}

// Null reports whether the process has no I/O at all.
func (c Config) Null() bool {
	return c.Stdin == "" && c.Stdout == "" && c.Stderr == ""
}

// kind of an output target.
type kind int

const (
	kindNone kind = iota
	kindFIFO
	kindFile
	kindBinary
)

func parseTarget(target string) (kind, *url.URL, error) {
	if target == "" {
		return kindNone, nil, nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return kindNone, nil, fmt.Errorf("stdio target %q: %v: %w", target, err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "", "fifo":
		return kindFIFO, u, nil
	case "file":
		return kindFile, u, nil
	case "binary", "binary-v2":
		return kindBinary, u, nil
	}
	return kindNone, nil, fmt.Errorf("stdio scheme %q of %q: %w", u.Scheme, target, errdefs.ErrNotImplemented)
}

// Validate checks the targets before anything is opened.
func (c Config) Validate() error {
	for _, t := range []string{c.Stdin, c.Stdout, c.Stderr} {
		k, u, err := parseTarget(t)
		if err != nil {
			return err
		}
		if (k == kindFile || k == kindBinary) && u.Path == "" {
			return fmt.Errorf("stdio target %q has no path: %w", t, errdefs.ErrInvalidArgument)
		}
	}
	if k, _, _ := parseTarget(c.Stdin); k == kindFile || k == kindBinary {
		return fmt.Errorf("stdin %q: only a FIFO can be stdin: %w", c.Stdin, errdefs.ErrInvalidArgument)
	}
	ko, _, _ := parseTarget(c.Stdout)
	ke, _, _ := parseTarget(c.Stderr)
	if (ko == kindBinary || ke == kindBinary) && c.Stderr != "" && c.Stdout != "" && c.Stdout != c.Stderr {
		return fmt.Errorf("a binary logger must take both stdout and stderr: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// Options are the shim-wide facilities stdio needs.
type Options struct {
	// Consoles serves terminal masters; required for Config.Terminal.
	Consoles *Consoles
	// ContainerID and Namespace are given to binary:// loggers.
	ContainerID string
	Namespace   string
}

// openTimeout bounds how long opening a FIFO whose peer never shows up, or
// receiving a terminal master from the runtime, may take.
const openTimeout = 30 * time.Second

// IO is the shim's side of one process's stdio: the pipes (or the terminal)
// handed to the runtime and the copy loops between them and the targets.
//
// Ownership: the copy goroutines are owned by IO. An output loop ends when
// the pipe closes (every writer, background children included, is gone) or
// on Close; the stdin loop ends at the FIFO's EOF (CloseStdin) or on Close.
// Nothing in IO waits without a bound, and no method may be called with a
// lock of the caller's held across it except Resize.
type IO struct {
	cfg  Config
	opts Options
	pipe *pipes // pipe mode; nil in terminal mode

	// terminal mode
	sock   *runc.Socket // until the master is received
	ec     *console.EpollConsole
	ttyLog io.WriteCloser // fd 3 of the terminal's binary:// logger, if any

	conMu sync.Mutex
	con   console.Console // guarded by conMu: the master, once received, until closed

	stdinOnce sync.Once
	stdinSrc  io.ReadCloser  // FIFO read side of stdin; nil without stdin
	stdinKeep io.Closer      // a write side of the stdin FIFO, held until CloseStdin
	stdinDst  io.WriteCloser // the process's stdin (pipe or terminal); nil without stdin
	stdinDone chan struct{}  // closed when the stdin copy loop has ended; nil without one

	stdinMu    sync.Mutex
	stdinReady bool          // guarded by stdinMu: the FIFO is open and copied (Started)
	stdinAsked bool          // guarded by stdinMu: CloseStdin came before that
	stdinGone  bool          // guarded by stdinMu: Close came; stdin is never set up
	stdinStop  chan struct{} // closed by Close: a CloseStdin's wait for the clients ends

	mu      sync.Mutex
	closers []io.Closer // guarded by mu: targets IO opened, closed by Close

	copies  []*outputCopy  // pipe mode output loops, set before Open returns
	outputs sync.WaitGroup // every output copy loop
	logger  *logger        // guarded by mu: binary:// logger process, if any
}

// Open prepares the stdio of one process. In pipe mode the copy loops start
// at once; in terminal mode they start in Started, once the runtime has sent
// the terminal master. ctx bounds only the opening of the targets.
func Open(ctx context.Context, cfg Config, opts Options) (_ *IO, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	i := &IO{cfg: cfg, opts: opts, stdinStop: make(chan struct{})}
	defer func() {
		if retErr != nil {
			i.Close(0)
		}
	}()
	if cfg.Stdin != "" {
		// Opened in Started, once the runtime has made the process, as
		// containerd's runc shim does: a client that writes all it has and
		// closes, then asks for CloseIO, finds the task made by then. Here
		// it need only be there.
		if _, err := os.Stat(fifoPath(cfg.Stdin)); err != nil {
			return nil, classifyOpen(fmt.Errorf("open stdin %s: %w", cfg.Stdin, err))
		}
	}
	if cfg.Terminal {
		if opts.Consoles == nil {
			return nil, fmt.Errorf("terminal without a console service: %w", errdefs.ErrFailedPrecondition)
		}
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		i.sock = sock
		if k, _, _ := parseTarget(cfg.Stdout); k == kindBinary {
			// Before the process exists: a logger that fails fails the
			// creation with nothing left running.
			if err := i.startTerminalLogger(ctx); err != nil {
				return nil, err
			}
		}
		return i, nil
	}

	ko, _, _ := parseTarget(cfg.Stdout)
	ke, _, _ := parseTarget(cfg.Stderr)
	p, err := newPipes(cfg.UID, cfg.GID, cfg.Stdin != "", ko != kindNone, ke != kindNone)
	if err != nil {
		return nil, fmt.Errorf("create stdio pipes: %w", err)
	}
	i.pipe = p
	if ko == kindBinary || ke == kindBinary {
		target := cfg.Stdout
		if ko != kindBinary {
			target = cfg.Stderr
		}
		l, err := startLogger(ctx, target, p.Stdout(), p.Stderr(), opts)
		if err != nil {
			return nil, err
		}
		i.setLogger(l)
		return i, nil
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	if err := i.startOutputs(octx, p.Stdout(), p.Stderr()); err != nil {
		return nil, err
	}
	return i, nil
}

// startOutputs opens the stdout and stderr targets and copies src into them.
// When both name the same target, one writer serves both loops.
func (i *IO) startOutputs(ctx context.Context, stdout, stderr io.Reader) error {
	same := i.cfg.Stdout != "" && i.cfg.Stdout == i.cfg.Stderr
	var shared io.WriteCloser
	for _, s := range []struct {
		target string
		src    io.Reader
	}{{i.cfg.Stdout, stdout}, {i.cfg.Stderr, stderr}} {
		if s.target == "" || s.src == nil {
			continue
		}
		w := shared
		if w == nil {
			var err error
			if w, err = openOutput(ctx, s.target); err != nil {
				return err
			}
			i.track(w)
			if same {
				shared = w
			}
		}
		if err := i.startCopy(w, s.src, !same); err != nil {
			return err
		}
	}
	if shared != nil {
		go func() {
			i.outputs.Wait()
			shared.Close()
		}()
	}
	return nil
}

func (i *IO) startCopy(dst io.WriteCloser, src io.Reader, closeDst bool) error {
	return i.startCopyKeep(dst, src, closeDst, false)
}

// startCopyKeep is startCopy; with keepReading a copy whose dst failed goes
// on reading src and dropping what it reads.
func (i *IO) startCopyKeep(dst io.WriteCloser, src io.Reader, closeDst, keepReading bool) error {
	var oc *outputCopy
	if f, ok := src.(*os.File); ok && i.pipe != nil {
		var err error
		if oc, err = newOutputCopy(f); err != nil {
			return err
		}
		i.copies = append(i.copies, oc)
	}
	i.outputs.Add(1)
	end := func() {
		if closeDst {
			dst.Close()
		}
		i.outputs.Done()
	}
	if oc != nil {
		oc.start(dst, end)
		return nil
	}
	go func() {
		copyStream(dst, src, keepReading)
		end()
	}()
	return nil
}

// setupStdin opens the stdin FIFO and copies it into dst, the process's
// stdin; without stdin it keeps dst only to close it. A CloseStdin that
// came before is carried out now.
func (i *IO) setupStdin(dst io.WriteCloser) error {
	if i.cfg.Stdin == "" {
		// A terminal's input is kept all the same: Close closes it.
		i.stdinDst = dst
		return nil
	}
	i.stdinMu.Lock()
	ready := i.stdinReady
	i.stdinMu.Unlock()
	if ready {
		return nil // a start tried again: set up once
	}
	in, keep, err := openStdin(fifoPath(i.cfg.Stdin))
	if err != nil {
		return classifyOpen(fmt.Errorf("open stdin %s: %w", i.cfg.Stdin, err))
	}
	i.stdinMu.Lock()
	if i.stdinGone {
		i.stdinMu.Unlock()
		in.Close()
		keep.Close()
		return nil
	}
	i.stdinSrc, i.stdinKeep, i.stdinDst = in, keep, dst
	i.startStdin()
	i.stdinReady = true
	asked := i.stdinAsked
	i.stdinMu.Unlock()
	if asked {
		_ = i.CloseStdin()
	}
	return nil
}

func (i *IO) startStdin() {
	src, dst := i.stdinSrc, i.stdinDst
	done := make(chan struct{})
	i.stdinDone = done
	go func() {
		defer close(done)
		// The process and everything that shared its stdin may be gone
		// (EPIPE), or stdin cut off: what clients still write is read and
		// dropped, so that they never block on a FIFO nobody reads.
		copyStream(dst, src, true)
		// The FIFO reaches EOF only after CloseStdin dropped the shim's
		// write side and every client closed theirs: EOF for the process.
		// A terminal stays open (closing it would hang the process up);
		// CloseStdin sends it ^D.
		if !i.cfg.Terminal && i.stdinDst != nil {
			_ = i.stdinDst.Close()
		}
	}()
}

// openStdin opens the stdin FIFO at path: the side the shim reads, and a
// write side the shim keeps. Both are bare descriptors (the FIFO library's
// objects would add an O_PATH descriptor, channels and an open in a
// goroutine to each).
//
// The read side is opened non-blocking, so the open returns at once; its
// reads wait in the runtime's poller. A client that detaches closes its
// write side; the process must not read EOF then, only on CloseIO: the
// kept write side holds the FIFO open until CloseStdin drops it. It is
// opened O_RDWR, which opens a FIFO at once (a non-blocking write open
// would complete later, and a client detaching before it did would be EOF
// after all), through the read side's descriptor, so that both are the same
// FIFO whatever became of the path.
func openStdin(path string) (in, keep *os.File, _ error) {
	rfd, err := openRetry(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	in = os.NewFile(uintptr(rfd), path)
	wfd, err := openRetry(fmt.Sprintf("/proc/self/fd/%d", rfd), unix.O_RDWR|unix.O_CLOEXEC)
	if err != nil {
		in.Close()
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return in, os.NewFile(uintptr(wfd), path), nil
}

// openRetry is open(2), retried when a signal interrupts it.
func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// stdinDrainBound bounds how long CloseStdin lets what a client wrote to
// stdin flow before it cuts stdin off (a client still holding the FIFO open,
// or a process that does not read, would otherwise keep it open).
const stdinDrainBound = 2 * time.Second

func openOutput(ctx context.Context, target string) (io.WriteCloser, error) {
	k, u, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	if k == kindFile {
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, classifyOpen(fmt.Errorf("log file %s: %w", u.Path, err))
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, classifyOpen(fmt.Errorf("log file %s: %w", u.Path, err))
		}
		return f, nil
	}
	path := fifoPath(target)
	// The write side waits until the reader exists (bounded by ctx).
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, classifyOpen(fmt.Errorf("open stdio fifo %s: %w", path, err))
	}
	// Once open, only the descriptor is kept: the FIFO's handle holds a
	// second (O_PATH) descriptor, three channels and its name for as long as
	// it lives, about 0.8 KiB, paid per stream of every container of a
	// group shim.
	wfd, err := ownDescriptor(w)
	if err != nil {
		return nil, fmt.Errorf("open stdio fifo %s: %w", path, err)
	}
	// Hold a read side too, so the process never takes SIGPIPE while the
	// reader (containerd) restarts; it is never read. It is opened through
	// the write side's descriptor, so it is the same FIFO whatever became of
	// the path meanwhile, and without blocking: that returns at once.
	keep, err := openRetry(fmt.Sprintf("/proc/self/fd/%d", wfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		unix.Close(wfd)
		return nil, fmt.Errorf("open stdio fifo %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	// The descriptor is non-blocking, as the library opened it (they share
	// the open file description): the file's writes wait in the runtime's
	// poller.
	return &fifoWriter{File: os.NewFile(uintptr(wfd), path), keep: keep}, nil
}

// ownDescriptor returns a descriptor of its own (close-on-exec) on w's open
// FIFO, and closes w.
func ownDescriptor(w io.WriteCloser) (int, error) {
	defer w.Close()
	sc, ok := w.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("fifo %T has no descriptor: %w", w, errdefs.ErrNotImplemented)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("dup", derr)
	}
	return nfd, nil
}

// classifyOpen marks a target that cannot be opened because it is not there
// or not allowed as bad input, and one whose reader never came as
// unavailable; the cause stays in the chain.
func classifyOpen(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, os.ErrPermission), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ENAMETOOLONG):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	return err
}

// fifoWriter is an output FIFO's write side and the read side the shim keeps
// open beside it.
type fifoWriter struct {
	*os.File
	keep int
	once sync.Once
}

func (w *fifoWriter) Close() error {
	err := w.File.Close()
	w.once.Do(func() {
		if cerr := unix.Close(w.keep); cerr != nil {
			err = errors.Join(err, os.NewSyscallError("close", cerr))
		}
	})
	return err
}

func fifoPath(target string) string {
	if u, err := url.Parse(target); err == nil && u.Scheme == "fifo" {
		return u.Path
	}
	return target
}

func (i *IO) track(c io.Closer) {
	i.mu.Lock()
	i.closers = append(i.closers, c)
	i.mu.Unlock()
}

// Runc returns the pipes to hand to runc create or exec; nil in terminal mode.
func (i *IO) Runc() runc.IO {
	if i.pipe == nil {
		return nil
	}
	return i.pipe
}

// ConsoleSocket returns the socket runc sends the terminal master to; nil in
// pipe mode.
func (i *IO) ConsoleSocket() runc.ConsoleSocket {
	if i.sock == nil {
		return nil
	}
	return i.sock
}

// Started is called once the runtime call that created the process has
// succeeded. It opens the stdin FIFO and starts copying it. In terminal
// mode it first receives the master (bounded) and starts copying it: into
// the output targets, which it opens (bounded), or into the binary://
// logger that Open started.
func (i *IO) Started(ctx context.Context) error {
	if i.sock == nil {
		if i.pipe != nil {
			return i.setupStdin(i.pipe.Stdin())
		}
		return nil
	}
	sock := i.sock
	type result struct {
		con console.Console
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := sock.ReceiveMaster()
		got <- result{c, err}
	}()
	var r result
	select {
	case r = <-got:
	case <-time.After(openTimeout):
		sock.Close() // ends ReceiveMaster
		r = <-got
		if r.err == nil {
			r.con.Close()
		}
		return fmt.Errorf("no terminal master from the runtime within %s: %w", openTimeout, errdefs.ErrUnavailable)
	}
	sock.Close()
	i.sock = nil
	if r.err != nil {
		return fmt.Errorf("receive terminal master: %w", r.err)
	}
	ec, err := i.opts.Consoles.add(r.con)
	if err != nil {
		r.con.Close()
		return err
	}
	in, err := newTTYInput(r.con)
	if err != nil {
		_ = ec.Shutdown(i.opts.Consoles.remove)
		r.con.Close()
		return err
	}
	i.conMu.Lock()
	i.con, i.ec = r.con, ec
	i.conMu.Unlock()
	if err := i.setupStdin(in); err != nil {
		return err
	}
	if i.ttyLog != nil {
		// A logger that went away costs the output, never the process:
		// the terminal is still read.
		return i.startCopyKeep(i.ttyLog, ec, true, true)
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	return i.startOutputs(octx, ec, nil)
}

// startTerminalLogger starts the binary:// logger of a terminal, whose
// stdout (fd 3) Started copies the terminal into. A terminal is one
// stream: the logger's stderr (fd 4) is a pipe whose write end is closed
// at once, so that it reads EOF there and ends once the terminal's output
// has (containerd's runc shim leaves that write end to its collector).
func (i *IO) startTerminalLogger(ctx context.Context) error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("logger pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fmt.Errorf("logger pipe: %w", err)
	}
	errW.Close()
	l, err := startLogger(ctx, i.cfg.Stdout, outR, errR, i.opts)
	if err != nil {
		outR.Close()
		errR.Close()
		outW.Close()
		return err
	}
	i.setLogger(l)
	i.track(outW)
	i.ttyLog = outW
	return nil
}

func (i *IO) setLogger(l *logger) {
	i.mu.Lock()
	i.logger = l
	i.mu.Unlock()
}

// ttyInput is the process's stdin on a terminal: the master, through a
// descriptor of its own that the Go runtime's poller waits on. The
// console's own Write (EpollConsole) waits for room in the terminal's input
// on a condition variable, with no bound, and once the console has left the
// epoll set nothing wakes it: a process that read no stdin held the copy,
// CloseStdin's EOF and the Close after it (Delete) for good.
type ttyInput struct{ f *os.File }

func newTTYInput(con console.Console) (*ttyInput, error) {
	fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("terminal input: %w", err)
	}
	// The master is non-blocking (the epoller made it so), and os.NewFile
	// hands such a descriptor to the poller: writes wait there, and
	// deadlines and Close end them.
	return &ttyInput{f: os.NewFile(uintptr(fd), "terminal input")}, nil
}

func (t *ttyInput) Write(p []byte) (int, error) { return t.f.Write(p) }

func (t *ttyInput) Close() error { return t.f.Close() }

// cut ends a write that waits for room, and fails the later ones, until
// writeEOF sets a deadline of its own.
func (t *ttyInput) cut() { _ = t.f.SetWriteDeadline(time.Unix(1, 0)) }

// writeEOF sends ^D, EOF in canonical mode, waiting at most bound for room.
func (t *ttyInput) writeEOF(bound time.Duration) error {
	if err := t.f.SetWriteDeadline(time.Now().Add(bound)); err != nil {
		return err
	}
	_, err := t.f.Write([]byte{4})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the terminal's input stays full: EOF not sent within %s: %w", bound, errdefs.ErrUnavailable)
	}
	return err
}

// Resize sets the terminal size; it fails without a terminal. It may run
// while the process exits and its I/O closes.
func (i *IO) Resize(width, height uint32) error {
	i.conMu.Lock()
	defer i.conMu.Unlock()
	if i.con == nil {
		if i.cfg.Terminal {
			// Not received yet, or closed: the process is gone.
			return fmt.Errorf("terminal not available: %w", errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return i.con.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// CloseStdin closes the process's stdin so that it reads EOF, once what
// clients wrote has flowed: the shim drops its write side of the FIFO, and
// the process reads EOF when the clients have closed theirs, or when
// stdinDrainBound has passed. For a terminal it sends the EOF character.
// It returns at once, and the rest goes on in the background: clients ask
// for it as their input ends (ctr and nerdctl from within their last read
// of it) and close their side of the FIFO only once it has returned. It is
// safe to call more than once.
func (i *IO) CloseStdin() error {
	if i.cfg.Stdin == "" {
		return nil // no stdin: nothing to end (runc-v2 does nothing either)
	}
	i.stdinMu.Lock()
	if !i.stdinReady && !i.stdinGone {
		// Before Started: carried out once stdin is set up.
		i.stdinAsked = true
		i.stdinMu.Unlock()
		return nil
	}
	i.stdinMu.Unlock()
	go func() {
		if err := i.closeStdin(stdinDrainBound); err != nil {
			log.L.WithError(err).Warn("close stdin")
		}
	}()
	return nil
}

// closeStdin ends the process's stdin; what clients wrote may flow for up to
// drain first. It never waits longer than drain plus two closeBounds.
func (i *IO) closeStdin(drain time.Duration) error {
	var err error
	i.stdinOnce.Do(func() {
		// Drop the shim's write side: once every client has closed
		// theirs, the copy loop reads what is left, then EOF.
		if i.stdinKeep != nil {
			_ = i.stdinKeep.Close()
		}
		ended := i.stdinDone == nil
		if !ended && drain > 0 {
			// Close ends the wait: it cuts stdin off at once.
			t := time.NewTimer(drain)
			select {
			case <-i.stdinDone:
				ended = true
			case <-t.C:
			case <-i.stdinStop:
			}
			t.Stop()
		}
		if !ended {
			// A client still holds the FIFO, or the process does not
			// read: cut stdin off. Closing either side ends a copy
			// blocked on it.
			if i.stdinSrc != nil {
				_ = i.stdinSrc.Close()
			}
			if in, ok := i.stdinDst.(*ttyInput); ok {
				in.cut() // closed below, after the EOF
			} else if i.stdinDst != nil {
				_ = i.stdinDst.Close()
			}
			if !waitBound(i.stdinDone, closeBound) {
				log.L.Warn("stdin copy did not end")
			}
		}
		if i.stdinSrc != nil {
			_ = i.stdinSrc.Close()
		}
		if in, ok := i.stdinDst.(*ttyInput); ok {
			i.conMu.Lock()
			closed := i.con == nil
			i.conMu.Unlock()
			stopped := false
			select {
			case <-i.stdinStop: // Close is under way
				stopped = true
			default:
			}
			if !closed && drain > 0 && !stopped {
				err = in.writeEOF(closeBound)
			}
			_ = in.Close()
		} else if i.stdinDst != nil {
			if cerr := i.stdinDst.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
				err = cerr
			}
		}
	})
	return err
}

// waitBound waits for ch to close, at most d; it reports whether it did.
func waitBound(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// closeBound bounds each step of closing once its cause is gone (a read or
// write ended by closing its descriptor returns at once).
const closeBound = time.Second

// ExitBound is how long Flush lets the output a process wrote before it
// exited reach its targets before its exit is published anyway.
const ExitBound = 2 * time.Second

// DeleteBound is how long Close lets output keep flowing (a background child
// that inherited stdout may still write) before it cuts it off, as the
// process is deleted: containerd's runc shim waits as long.
const DeleteBound = 2 * time.Second

// Flush is called once the process has exited. It returns when what the
// process wrote has been copied to the targets: the copy loops have ended,
// or (pipes) nothing is left in the pipes and nothing read is still being
// written, because a background child that inherited them keeps them open.
// It closes no pipe: such a child's later output is still copied, until
// Close. A terminal goes with its process, as with containerd's runc shim:
// its reader is shut down, what is buffered is still read. It waits at most
// bound and reports whether all was copied.
func (i *IO) Flush(bound time.Duration) bool {
	done := make(chan struct{})
	go func() {
		i.outputs.Wait()
		close(done)
	}()
	if i.ec != nil {
		_ = i.ec.Shutdown(i.opts.Consoles.remove)
		return waitBound(done, bound)
	}
	deadline := time.Now().Add(bound)
	poll := 100 * time.Microsecond
	for {
		select {
		case <-done:
			return true
		default:
		}
		if i.copiesDrained() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		select {
		case <-done:
			return true
		case <-time.After(min(poll, left)):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}

func (i *IO) copiesDrained() bool {
	for _, oc := range i.copies {
		if !oc.drained() {
			return false
		}
	}
	return true
}

func (i *IO) closeProcessSide() error {
	var err error
	if i.pipe != nil {
		for _, oc := range i.copies {
			oc.stop()
		}
		err = i.pipe.Close()
	}
	i.conMu.Lock()
	con := i.con
	i.con = nil
	i.conMu.Unlock()
	if con != nil {
		err = errors.Join(err, con.Close())
	}
	return err
}

func (i *IO) closeTargets() error {
	i.mu.Lock()
	cs := i.closers
	i.closers = nil
	i.mu.Unlock()
	var err error
	for _, c := range cs {
		// The copy loops close their targets when they end: one found
		// closed is done with.
		if cerr := c.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = errors.Join(err, cerr)
		}
	}
	return err
}

// started reports whether a process holds the other ends: without one, no
// output can come and nothing is worth waiting for.
func (i *IO) started() bool {
	if i.pipe != nil {
		return i.pipe.started.Load()
	}
	i.conMu.Lock()
	defer i.conMu.Unlock()
	return i.con != nil
}

// Close ends the process's I/O: output may keep flowing for up to bound
// (what a background child still writes), then the pipes or terminal and
// every target IO opened are closed; the copy loops end and a binary logger
// sees EOF. It returns within bound plus a few closeBounds, whatever the
// process, its children or the clients do.
func (i *IO) Close(bound time.Duration) error {
	i.stdinMu.Lock()
	if !i.stdinGone {
		i.stdinGone = true
		if i.stdinStop != nil {
			close(i.stdinStop)
		}
	}
	i.stdinMu.Unlock()
	i.closeStdin(0)
	if in, ok := i.stdinDst.(*ttyInput); ok {
		// A CloseStdin that came before the terminal did (an exec's
		// CloseIO before its Start) left this one open.
		_ = in.Close()
	}
	if i.ec != nil {
		_ = i.ec.Shutdown(i.opts.Consoles.remove)
	}
	done := make(chan struct{})
	go func() {
		i.outputs.Wait()
		close(done)
	}()
	if bound > 0 && i.started() {
		waitBound(done, bound)
	}
	err := i.closeProcessSide()
	if i.sock != nil {
		err = errors.Join(err, i.sock.Close())
		i.sock = nil
	}
	if !waitBound(done, closeBound) {
		// A loop blocked writing to a target whose reader went away.
		err = errors.Join(err, i.closeTargets())
		if !waitBound(done, closeBound) {
			log.L.Warn("output copy did not end")
		}
	}
	err = errors.Join(err, i.closeTargets())
	i.mu.Lock()
	l := i.logger
	i.logger = nil
	i.mu.Unlock()
	if l != nil {
		err = errors.Join(err, l.close())
	}
	return err
}

// smallBufSize is what a stream copy reads into while its source trickles
// or is idle; a read that fills it starts a burst, read with a pooled
// bufSize buffer until a read comes back short.
const smallBufSize = 512

// copyStream copies src to dst until src ends or fails. A copy blocked on
// an idle source (a stdin nobody writes, a quiet terminal) holds
// smallBufSize bytes, not a 32 KiB buffer. When dst fails, the copy ends,
// or with keepReading goes on reading and dropping what it reads.
func copyStream(dst io.Writer, src io.Reader, keepReading bool) {
	small := make([]byte, smallBufSize)
	var big *[]byte
	defer func() {
		if big != nil {
			putBuf(big)
		}
	}()
	for {
		b := small
		if big != nil {
			b = *big
		}
		n, rerr := src.Read(b)
		if n > 0 && dst != nil {
			if _, werr := dst.Write(b[:n]); werr != nil {
				if !keepReading {
					return
				}
				dst = nil
			}
		}
		switch {
		case big == nil && n == len(small):
			big = getBuf()
		case big != nil && n < len(b):
			putBuf(big)
			big = nil
		}
		if rerr != nil {
			return
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// buffersOut counts the copy buffers taken from the pool and not given back.
var buffersOut atomic.Int64

func getBuf() *[]byte {
	buffersOut.Add(1)
	return bufPool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	buffersOut.Add(-1)
	bufPool.Put(b)
}
