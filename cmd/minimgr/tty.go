package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// terminal is minimgr's own terminal while an attached process has one:
// raw mode until restore.
type terminal struct {
	con  console.Console // nil: no terminal asked for, or stdin is not one
	once sync.Once
}

// openTerminal puts stdin's terminal in raw mode when tty is set. A stdin
// that is not a terminal is refused, as docker refuses it: nothing could
// end the process's input (a terminal has no end of file) or show it.
func openTerminal(tty bool, stdin io.Reader) (*terminal, error) {
	t := &terminal{}
	if !tty {
		return t, nil
	}
	errNoTerminal := fmt.Errorf("the input device is not a terminal: -t needs one (run with -d -t and attach later, or without -t): %w", errdefs.ErrInvalidArgument)
	f, ok := stdin.(*os.File)
	if !ok {
		return nil, errNoTerminal
	}
	con, err := console.ConsoleFromFile(f)
	if err != nil {
		return nil, errNoTerminal
	}
	if err := con.SetRaw(); err != nil {
		return nil, err
	}
	t.con = con
	return t, nil
}

func (t *terminal) restore() {
	if t == nil || t.con == nil {
		return
	}
	t.once.Do(func() { _ = t.con.Reset() })
}

// size returns the terminal's size; ok is false without a terminal.
func (t *terminal) size() (width, height uint32, ok bool) {
	if t == nil || t.con == nil {
		return 0, 0, false
	}
	ws, err := t.con.Size()
	if err != nil || ws.Width == 0 || ws.Height == 0 {
		return 0, 0, false
	}
	return uint32(ws.Width), uint32(ws.Height), true
}

// forwardedSignals are relayed to the attached process. SIGCHLD, SIGPIPE,
// SIGURG (the Go runtime's) and SIGWINCH (a resize) are not.
var forwardedSignals = []os.Signal{
	unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGCONT,
}

// forwarder relays signals to an attached process and, with a terminal,
// window size changes as ResizePty. Signals that arrive before the process
// started are held and sent once it has.
type forwarder struct {
	sigs    chan os.Signal
	startCh chanOnce
	done    chan struct{}
	wg      sync.WaitGroup
}

type chanOnce struct {
	ch   chan struct{}
	once sync.Once
}

func (c *chanOnce) close() { c.once.Do(func() { close(c.ch) }) }

func forward(ctx context.Context, t *terminal,
	kill func(context.Context, syscall.Signal) error,
	resize func(context.Context, uint32, uint32) error,
) *forwarder {
	f := &forwarder{
		sigs:    make(chan os.Signal, 16),
		startCh: chanOnce{ch: make(chan struct{})},
		done:    make(chan struct{}),
	}
	watch := append([]os.Signal(nil), forwardedSignals...)
	if t.con != nil {
		watch = append(watch, unix.SIGWINCH)
	}
	signal.Notify(f.sigs, watch...)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		select {
		case <-f.startCh.ch:
		case <-f.done:
			return
		}
		if w, h, ok := t.size(); ok {
			_ = resize(ctx, w, h)
		}
		for {
			select {
			case <-f.done:
				return
			case s := <-f.sigs:
				sig := s.(syscall.Signal)
				if sig == unix.SIGWINCH {
					if w, h, ok := t.size(); ok {
						_ = resize(ctx, w, h)
					}
					continue
				}
				_ = kill(ctx, sig)
			}
		}
	}()
	return f
}

// started says that the process runs: held signals go out now.
func (f *forwarder) started() { f.startCh.close() }

// stop ends forwarding; the signals' default actions return.
func (f *forwarder) stop() {
	signal.Stop(f.sigs)
	close(f.done)
	f.wg.Wait()
}
