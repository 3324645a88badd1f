package minimgr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// IO says where the standard streams of a process go.
//
// Output always goes to the process's log in the state directory, written
// by minimgr itself as the shim's binary:// logger, which never blocks the
// process: without a terminal one JSON Record per line, stdout and stderr
// apart, with the time; with a terminal its raw output, and a mark once it
// has ended. Stdout and Stderr, when set, follow that log while the
// caller is attached: a writer that fails (a reader gone) only ends the
// following, never the process.
//
// Stdin, when set, is copied into a FIFO that the shim reads; OpenStdin
// makes that FIFO without a reader, for clients that attach later. With a
// terminal, stdout and stderr are one stream (Stdout) and Stderr is unused.
//
// DetachKeys, when set, ends the attachment when they come on Stdin: the
// process keeps running, its stdin stays open, Detached reports it.
type IO struct {
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
	OpenStdin  bool
	DetachKeys []byte
	// Log is kept for callers that say "detached": no stream attached.
	Log bool
}

func (o IO) validate(terminal bool) error {
	if o.Log && (o.Stdin != nil || o.Stdout != nil || o.Stderr != nil) {
		return fmt.Errorf("a logged process has no attached streams: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// stdioPaths are the targets given to the shim.
type stdioPaths struct {
	stdin, stdout, stderr string
	log                   string // the log file
}

// attachment is minimgr's side of one process's streams: the stdin copy,
// started once the shim has opened the stdin FIFO, and the loop that
// follows the log into the caller's writers.
type attachment struct {
	files []string // FIFOs and logs to remove with the process

	stdinPath  string
	stdinSrc   io.Reader
	detachKeys []byte

	logPath  string
	terminal bool
	stdout   io.Writer
	stderr   io.Writer

	exited    chan struct{} // closed by waitOutput: the process has exited
	exitOnce  sync.Once
	cancel    context.CancelFunc
	following sync.WaitGroup

	detached   chan struct{}
	detachOnce sync.Once

	mu      sync.Mutex
	closers []io.Closer // guarded by mu
}

// ioName names the stdio files of a process: "init" or "exec-ID".
func ioName(execID string) string {
	if execID == "" {
		return "init"
	}
	return "exec-" + execID
}

// openIO makes the log file and the stdin FIFO of one process and names
// the targets the shim writes to. logger is the binary that logs a
// process without a terminal. Following the log starts with follow.
func openIO(dir, execID string, o IO, terminal bool, logger string) (stdioPaths, *attachment, error) {
	var p stdioPaths
	a := &attachment{terminal: terminal, detachKeys: o.DetachKeys, exited: make(chan struct{}), detached: make(chan struct{})}
	base := filepath.Join(dir, ioDir, ioName(execID))
	if err := os.MkdirAll(filepath.Dir(base), 0o700); err != nil {
		return p, nil, err
	}
	p.log = base + ".log"
	if terminal {
		p.log += terminalSuffix
	}
	// A new, empty log (an exec ID used again starts afresh); the follower
	// opens it before the shim writes.
	os.Remove(base + ".log")
	os.Remove(base + ".log" + terminalSuffix)
	os.Remove(base + ".log" + terminalSuffix + loggingSuffix)
	os.Remove(base + ".log" + terminalSuffix + endSuffix)
	if err := os.WriteFile(p.log, nil, 0o600); err != nil {
		return p, nil, err
	}
	a.files = append(a.files, p.log)
	if terminal {
		a.files = append(a.files, p.log+loggingSuffix, p.log+endSuffix)
		if err := os.WriteFile(p.log+loggingSuffix, nil, 0o600); err != nil {
			a.removeFiles()
			return stdioPaths{}, nil, err
		}
	}
	a.logPath = p.log
	// A terminal too: containerd's runc shim takes a terminal's output
	// to a binary:// logger or a FIFO, not to a file.
	p.stdout = loggerTarget(logger, p.log)
	p.stderr = p.stdout
	if !o.Log {
		a.stdout, a.stderr = o.Stdout, o.Stderr
		if terminal {
			a.stderr = nil
		}
	}
	if o.Stdin != nil || o.OpenStdin {
		p.stdin = base + ".stdin"
		os.Remove(p.stdin)
		if err := mkfifo(p.stdin); err != nil {
			a.removeFiles()
			return stdioPaths{}, nil, err
		}
		a.files = append(a.files, p.stdin)
		a.stdinPath, a.stdinSrc = p.stdin, o.Stdin
	}
	return p, a, nil
}

// follow starts copying the log into the caller's writers, from the start.
func (a *attachment) follow() { a.followFrom(LogOptions{Follow: true}) }

func (a *attachment) followFrom(o LogOptions) {
	if a == nil || (a.stdout == nil && a.stderr == nil) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.following.Go(func() {
		_ = readLog(ctx, a.logPath, a.terminal, o, a.exited, func(r Record) error {
			w := a.stdout
			if r.Stream == StreamStderr {
				w = a.stderr
			}
			if w == nil {
				return nil
			}
			_, err := io.WriteString(w, r.Log)
			return err
		})
	})
}

// Detached is closed when the detach keys came on stdin.
func (a *attachment) Detached() <-chan struct{} {
	if a == nil {
		return nil
	}
	return a.detached
}

func mkfifo(path string) error {
	if err := syscall.Mkfifo(path, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mkfifo %s: %w", path, err)
	}
	return nil
}

func (a *attachment) track(c io.Closer) {
	a.mu.Lock()
	a.closers = append(a.closers, c)
	a.mu.Unlock()
}

// connectStdin opens our end of the stdin FIFO, which the shim holds open
// for reading, and copies the caller's reader into it. At EOF of the reader
// it closes the FIFO and calls eof, which asks the shim to close the
// process's stdin (CloseIO): the shim keeps the FIFO open across clients
// that detach, so closing our end alone is not EOF for the process. The
// detach keys end the copy without eof. The copy goroutine ends when the
// reader returns (the caller owns the reader).
//
// A shim opens its end when it sets up the process, around its answer to
// the call that made it (Create for the init, Start for an exec; mine
// before it, containerd's runc shim in a goroutine that may run a moment
// after it). So no reader within readerWait of that answer means that none
// will come: the shim does not read this stdin (containerd's runc shim
// reads none when the output of a process without a terminal goes to a
// binary:// logger, as minimgr's does), or the process has already ended. The caller's stdin is then left
// unconnected rather than waited for longer, and read only for the detach
// keys.
func (a *attachment) connectStdin(eof func()) error {
	if a == nil || a.stdinSrc == nil {
		return nil
	}
	fd, err := openWriter(a.stdinPath)
	if errors.Is(err, unix.ENXIO) {
		a.watchDetachKeys(a.stdinSrc)
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: a.stdinPath, Err: err}
	}
	// Non-blocking, so writes wait in the runtime's poller.
	w := os.NewFile(uintptr(fd), a.stdinPath)
	a.track(w)
	src := a.stdinSrc
	if len(a.detachKeys) > 0 {
		src = &detachReader{r: src, keys: a.detachKeys}
	}
	go func() {
		_, err := io.Copy(w, src)
		w.Close()
		if errors.Is(err, errDetached) {
			a.detachOnce.Do(func() { close(a.detached) })
			return
		}
		if eof != nil {
			eof()
		}
	}()
	return nil
}

// readerWait bounds the wait for the shim's end of a stdin FIFO (see
// connectStdin).
const readerWait = 500 * time.Millisecond

// openWriter opens the write end of the FIFO at path without blocking,
// trying again while it has no reader, for readerWait at most (then
// ENXIO).
func openWriter(path string) (int, error) {
	deadline := time.Now().Add(readerWait)
	for {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			return fd, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// watchDetachKeys reads r, which goes nowhere, for the detach keys only.
// The goroutine ends when r does (the caller owns it).
func (a *attachment) watchDetachKeys(r io.Reader) {
	if len(a.detachKeys) == 0 {
		return
	}
	go func() {
		_, err := io.Copy(io.Discard, &detachReader{r: r, keys: a.detachKeys})
		if errors.Is(err, errDetached) {
			a.detachOnce.Do(func() { close(a.detached) })
		}
	}()
}

// waitOutput says that the process has exited and waits, at most bound,
// until its output has been copied to the caller; then it stops. It
// reports whether all output arrived.
func (a *attachment) waitOutput(bound time.Duration) bool {
	if a == nil {
		return true
	}
	a.exitOnce.Do(func() { close(a.exited) })
	done := make(chan struct{})
	go func() {
		a.following.Wait()
		close(done)
	}()
	t := time.NewTimer(bound)
	defer t.Stop()
	ok := true
	select {
	case <-done:
	case <-t.C:
		ok = false
	}
	a.stop()
	return ok
}

// stop ends the following of the log and closes the FIFO ends.
func (a *attachment) stop() {
	if a == nil {
		return
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.close()
}

// close closes every FIFO end this attachment opened.
func (a *attachment) close() {
	if a == nil {
		return
	}
	a.mu.Lock()
	cs := a.closers
	a.closers = nil
	a.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

func (a *attachment) removeFiles() {
	if a == nil {
		return
	}
	for _, f := range a.files {
		os.Remove(f)
	}
}

// errDetached ends a stdin copy at the detach keys.
var errDetached = errors.New("detached")

// detachReader passes its reader through until the detach keys come, in
// sequence; then it returns errDetached. The bytes of an incomplete
// sequence are held until it is known not to be the keys.
type detachReader struct {
	r    io.Reader
	keys []byte
	held []byte // a prefix of keys read but not passed on
	out  []byte // bytes to pass on before reading more
	buf  [4096]byte
	done bool
}

func (d *detachReader) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		if d.done {
			return 0, errDetached
		}
		n, err := d.r.Read(d.buf[:])
		for _, b := range d.buf[:n] {
			if b == d.keys[len(d.held)] {
				d.held = append(d.held, b)
				if len(d.held) == len(d.keys) {
					d.done = true
					d.held = nil
					break
				}
				continue
			}
			d.out = append(d.out, d.held...)
			d.held = d.held[:0]
			if b == d.keys[0] {
				d.held = append(d.held, b)
				continue
			}
			d.out = append(d.out, b)
		}
		if err != nil && len(d.out) == 0 && !d.done {
			d.out = append(d.out, d.held...)
			d.held = nil
			if len(d.out) == 0 {
				return 0, err
			}
		}
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// ParseDetachKeys reads docker's notation: a comma-separated list of
// "ctrl-X" (X a letter, @, [, \, ], ^ or _) and single characters.
func ParseDetachKeys(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	var out []byte
	for _, k := range strings.Split(s, ",") {
		switch {
		case len(k) == 1:
			out = append(out, k[0])
		case strings.HasPrefix(strings.ToLower(k), "ctrl-") && len(k) == 6:
			c := k[5]
			switch {
			case c >= 'a' && c <= 'z':
				out = append(out, c-'a'+1)
			case c >= '@' && c <= '_':
				out = append(out, c-'@')
			default:
				return nil, fmt.Errorf("detach key %q: %w", k, errdefs.ErrInvalidArgument)
			}
		default:
			return nil, fmt.Errorf("detach key %q: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return out, nil
}
