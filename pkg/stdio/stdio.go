package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
)

// Config names where a process's standard streams go, as containerd gives
// them: a FIFO path, a binary:// or file:// URI, or "" for none.
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

// Validate checks the targets before anything is opened.
func (c Config) Validate() error {
	for _, p := range []string{c.Stdin, c.Stdout, c.Stderr} {
		if p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err != nil {
			return fmt.Errorf("stdio target %q: %v: %w", p, err, errdefs.ErrInvalidArgument)
		}
		switch u.Scheme {
		case "", "fifo":
		default:
			return fmt.Errorf("stdio scheme %q of %q: %w", u.Scheme, p, errdefs.ErrNotImplemented)
		}
	}
	return nil
}

// openTimeout bounds how long opening a FIFO whose peer never shows up may
// take. containerd opens its side of the FIFOs before it calls Create.
const openTimeout = 10 * time.Second

// IO is the shim's side of one process's stdio: the pipes handed to runc and
// the copy loops between them and the targets. The copy goroutines are owned
// by IO and end when the process side closes, or when Drain's bound expires.
type IO struct {
	cfg  Config
	pipe runc.IO

	stdinOnce sync.Once
	stdin     io.Closer // FIFO read side of stdin; nil without stdin

	mu      sync.Mutex
	closers []io.Closer // guarded by mu: everything IO opened, closed by Close

	outputs sync.WaitGroup // stdout and stderr copy loops
}

// Open creates the process pipes and starts copying between them and cfg's
// targets. ctx bounds only the opening of the targets.
func Open(ctx context.Context, cfg Config) (_ *IO, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Terminal {
		return nil, fmt.Errorf("terminal stdio: %w", errdefs.ErrNotImplemented)
	}
	p, err := runc.NewPipeIO(cfg.UID, cfg.GID, func(o *runc.IOOption) {
		o.OpenStdin = cfg.Stdin != ""
		o.OpenStdout = cfg.Stdout != ""
		o.OpenStderr = cfg.Stderr != ""
	})
	if err != nil {
		return nil, fmt.Errorf("create stdio pipes: %w", err)
	}
	i := &IO{cfg: cfg, pipe: p}
	defer func() {
		if retErr != nil {
			i.Close()
		}
	}()
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()

	if cfg.Stdin != "" {
		// Opened non-blocking: the writer (containerd, or an attaching
		// client) may come later. fifo makes reads wait for it.
		in, err := fifo.OpenFifo(context.WithoutCancel(ctx), fifoPath(cfg.Stdin), syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", cfg.Stdin, err)
		}
		i.track(in)
		i.stdin = in
		w := p.Stdin()
		go func() {
			buf := getBuf()
			defer putBuf(buf)
			_, _ = io.CopyBuffer(w, in, *buf)
			i.CloseStdin()
		}()
	}

	var (
		sameTarget = cfg.Stdout != "" && cfg.Stdout == cfg.Stderr
		stdoutW    io.WriteCloser
	)
	for _, s := range []struct {
		target string
		src    io.ReadCloser
	}{
		{cfg.Stdout, p.Stdout()},
		{cfg.Stderr, p.Stderr()},
	} {
		if s.target == "" {
			continue
		}
		var w io.WriteCloser
		if sameTarget && stdoutW != nil {
			w = stdoutW
		} else {
			w, err = openOutput(octx, s.target)
			if err != nil {
				return nil, err
			}
			i.track(w)
			stdoutW = w
		}
		i.startCopy(w, s.src, !sameTarget)
	}
	if sameTarget {
		// One writer, two loops: close it when both have ended.
		w := stdoutW
		go func() {
			i.outputs.Wait()
			w.Close()
		}()
	}
	return i, nil
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

func openOutput(ctx context.Context, target string) (io.WriteCloser, error) {
	path := fifoPath(target)
	// The write side waits until the reader exists (bounded by ctx).
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdio fifo %s: %w", path, err)
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

// Runc returns the pipes to hand to runc create or runc exec.
func (i *IO) Runc() runc.IO { return i.pipe }

// CloseStdin closes the process's stdin so that it reads EOF. It is safe to
// call more than once and without stdin.
func (i *IO) CloseStdin() error {
	var err error
	i.stdinOnce.Do(func() {
		if w := i.pipe.Stdin(); w != nil {
			err = w.Close()
		}
		if i.stdin != nil {
			_ = i.stdin.Close()
		}
	})
	return err
}

// DrainBound is how long output may keep flowing after the process has
// exited. A background child that inherited stdout (`sleep 1000 &`) keeps the
// pipe open forever; past this bound the shim stops copying so that Wait and
// Delete return.
const DrainBound = 2 * time.Second

// Drain waits until the output copy loops have ended or bound has passed;
// then it closes the process-side pipes so the loops end. It reports whether
// everything was copied.
func (i *IO) Drain(bound time.Duration) bool {
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
	_ = i.pipe.Close()
	t.Reset(time.Second)
	select {
	case <-done:
	case <-t.C:
		i.closeTargets()
		<-done
	}
	return false
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

// Close closes the pipes and every target IO opened. The copy loops end.
func (i *IO) Close() error {
	i.CloseStdin()
	err := i.pipe.Close()
	if errors.Is(err, os.ErrClosed) {
		// The process's ends were closed after it started.
		err = nil
	}
	return errors.Join(err, i.closeTargets())
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }
