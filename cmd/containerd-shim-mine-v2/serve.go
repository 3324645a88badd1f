package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/internal/replyhold"
	"github.com/mineshim/mine/pkg/process"
	"github.com/mineshim/mine/pkg/sandbox"
	"github.com/mineshim/mine/pkg/stdio"
	"github.com/mineshim/mine/pkg/task"
)

// Bounds of the daemon's own lifecycle.
const (
	logOpenTimeout  = 5 * time.Second
	shutdownTimeout = 5 * time.Second
	// orphanTimeout is how long a shim with no container and no call
	// waits before it exits on its own (containerd calls Create right
	// after start, and Shutdown after the last Delete).
	orphanTimeout     = 10 * time.Second
	idleCheckInterval = 2 * time.Second
)

// daemon is the serving shim: what setup builds, run uses and teardown
// releases.
type daemon struct {
	bundle string
	ctx    context.Context
	reaper *process.Reaper
	svc    *task.Service
	sb     *sandbox.Service
	pub    *task.Publisher
	server *server
	trim   *trimmer
	state  *stateWatch
	// socket and address are the socket start bound and the address file it
	// wrote, removed at the end only while they are still ours.
	socket, address ownedFile
	done            chan struct{} // closed by the Shutdown call
	serveErr        chan error    // the ttrpc server's end
	// sigs (SIGTERM, SIGINT) and dump (SIGUSR1) are notified from the start
	// of setup: a signal that came before run would otherwise take its
	// default action, which for SIGUSR1 is to kill the shim.
	sigs, dump chan os.Signal
	// closers release what setup acquired, in reverse order.
	closers []func()
}

// serve is the daemon: it serves the Task API on the socket that start
// handed over (fd 3) until Shutdown, then exits.
func serve(f flags) error {
	if os.Getenv(envDaemon) == "" {
		return errors.New("no action given (start, delete) and not launched as daemon")
	}
	ready := os.NewFile(readyFD, "ready")
	d, err := setup(f)
	if err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		ready.Close()
		return err
	}
	fmt.Fprintln(ready, "ok")
	ready.Close()
	grace := time.Duration(0)
	if d.run() {
		grace = drainGrace
	}
	return d.teardown(grace)
}

