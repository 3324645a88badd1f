package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
)

// Config names where a process's standard streams go, as containerd gives
// them: a FIFO path (or fifo:// URI), a binary:// logger, a file:// path, or
// "" for none.
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
	case "binary":
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
	if c.Terminal && ko == kindBinary {
		return fmt.Errorf("terminal output to %q: %w", c.Stdout, errdefs.ErrNotImplemented)
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
// The copy goroutines are owned by IO and end when the process side closes,
// when Drain's bound expires, or on Close.
type IO struct {
	cfg  Config
	opts Options
	pipe runc.IO // pipe mode; nil in terminal mode

	// terminal mode
	sock *runc.Socket    // until the master is received
	con  console.Console // the master, once received
	ec   *console.EpollConsole

	stdinOnce sync.Once
	stdinSrc  io.ReadCloser  // FIFO read side of stdin; nil without stdin
	stdinKeep io.Closer      // a write side of the stdin FIFO, held until CloseStdin
	stdinDst  io.WriteCloser // the process's stdin (pipe or terminal); nil without stdin
	stdinDone chan struct{}  // closed when the stdin copy loop has ended; nil without one

	mu      sync.Mutex
	closers []io.Closer // guarded by mu: targets IO opened, closed by Close

	outputs sync.WaitGroup // output copy loops
	logger  *logger        // binary:// logger process, if any
}

// Open prepares the stdio of one process. In pipe mode the copy loops start
// at once; in terminal mode they start in Started, once the runtime has sent
// the terminal master. ctx bounds only the opening of the targets.
func Open(ctx context.Context, cfg Config, opts Options) (_ *IO, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	i := &IO{cfg: cfg, opts: opts}
	defer func() {
		if retErr != nil {
			i.Close()
		}
	}()
	if cfg.Stdin != "" {
		// Opened non-blocking: the writer (containerd, or an attaching
		// client) may come later; fifo makes reads wait for it.
		in, err := fifo.OpenFifo(context.WithoutCancel(ctx), fifoPath(cfg.Stdin), syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, classifyOpen(fmt.Errorf("open stdin %s: %w", cfg.Stdin, err))
		}
		i.stdinSrc = in
		// A client that detaches closes its write side; the process must
		// not read EOF then, only on CloseIO. The shim's own write side
		// keeps the FIFO from reaching EOF until CloseStdin.
		// O_RDWR opens a FIFO at once (a non-blocking write open would
		// complete later, and a client detaching before it did would be
		// EOF after all).
		keep, err := fifo.OpenFifo(context.WithoutCancel(ctx), fifoPath(cfg.Stdin), syscall.O_RDWR, 0)
		if err != nil {
			in.Close()
			i.stdinSrc = nil
			return nil, classifyOpen(fmt.Errorf("open stdin %s: %w", cfg.Stdin, err))
		}
		i.stdinKeep = keep
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
		return i, nil
	}

	ko, _, _ := parseTarget(cfg.Stdout)
	ke, _, _ := parseTarget(cfg.Stderr)
	p, err := runc.NewPipeIO(cfg.UID, cfg.GID, func(o *runc.IOOption) {
		o.OpenStdin = cfg.Stdin != ""
		o.OpenStdout = ko != kindNone
		o.OpenStderr = ke != kindNone
	})
	if err != nil {
		return nil, fmt.Errorf("create stdio pipes: %w", err)
	}
	if ko == kindNone || ke == kindNone {
		// A stream without a target is /dev/null. Left unset, go-runc
		// would collect the runtime's output through a pipe that the
		// container inherits, and wait for its end forever.
		devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			p.Close()
			return nil, err
		}
		p = &nullOutputs{IO: p, devNull: devNull}
	}
	i.pipe = p
	if i.stdinSrc != nil {
		i.stdinDst = p.Stdin()
		i.startStdin()
	}
	if ko == kindBinary || ke == kindBinary {
		target := cfg.Stdout
		if ko != kindBinary {
			target = cfg.Stderr
		}
		l, err := startLogger(ctx, target, p.Stdout(), p.Stderr(), opts)
		if err != nil {
			return nil, err
		}
		i.logger = l
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
		i.startCopy(w, s.src, !same)
	}
	if shared != nil {
		go func() {
			i.outputs.Wait()
			shared.Close()
		}()
	}
	return nil
}

func (i *IO) startCopy(dst io.WriteCloser, src io.Reader, closeDst bool) {
	i.outputs.Add(1)
	go func() {
		defer i.outputs.Done()
		buf := getBuf()
		defer putBuf(buf)
		_, _ = io.CopyBuffer(dst, src, *buf)
		if closeDst {
			dst.Close()
		}
	}()
}

func (i *IO) startStdin() {
	src, dst := i.stdinSrc, i.stdinDst
	done := make(chan struct{})
	i.stdinDone = done
	go func() {
		defer close(done)
		buf := getBuf()
		defer putBuf(buf)
		_, _ = io.CopyBuffer(dst, src, *buf)
		// The FIFO reaches EOF only after CloseStdin dropped the shim's
		// write side and every client closed theirs: EOF for the process.
		// A terminal stays open (closing it would hang the process up);
		// CloseStdin sends it ^D.
		if !i.cfg.Terminal {
			_ = dst.Close()
		}
	}()
}

