package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/internal/unixsock"
	"github.com/mineshim/mine/pkg/process"
	"github.com/mineshim/mine/pkg/sandbox"
)

// deleteTimeout bounds the runtime's part of `delete`. A runtime killed at
// its end still has its output read for half a second (pkg/process), so
// delete answers within about 4 s, inside containerd's 5 s cleanup limit.
const deleteTimeout = 3500 * time.Millisecond

// deleteAction is the `delete` action, run by containerd after every shim's
// end: it removes what is left of the container and reports its exit.
func deleteAction(f flags, stdout, stderr io.Writer) error {
	if f.namespace == "" || f.id == "" {
		return fmt.Errorf("delete needs -namespace and -id: %w", errdefs.ErrInvalidArgument)
	}
	if err := process.ValidateID(f.id); err != nil {
		return err
	}
	bundle := f.bundle
	if bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		bundle = wd
	}
	runc.Monitor = process.DirectMonitor{}
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	exit, err := process.Cleanup(ctx, bundle, f.namespace, f.id)
	if err != nil {
		// Reported as a warning by containerd; the exit still counts.
		fmt.Fprintf(stderr, "%s: cleanup %s: %v\n", shimName, f.id, err)
	}
	// A sandbox's bundle may still hold the pod's /dev/shm mount.
	if serr := sandbox.Cleanup(bundle); serr != nil {
		fmt.Fprintf(stderr, "%s: cleanup %s: %v\n", shimName, f.id, serr)
	}
	removeDeadSocket(bundle)
	out, err := proto.Marshal(&taskAPI.DeleteResponse{
		Pid:        uint32(exit.Pid),
		ExitStatus: uint32(exit.Status),
		ExitedAt:   timestamppb.New(exit.ExitedAt),
	})
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// removeDeadSocket removes the socket named in the bundle's address file
// when no shim answers on it any more (the shim was killed). A socket a
// living shim serves (a group's) is left alone, and so is one a new shim
// bound at the same path after the dead one was found dead.
func removeDeadSocket(bundle string) {
	data, err := os.ReadFile(filepath.Join(bundle, addressFile))
	if err != nil {
		return
	}
	path, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "unix://")
	if !ok || !filepath.IsAbs(path) {
		return
	}
	dead, err := own(path)
	if err != nil {
		return
	}
	if unixsock.Dead(path) {
		_ = dead.remove()
	}
}