// setup makes the daemon: subreaper, OOM score, log, listener, runtime,
// Task API service and ttrpc server, serving once it returns. On error,
// what it acquired is released.
func setup(f flags) (_ *daemon, retErr error) {
	d := &daemon{
		done:     make(chan struct{}),
		serveErr: make(chan error, 1),
		sigs:     make(chan os.Signal, 1),
		dump:     make(chan os.Signal, 1),
	}
	signal.Notify(d.sigs, unix.SIGTERM, unix.SIGINT)
	signal.Notify(d.dump, unix.SIGUSR1)
	signal.Ignore(unix.SIGPIPE)
	defer func() {
		if retErr != nil {
			d.release()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	d.closers = append(d.closers, cancel)

	d.reaper = process.NewReaper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	go d.reaper.Run(ctx)
	// go-runc's package-level monitor: every runc invocation is reaped by
	// our loop, which also reaps the containers' processes.
	runc.Monitor = d.reaper

	if err := adjustOOMScore(); err != nil {
		return nil, err
	}
	bundle, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	d.bundle = bundle
	logOut := openLog(ctx, bundle)
	d.closers = append(d.closers, func() { logOut.Close() })
	log.L.Logger.SetOutput(logOut)
	_ = log.SetFormat(log.TextFormat)
	if f.debug {
		_ = log.SetLevel("debug")
	}
	d.ctx = log.WithLogger(ctx, log.G(ctx).WithField("runtime", "io.containerd.mine.v2").WithField("pid", os.Getpid()))

	lf := os.NewFile(listenFD, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return nil, fmt.Errorf("inherited listener: %w", err)
	}
	// Closed by the server once it serves; by release if setup fails.
	d.closers = append(d.closers, func() { l.Close() })
	// start bound the socket and wrote the address file before it launched
	// us, and no other shim replaces a socket that accepts connections: what
	// the paths name now is ours.
	if d.socket, err = own(l.Addr().String()); err != nil {
		return nil, fmt.Errorf("shim socket: %w", err)
	}
	if d.address, err = own(filepath.Join(bundle, addressFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("address file: %w", err)
	}
	if d.state, err = newStateWatch(bundle); err != nil {
		return nil, err
	}

	rt, err := process.LoadRuntime(bundle, f.namespace)
	if err != nil {
		return nil, err
	}
	if rt.ShimCgroup != "" {
		if err := process.JoinCgroup(rt.ShimCgroup, os.Getpid()); err != nil {
			return nil, fmt.Errorf("shim cgroup: %w", err)
		}
	}
	consoles := stdio.NewConsoles()
	d.closers = append(d.closers, func() { consoles.Close() })
	d.pub = task.NewPublisher(os.Getenv("TTRPC_ADDRESS"))
	// The pod's sandbox, when containerd asks this shim for one (CRI's
	// sandboxer "shim"): it keeps the shim up until ShutdownSandbox.
	d.sb = sandbox.New(sandbox.Config{
		Reaper:   d.reaper,
		Members:  func() int { return d.svc.Count() },
		Shutdown: func() { _, _ = d.svc.Shutdown(ctx, &taskAPI.ShutdownRequest{}) },
	})
	d.closers = append(d.closers, func() { d.sb.Close() })
	d.svc, err = task.New(task.Config{
		Namespace: f.namespace,
		Version:   version(),
		Reaper:    d.reaper,
		Consoles:  consoles,
		Events:    d.pub,
		Runtime:   rt,
		Shutdown:  func() { close(d.done) },

		BeforeCreate: d.sb.PrepareMember,
		KeepAlive:    d.sb.Alive,
	})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() {
		if err := d.svc.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("close the task service")
		}
	})
	d.trim = newTrimmer()
	d.closers = append(d.closers, d.trim.stop)
	d.server, err = newServer(l, ttrpc.WithChainUnaryServerInterceptor(d.trim.interceptor, d.state.interceptor))
	if err != nil {
		return nil, err
	}
	d.svc.RegisterTTRPC(d.server.Server)
	d.svc.RegisterTTRPCv2(d.server.Server)
	d.sb.RegisterTTRPC(d.server.Server)
	go func() { d.serveErr <- d.server.serve(ctx) }()
	return d, nil
}

// run serves until Shutdown, a signal, the server's failure, or until the
// shim is forgotten: no container and no call for orphanTimeout, or every
// state directory it serves removed. It reports whether a Shutdown call
// ended it, whose caller waits for the answer.
func (d *daemon) run() (shutdownCall bool) {
	ctx := d.ctx
	idle := time.NewTicker(idleCheckInterval)
	defer idle.Stop()
	for {
		select {
		case <-idle.C:
			// A shim that serves nothing and is called by no one has been
			// forgotten: containerd died between start and Create, or lost
			// the bundle. Without this it would live forever.
			if idle := d.trim.idleFor(); d.svc.Count() == 0 && idle > orphanTimeout {
				if !d.sb.Alive() {
					log.G(ctx).WithField("idle", idle.String()).Warn("no container and no caller; exiting")
					return false
				}
				if d.sb.Abandoned(idle) {
					log.G(ctx).WithField("idle", idle.String()).Warn("sandbox created, never started and given up by its caller; exiting")
					return false
				}
			}
			// Nobody can reach a shim whose state is gone: its manager
			// deleted the container, or gave up on this shim.
			if d.state.gone() {
				log.G(ctx).WithField("containers", d.svc.Count()).Warn("state directory removed; exiting")
				return false
			}
		case <-d.done:
			log.G(ctx).Info("shutdown requested")
			return true
		case s := <-d.sigs:
			log.G(ctx).WithField("signal", s.String()).Info("shutting down on signal")
			return false
		case err := <-d.serveErr:
			log.G(ctx).WithError(err).Error("ttrpc server failed")
			return false
		case <-d.dump:
			if err := dumpMemory(filepath.Join(d.bundle, memoryFile)); err != nil {
				log.G(ctx).WithError(err).Warn("dump memory")
			}
			if err := dumpStacks(filepath.Join(d.bundle, stacksFile)); err != nil {
				log.G(ctx).WithError(err).Warn("dump stacks")
			}
		}
	}
}

// teardown stops accepting; after a Shutdown call (grace > 0) it waits
// for the calls in flight (that Shutdown among them) to be answered and
// lets the clients hang up for up to grace after the last answer; it stops
// the server, drains the events, removes the socket and address file if
// they are still ours, and releases the rest.
func (d *daemon) teardown(grace time.Duration) error {
	defer d.release()
	// A container that joins the group from now on gets a shim of its own:
	// start replaces a socket that refuses connections.
	open, serr := d.server.stop(grace, shutdownTimeout)
	if open > 0 && grace > 0 {
		log.G(d.ctx).WithField("connections", open).Warn("clients still connected after the drain; closing their connections")
	}
	pctx, pcancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer pcancel()
	perr := d.pub.Close(pctx)
	// A new shim for the same container may have bound the same path by
	// now: only what this shim created is removed.
	if err := d.socket.remove(); err != nil {
		log.G(d.ctx).WithError(err).Warn("remove socket")
	}
	if err := d.address.remove(); err != nil {
		log.G(d.ctx).WithError(err).Warn("remove address file")
	}
	return errors.Join(serr, perr)
}

// release runs the closers of setup, last acquired first.
func (d *daemon) release() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// stacksFile is written in the daemon's directory on SIGUSR1: the goroutine
// count on its first line ("goroutines N"), then every goroutine's stack.
const stacksFile = "shim-stacks.txt"

// dumpStacks writes stacksFile whole under a temporary name and renames it,
// so that a reader never sees part of it. Its buffer starts small and
// doubles until the dump fits: a dump is garbage the moment it is written,
// and a large buffer (it was 1 MiB) stays in the shim's private memory as
// free heap pages until the runtime gives them back, which an idle shim's
// runtime does not do before its next collections (0.8 MiB more Pss_Anon
// measured in a group shim of 10 containers after one dump).
func dumpStacks(path string) error {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "goroutines %d\n\n", runtime.NumGoroutine())
	if err == nil {
		_, err = f.Write(buf)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// memoryFile is written beside stacksFile on SIGUSR1 (before it: the stacks
// file appearing means both are complete): the Go runtime's memory classes
// and GC figures and its processors, one "name value" line each
// (runtime/metrics names), to tell heap, stacks and runtime metadata apart
// in the shim's private memory; then the replies replyhold could not
// hold back (each may have left a ttrpc stream recorded).
const memoryFile = "shim-memory.txt"

func dumpMemory(path string) error {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") || strings.HasPrefix(d.Name, "/gc/") ||
			d.Name == "/sched/gomaxprocs:threads" || d.Name == "/sched/goroutines:goroutines" {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	var out []byte
	for _, s := range samples {
		switch s.Value.Kind() {
		case metrics.KindUint64:
			out = fmt.Appendf(out, "%s %d\n", s.Name, s.Value.Uint64())
		case metrics.KindFloat64:
			out = fmt.Appendf(out, "%s %g\n", s.Name, s.Value.Float64())
		}
	}
	out = fmt.Appendf(out, "ttrpc-unheld-replies %d\n", replyhold.Unheld())
	return os.WriteFile(path, out, 0o600)
}

// adjustOOMScore makes the shim a slightly better OOM victim than the
// process that started it (containerd, minimgr), so that that one survives:
// its score + 1, capped. The score is read from the daemon itself, which
// inherited it through start: start, the daemon's parent, answers and exits
// at once, so its /proc entry may be gone by now (reading it failed the
// daemon's setup when start had already been reaped).
func adjustOOMScore() error {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return fmt.Errorf("read oom_score_adj: %w", err)
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("parse oom_score_adj: %w", err)
	}
	score = min(score+1, 1000)
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(score)), 0); err != nil {
		return fmt.Errorf("set oom_score_adj: %w", err)
	}
	return nil
}

// openLog opens the bundle's `log` FIFO that containerd reads the shim's log
// from; a regular `log` file is appended to; without either, logs go nowhere.
func openLog(ctx context.Context, bundle string) io.WriteCloser {
	path := filepath.Join(bundle, "log")
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return nopCloser{io.Discard}
	case st.Mode()&os.ModeNamedPipe != 0:
		octx, cancel := context.WithTimeout(ctx, logOpenTimeout)
		defer cancel()
		w, err := fifo.OpenFifo(octx, path, unix.O_WRONLY, 0)
		if err != nil {
			return nopCloser{io.Discard}
		}
		return w
	case st.Mode().IsRegular():
		w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nopCloser{io.Discard}
		}
		return w
	}
	return nopCloser{io.Discard}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
