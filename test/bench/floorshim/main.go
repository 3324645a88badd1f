package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path"
	"runtime/debug"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	"github.com/mineshim/mine/pkg/cgroup"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "floorshim: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "unix socket to serve on")
	pid := flag.Int("pid", 0, "process whose cgroup Stats reads")
	collect := flag.Bool("collect", true, "force a collection after every call")
	runcRoot := flag.String("runc-root", "", "runc's state directory of -container")
	container := flag.String("container", "", "container to run execs in (none without)")
	flag.Parse()
	if *socket == "" || *pid <= 0 {
		return errors.New("-socket and -pid are required")
	}
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(25) // the mine daemon's setting
	}
	stats, err := cgroup.ForPid(*pid)
	if err != nil {
		return err
	}
	var x *execs
	if *container != "" {
		if x, err = newExecs(*runcRoot, *container); err != nil {
			return err
		}
		defer os.RemoveAll(x.dir)
	}
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	kick := make(chan struct{}, 1)
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(
		func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			if path.Base(info.FullMethod) == "Wait" {
				collectSoon(kick) // it blocks: collect once it is in
			}
			defer collectSoon(kick) // after the reply
			return m(ctx, u)
		}))
	if err != nil {
		return err
	}
	if *collect {
		go collector(kick)
	} else {
		go func() {
			for range kick { // the runtime's own collections only
			}
		}()
	}
	register(srv, stats, x)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// collectSoon asks the collector for a collection.
func collectSoon(kick chan<- struct{}) {
	select {
	case kick <- struct{}{}:
	default: // one is already asked for
	}
}

// collector gives back everything a collection can, shortly after every
// call, once its reply has been written: more CPU than a shim could spend,
// so that nothing the floor holds between calls is garbage or free heap.
func collector(kick <-chan struct{}) {
	for range kick {
		time.Sleep(collectAfter)
		debug.FreeOSMemory()
	}
}

// collectAfter is how long after a call the floor collects.
const collectAfter = 10 * time.Millisecond

// register serves Stats and Wait of the Task API v3, whose messages are
// those of v2 (the v3 Go package would also link the gRPC stubs), and with
// x also Exec, Start, Wait and Delete of exec processes.
func register(srv *ttrpc.Server, stats *cgroup.Stats, x *execs) {
	wait := func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	methods := map[string]ttrpc.Method{
		"Stats": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.StatsRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			m, err := stats.Read()
			if err != nil {
				return nil, errgrpc.ToGRPC(err)
			}
			body, err := cgroup.MarshalAny(m)
			if err != nil {
				return nil, errgrpc.ToGRPC(err)
			}
			return &taskAPI.StatsResponse{Stats: body}, nil
		},
		"Wait": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req taskAPI.WaitRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return wait(ctx)
		},
	}
	if x != nil {
		for name, m := range x.methods(wait) {
			methods[name] = m
		}
	}
	srv.RegisterService("containerd.task.v3.Task", &ttrpc.ServiceDesc{Methods: methods})
}
