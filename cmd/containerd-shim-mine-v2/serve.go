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
	"strconv"
	"strings"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

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

// serve is the daemon: it serves the Task API on the socket that start
// handed over (fd 3) until Shutdown, then exits.
func serve(f flags) error {
	if os.Getenv(envDaemon) == "" {
		return errors.New("no action given (start, delete) and not launched as daemon")
	}
	ready := os.NewFile(readyFD, "ready")
	fail := func(err error) error {
		if ready != nil {
			fmt.Fprintf(ready, "%v\n", err)
			ready.Close()
		}
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	reaper := process.NewReaper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail(fmt.Errorf("become child subreaper: %w", err))
	}
	go reaper.Run(ctx)
	// go-runc's package-level monitor: every runc invocation is reaped by
	// our loop, which also reaps the containers' processes.
	runc.Monitor = reaper

	if err := adjustOOMScore(); err != nil {
		return fail(err)
	}
	bundle, err := os.Getwd()
	if err != nil {
		return fail(err)
	}
	logOut := openLog(ctx, bundle)
	defer logOut.Close()
	log.L.Logger.SetOutput(logOut)
	_ = log.SetFormat(log.TextFormat)
	if f.debug {
		_ = log.SetLevel("debug")
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("runtime", "io.containerd.mine.v2").WithField("pid", os.Getpid()))

	lf := os.NewFile(listenFD, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fail(fmt.Errorf("inherited listener: %w", err))
	}
	sockPath := l.Addr().String()

	rt, err := process.LoadRuntime(bundle, f.namespace)
	if err != nil {
		return fail(err)
	}
	if rt.ShimCgroup != "" {
		if err := process.JoinCgroup(rt.ShimCgroup, os.Getpid()); err != nil {
			return fail(fmt.Errorf("shim cgroup: %w", err))
		}
	}
	consoles := stdio.NewConsoles()
	defer consoles.Close()
	pub := task.NewPublisher(os.Getenv("TTRPC_ADDRESS"))
	done := make(chan struct{})
	// The pod's sandbox, when containerd asks this shim for one (CRI's
	// sandboxer "shim"): it keeps the shim up until ShutdownSandbox.
	var svc *task.Service
	sb := sandbox.New(sandbox.Config{
		Reaper:   reaper,
		Members:  func() int { return svc.Count() },
		Shutdown: func() { _, _ = svc.Shutdown(ctx, &taskAPI.ShutdownRequest{}) },
	})
	defer sb.Close()
	svc, err = task.New(task.Config{
		Namespace: f.namespace,
		Version:   version(),
		Reaper:    reaper,
		Consoles:  consoles,
		Events:    pub,
		Runtime:   rt,
		Shutdown:  func() { close(done) },

		BeforeCreate: sb.PrepareMember,
		KeepAlive:    sb.Alive,
	})
	if err != nil {
		return fail(err)
	}
	defer svc.Close()
	trim := newTrimmer()
	defer trim.stop()
	server, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(sb.Handshaker(ttrpc.UnixSocketRequireSameUser())),
		ttrpc.WithUnaryServerInterceptor(trim.interceptor),
	)
	if err != nil {
		return fail(err)
	}
	svc.RegisterTTRPC(server)
	svc.RegisterTTRPCv2(server)
	sb.RegisterTTRPC(server)
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(ctx, l) }()

	fmt.Fprintln(ready, "ok")
	ready.Close()
	ready = nil

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	signal.Ignore(unix.SIGPIPE)
	dump := make(chan os.Signal, 1)
	signal.Notify(dump, unix.SIGUSR1)
	idle := time.NewTicker(idleCheckInterval)
	defer idle.Stop()
wait:
	for {
		select {
		case <-idle.C:
			// A shim that serves nothing and is called by no one has been
			// forgotten: containerd died between start and Create, or lost
			// the bundle. Without this it would live forever.
			if svc.Count() == 0 && !sb.Alive() && trim.idleFor() > orphanTimeout {
				log.G(ctx).WithField("idle", trim.idleFor().String()).Warn("no container and no caller; exiting")
				break wait
			}
		case <-done:
			log.G(ctx).Info("shutdown requested")
			break wait
		case s := <-sigs:
			log.G(ctx).WithField("signal", s.String()).Info("shutting down on signal")
			break wait
		case err := <-serveErr:
			log.G(ctx).WithError(err).Error("ttrpc server failed")
			break wait
		case <-dump:
			if err := dumpStacks(filepath.Join(bundle, stacksFile)); err != nil {
				log.G(ctx).WithError(err).Warn("dump stacks")
			}
		}
	}

	sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer scancel()
	// Reply to the Shutdown call in flight, then stop.
	serr := server.Shutdown(sctx)
	perr := pub.Close(sctx)
	_ = os.Remove(sockPath)
	_ = os.Remove(filepath.Join(bundle, "address"))
	if errors.Is(serr, ttrpc.ErrServerClosed) {
		serr = nil
	}
	return errors.Join(serr, perr)
}

// stacksFile is written in the daemon's directory on SIGUSR1: the goroutine
// count on its first line ("goroutines N"), then every goroutine's stack.
const stacksFile = "shim-stacks.txt"

func dumpStacks(path string) error {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := fmt.Appendf(nil, "goroutines %d\n\n", runtime.NumGoroutine())
	return os.WriteFile(path, append(out, buf...), 0o600)
}

// adjustOOMScore makes the shim a slightly better OOM victim than its parent
// (containerd), so that containerd survives: parent's score + 1, capped.
func adjustOOMScore() error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", os.Getppid()))
	if err != nil {
		return fmt.Errorf("read parent oom_score_adj: %w", err)
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("parse parent oom_score_adj: %w", err)
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