// stdinDrainBound bounds how long CloseStdin lets what a client wrote to
// stdin flow before it cuts stdin off (a client still holding the FIFO open
// would otherwise keep it open).
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
	// Hold a read side too, so the process never takes SIGPIPE while the
	// reader (containerd) restarts; we never read from it.
	r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open stdio fifo %s: %w", path, err)
	}
	return &keepaliveWriter{WriteCloser: w, keep: r}, nil
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

type keepaliveWriter struct {
	io.WriteCloser
	keep io.Closer
	once sync.Once
}

func (k *keepaliveWriter) Close() error {
	var err error
	k.once.Do(func() {
		err = errors.Join(k.WriteCloser.Close(), k.keep.Close())
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
// succeeded. In terminal mode it receives the master (bounded) and starts
// copying; in pipe mode it does nothing.
func (i *IO) Started(ctx context.Context) error {
	if i.sock == nil {
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
	i.con, i.ec = r.con, ec
	if i.stdinSrc != nil {
		i.stdinDst = nopWriteCloser{ec}
		i.startStdin()
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	return i.startOutputs(octx, ec, nil)
}

// nullOutputs points the streams a runc.IO leaves unset at /dev/null.
type nullOutputs struct {
	runc.IO
	devNull *os.File
}

func (n *nullOutputs) Set(cmd *exec.Cmd) {
	n.IO.Set(cmd)
	if cmd.Stdout == nil {
		cmd.Stdout = n.devNull
	}
	if cmd.Stderr == nil {
		cmd.Stderr = n.devNull
	}
}

func (n *nullOutputs) CloseAfterStart() error {
	err := n.devNull.Close()
	if c, ok := n.IO.(runc.StartCloser); ok {
		err = errors.Join(err, c.CloseAfterStart())
	}
	return err
}

func (n *nullOutputs) Close() error {
	n.devNull.Close()
	return n.IO.Close()
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// Resize sets the terminal size; it fails without a terminal.
func (i *IO) Resize(width, height uint32) error {
	if i.con == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return i.con.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// CloseStdin closes the process's stdin so that it reads EOF. For a terminal
// it sends the EOF character. It is safe to call more than once.
func (i *IO) CloseStdin() error {
	return i.closeStdin(true)
}

// closeStdin ends the process's stdin; with drain, what clients wrote is
// delivered first (bounded by stdinDrainBound).
func (i *IO) closeStdin(drain bool) error {
	var err error
	i.stdinOnce.Do(func() {
		// Drop the shim's write side: once every client has closed
		// theirs, the copy loop reads what is left, then EOF.
		if i.stdinKeep != nil {
			_ = i.stdinKeep.Close()
		}
		if !drain && i.stdinSrc != nil {
			_ = i.stdinSrc.Close()
		}
		if i.stdinDone != nil {
			t := time.NewTimer(stdinDrainBound)
			select {
			case <-i.stdinDone:
			case <-t.C:
				// A client still holds the FIFO: cut stdin off.
				_ = i.stdinSrc.Close()
				<-i.stdinDone
			}
			t.Stop()
		}
		if i.stdinSrc != nil {
			_ = i.stdinSrc.Close()
		}
		if i.cfg.Terminal {
			if i.ec != nil {
				_, err = i.ec.Write([]byte{4}) // ^D: EOF in canonical mode
			}
		} else if i.pipe != nil {
			if w := i.pipe.Stdin(); w != nil {
				if cerr := w.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
					err = cerr
				}
			}
		}
	})
	return err
}

// DrainBound is how long output may keep flowing after the process has
// exited. A background child that inherited stdout (`sleep 1000 &`) keeps the
// pipe open forever; past this bound the shim stops copying so that Wait and
// Delete return.
const DrainBound = 2 * time.Second

// Drain is called once the process has exited. It waits until the output
// copy loops have ended or bound has passed, then closes the process side so
// that they end. It reports whether everything was copied.
func (i *IO) Drain(bound time.Duration) bool {
	if i.ec != nil {
		// The terminal's reader keeps waiting through hang-ups until it is
		// shut down; what is buffered is still read.
		_ = i.ec.Shutdown(i.opts.Consoles.remove)
	}
	done := make(chan struct{})
	go func() {
		i.outputs.Wait()
		close(done)
	}()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	}
	// Closing the process side ends a loop blocked reading it; closing the
	// targets ends one blocked writing to a reader that went away.
	i.closeProcessSide()
	t.Reset(time.Second)
	select {
	case <-done:
	case <-t.C:
		i.closeTargets()
		<-done
	}
	return false
}

func (i *IO) closeProcessSide() error {
	var err error
	if i.pipe != nil {
		err = i.pipe.Close()
		if errors.Is(err, os.ErrClosed) {
			// The process's ends were closed after it started.
			err = nil
		}
	}
	if i.con != nil {
		err = errors.Join(err, i.con.Close())
		i.con = nil
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
		err = errors.Join(err, c.Close())
	}
	return err
}

// Close closes the pipes or terminal and every target IO opened; the copy
// loops end and a binary logger sees EOF.
func (i *IO) Close() error {
	i.closeStdin(false)
	err := i.closeProcessSide()
	if i.sock != nil {
		err = errors.Join(err, i.sock.Close())
		i.sock = nil
	}
	err = errors.Join(err, i.closeTargets())
	if i.logger != nil {
		err = errors.Join(err, i.logger.close())
	}
	return err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }
