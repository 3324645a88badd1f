package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/mineshim/mine/internal/unixsock"
	"github.com/mineshim/mine/pkg/process"
)

// Inherited descriptors of the daemon: the listening socket, and the write
// end of a pipe on which it reports that it serves (or why it cannot).
const (
	listenFD = 3
	readyFD  = 4
	// envDaemon marks the daemon invocation, so that a stray run without
	// action is refused instead of serving on nothing.
	envDaemon = "MINE_SHIM_DAEMON"
)

// start is the `start` action: it reads the bootstrap input, launches the
// daemon with a listening socket and answers containerd with its address.
func start(f flags, stdin io.Reader, stdout io.Writer) error {
	if f.namespace == "" || f.id == "" {
		return fmt.Errorf("start needs -namespace and -id: %w", errdefs.ErrInvalidArgument)
	}
	if err := process.ValidateID(f.id); err != nil {
		return err
	}
	input, err := io.ReadAll(io.LimitReader(stdin, maxBootstrapInput))
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	req, err := parseStart(input, f.id, f.namespace)
	if err != nil {
		return err
	}
	bundle, err := os.Getwd()
	if err != nil {
		return err
	}
	// Containers of one group (a pod) share one shim: its socket is named
	// after the group, so a running group shim is found and reused.
	path := socketPath(req.socketDir(), req.grpcAddress(f.address), f.namespace, shimGroup(bundle, f.id), false)
	address := "unix://" + path

	l, err := listen(path)
	if errors.Is(err, syscall.EADDRINUSE) {
		// A shim for this id already serves there (containerd retried, or
		// this container joins its group).
		if err := writeAddress(bundle, address); err != nil {
			return err
		}
		return reply(stdout, req, address)
	}
	if err != nil {
		return err
	}
	defer l.Close()
	sock, err := own(path)
	if err != nil {
		_ = os.Remove(path)
		return err
	}

	// The runtime defaults of this shim, read by the daemon.
	if err := process.SaveRuntime(bundle, runtimeFromOptions(req.options, f.namespace)); err != nil {
		_ = sock.remove()
		return fmt.Errorf("save runtime options: %w", err)
	}
	// Written anew (an old shim ending may still own the file there) before
	// the daemon starts, which records it as its own and removes it when it
	// ends, unless a newer shim has replaced it by then.
	addrPath := filepath.Join(bundle, addressFile)
	if err := writeFileNew(addrPath, []byte(address), 0o600); err != nil {
		_ = sock.remove()
		return err
	}
	addr, err := own(addrPath)
	if err != nil {
		_ = sock.remove()
		return err
	}
	if err := launch(f, l, bundle); err != nil {
		_ = sock.remove()
		_ = addr.remove()
		return err
	}
	return reply(stdout, req, address)
}

// Annotations that put a container in a group served by one shim: the
// explicit group, or the pod (CRI's sandbox ID).
var groupAnnotations = []string{"io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"}

// shimGroup returns the group of the container of bundle, or its own id.
func shimGroup(bundle, id string) string {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return id
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(data, &spec) != nil {
		return id
	}
	for _, key := range groupAnnotations {
		if g := spec.Annotations[key]; g != "" && process.ValidateID(g) == nil {
			return g
		}
	}
	return id
}

// addressFile is the bundle file naming the shim's socket, through which
// containerd < 2.0 reconnects after a restart.
const addressFile = "address"

// writeAddress writes the address file of bundle for a shim that already
// serves: as a new file, unless it already names address (then the shim
// wrote it, owns it, and removes it when it ends).
func writeAddress(bundle, address string) error {
	path := filepath.Join(bundle, addressFile)
	if data, err := os.ReadFile(path); err == nil && string(data) == address {
		return nil
	}
	return writeFileNew(path, []byte(address), 0o600)
}

func reply(stdout io.Writer, req startRequest, address string) error {
	out, err := answerStart(req, address)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// afterAddrInUse runs between a bind that found the path taken and the look
// at what holds it: a test's way into that window.
var afterAddrInUse = func(string) {}

// listen creates the unix socket, 0600 in a 0700 directory. A stale socket
// nobody answers on is replaced; a socket a live shim serves is not, and
// listen returns EADDRINUSE.
func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	for tries := 0; errors.Is(err, syscall.EADDRINUSE) && tries < 3; tries++ {
		afterAddrInUse(path)
		stale, serr := lstatID(path)
		if errors.Is(serr, os.ErrNotExist) {
			// The shim that served it has ended and removed it since
			// the bind: bind again (else start would announce a socket
			// that no longer exists).
			l, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			continue
		}
		if serr != nil {
			return nil, err
		}
		if !unixsock.Dead(path) {
			return nil, err
		}
		// Only the socket found dead: another start may have replaced it
		// with a live one since.
		if rerr := (ownedFile{path: path, id: stale}).remove(); rerr != nil {
			return nil, err
		}
		l, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // the daemon owns the socket from now on
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		os.Remove(path)
		return nil, err
	}
	return l, nil
}

// launch starts the daemon detached (own session, no stdio of ours).
func launch(f flags, l *net.UnixListener, bundle string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	lf, err := l.File()
	if err != nil {
		return err
	}
	defer lf.Close()
	rr, rw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer rr.Close()

	args := []string{"-namespace", f.namespace, "-id", f.id, "-address", f.address}
	if f.publishBinary != "" {
		args = append(args, "-publish-binary", f.publishBinary)
	}
	if f.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), envDaemon+"=1")
	cmd.ExtraFiles = []*os.File{lf, rw} // fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		rw.Close()
		return fmt.Errorf("launch shim daemon: %w", err)
	}
	rw.Close()
	// The daemon outlives us; nothing waits for it but its new parent.
	_ = cmd.Process.Release()

	// Answer at once: the socket already listens, and containerd's first
	// calls wait in its backlog until the daemon serves. Waiting for the
	// daemon's report made `start` about twice as slow as runc-v2's
	// (docs/BENCHMARKS.md). A daemon that cannot serve exits, which closes
	// the socket: containerd's first call fails and it cleans up with
	// `delete`. The pipe stays the daemon's fd 4; what the daemon writes to
	// it is not read.
	return nil
}
