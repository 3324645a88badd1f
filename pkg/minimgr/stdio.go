package minimgr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
)

// IO says where the standard streams of a process go.
//
// Attached streams go through FIFOs in the state directory: the shim opens
// their other ends. A nil stream is not connected. With a terminal, stdout
// and stderr are one stream (Stdout) and Stderr is unused.
//
// Log sends stdout and stderr to one file in the state directory (the
// shim writes it, file://), for a process that outlives its caller; the
// other fields must then be nil. A terminal cannot be logged this way yet.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Log    bool
}

func (o IO) validate(terminal bool) error {
	if o.Log {
		if o.Stdin != nil || o.Stdout != nil || o.Stderr != nil {
			return fmt.Errorf("a logged process has no attached streams: %w", errdefs.ErrInvalidArgument)
		}
		if terminal {
			return fmt.Errorf("logging a terminal to a file (a detached terminal): %w", errdefs.ErrNotImplemented)
		}
	}
	return nil
}

// stdioPaths are the targets given to the shim.
type stdioPaths struct {
	stdin, stdout, stderr string
	log                   string // the log file, when IO.Log
}

// openTimeout bounds opening our end of a FIFO once the shim has its end.
const openTimeout = 10 * time.Second

// attachment is minimgr's side of one process's FIFOs: the output copy
// loops (owned here, ended by EOF or close) and the stdin copy, started
// once the shim has opened the stdin FIFO.
type attachment struct {
	files []string // FIFOs and logs to remove with the process

	stdinPath string
	stdinSrc  io.Reader

	outputs sync.WaitGroup
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

// openIO makes the FIFOs (or names the log file) of one process and starts
// copying its outputs to the caller's writers. Our read ends are opened
// before the shim opens its write ends (the shim waits for a reader).
func openIO(dir, execID string, o IO, terminal bool) (stdioPaths, *attachment, error) {
	var p stdioPaths
	a := &attachment{}
	base := filepath.Join(dir, ioDir, ioName(execID))
	if err := os.MkdirAll(filepath.Dir(base), 0o700); err != nil {
		return p, nil, err
	}
	if o.Log {
		p.log = base + ".log"
		p.stdout = "file://" + p.log
		p.stderr = p.stdout
		a.files = append(a.files, p.log)
		return p, a, nil
	}
	fail := func(err error) (stdioPaths, *attachment, error) {
		a.close()
		a.removeFiles()
		return stdioPaths{}, nil, err
	}
	if o.Stdin != nil {
		p.stdin = base + ".stdin"
		if err := mkfifo(p.stdin); err != nil {
			return fail(err)
		}
		a.files = append(a.files, p.stdin)
		a.stdinPath, a.stdinSrc = p.stdin, o.Stdin
	}
	outs := []struct {
		path *string
		name string
		w    io.Writer
	}{{&p.stdout, ".stdout", o.Stdout}, {&p.stderr, ".stderr", o.Stderr}}
	if terminal {
		outs = outs[:1]
	}
	for _, s := range outs {
		if s.w == nil {
			continue
		}
		*s.path = base + s.name
		if err := mkfifo(*s.path); err != nil {
			return fail(err)
		}
		a.files = append(a.files, *s.path)
		// Non-blocking: returns at once, reads wait for the shim's end.
		r, err := fifo.OpenFifo(context.Background(), *s.path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", *s.path, err))
		}
		a.track(r)
		a.outputs.Add(1)
		go func(w io.Writer, r io.ReadCloser) {
			defer a.outputs.Done()
			_, _ = io.Copy(w, r)
			r.Close()
		}(s.w, r)
	}
	return p, a, nil
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

// connectStdin opens our end of the stdin FIFO, once the shim holds its
// read end, and copies the caller's reader into it. At EOF of the reader it
// closes the FIFO and calls eof, which asks the shim to close the process's
// stdin (CloseIO): the shim keeps the FIFO open across clients that detach,
// so closing our end alone is not EOF for the process. The copy goroutine
// ends when the reader returns (the caller owns the reader).
func (a *attachment) connectStdin(ctx context.Context, eof func()) error {
	if a == nil || a.stdinSrc == nil {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	w, err := fifo.OpenFifo(octx, a.stdinPath, syscall.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", a.stdinPath, err)
	}
	a.track(w)
	src := a.stdinSrc
	go func() {
		_, _ = io.Copy(w, src)
		w.Close()
		if eof != nil {
			eof()
		}
	}()
	return nil
}

// waitOutput waits until the output copies have ended (the shim closed its
// ends after the process exited) or bound has passed; then it closes our
// ends. It reports whether all output arrived.
func (a *attachment) waitOutput(bound time.Duration) bool {
	if a == nil {
		return true
	}
	done := make(chan struct{})
	go func() {
		a.outputs.Wait()
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
	// Closing our read ends ends copies still reading; one blocked on
	// the caller's writer ends when that writer returns.
	a.close()
	return ok
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
