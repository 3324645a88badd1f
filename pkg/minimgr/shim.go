package minimgr

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// Bounds of the calls minimgr makes to shims. A shim that does not answer
// within them is taken for dead.
const (
	// startTimeout bounds `shim start`. It answers once its daemon is
	// launched, before the daemon serves.
	startTimeout = 15 * time.Second
	// deleteTimeout bounds `shim delete`. containerd allows it 5 s; minimgr
	// gives a new process on a loaded machine more before it fails a Delete.
	deleteTimeout = 30 * time.Second
	// dialTimeout bounds dialling a shim and its Connect answer. The socket
	// accepts at once, but a shim answers only once it is scheduled: a
	// daemon that `shim start` just launched must first be up, and a loaded
	// machine delays either by seconds.
	dialTimeout = 10 * time.Second
	// shutdownTimeout bounds the Shutdown call (containerd's shim.shutdown).
	shutdownTimeout = 3 * time.Second
	// waitDelay bounds reading a shim command's output after it exited
	// (a child that inherited the pipes).
	waitDelay = 2 * time.Second
)

// maxSunPath is the longest unix socket path the kernel accepts (108
// bytes with the terminating NUL).
const maxSunPath = 107

// fallbackSocketDir holds shim sockets when the state root is too long for
// them (the socket name is a 64-character hash).
const fallbackSocketDir = "/run/minimgr/s"

// socketDir is where the shims of root put their sockets: root/s when the
// paths fit the kernel's limit, else fallbackSocketDir. The shim hashes
// the -address into the socket name, and that address names root, so
// shims of different roots never share a socket path.
func socketDir(root string) string {
	dir := filepath.Join(root, "s")
	if len(dir)+1+2*instanceLen+1+2*sha256.Size > maxSunPath {
		return fallbackSocketDir
	}
	return dir
}

// instanceLen is the size in bytes of the random name of a shim's own
// socket directory.
const instanceLen = 4

// instanceSocketDir is a new directory name under socketDir(root) for the
// socket of one shim. Every shim gets its own: a shim that ends after its
// container's ID was taken again removes its own socket only, never the
// one the next shim of that ID listens on.
func instanceSocketDir(root string) (string, error) {
	return filepath.Join(socketDir(root), randHex(instanceLen)), nil
}

// removeSocket removes the socket of address and its own directory (when
// empty).
func removeSocket(address string) {
	p, ok := strings.CutPrefix(address, "unix://")
	if !ok || p == "" {
		return
	}
	os.Remove(p)
	if dir := filepath.Dir(p); len(filepath.Base(dir)) == 2*instanceLen {
		os.Remove(dir) // the shim's own directory, when empty
	}
}

// shimCommand is one invocation of the shim binary as containerd makes it.
func (m *Manager) shimCommand(ctx context.Context, dir, id string, extra ...string) *exec.Cmd {
	args := []string{"-namespace", m.cfg.Namespace, "-id", id, "-address", m.grpcAddress(), "-publish-binary", m.cfg.PublishBinary}
	if m.cfg.Debug {
		args = append(args, "-debug")
	}
	args = append(args, extra...)
	cmd := exec.CommandContext(ctx, m.cfg.RuntimeBinary, args...)
	cmd.Dir = dir
	cmd.Env = append(filterEnv(os.Environ(), "TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "GOMAXPROCS"),
		"GOMAXPROCS=2",
		"MAX_SHIM_VERSION=3",
		"TTRPC_ADDRESS="+m.EventsAddress(),
		"GRPC_ADDRESS="+m.grpcAddress(),
		"NAMESPACE="+m.cfg.Namespace,
	)
	cmd.WaitDelay = waitDelay
	return cmd
}

func filterEnv(env []string, drop ...string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, d := range drop {
			if strings.HasPrefix(kv, d+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// startShim runs `shim start` in dir with BootstrapParams on stdin and
// returns its BootstrapResult. stderr is kept apart and shown on failure.
func (m *Manager) startShim(ctx context.Context, dir, id string) (*bootapi.BootstrapResult, error) {
	sockDir, err := instanceSocketDir(m.cfg.Root)
	if err != nil {
		return nil, err
	}
	params := &bootapi.BootstrapParams{
		InstanceID:             id,
		Namespace:              m.cfg.Namespace,
		ContainerdTtrpcAddress: m.EventsAddress(),
		ContainerdGrpcAddress:  m.grpcAddress(),
		ContainerdBinary:       m.cfg.PublishBinary,
		SocketDir:              &sockDir,
	}
	if m.cfg.Debug {
		params.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	if m.cfg.RuncOptions != nil {
		if err := params.AddExtension(m.cfg.RuncOptions); err != nil {
			return nil, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	in, err := proto.Marshal(params)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := m.shimCommand(ctx, dir, id, "start")
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, shimCmdError(ctx, "shim start", err, stderr.Bytes())
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(stdout.Bytes(), &res); err != nil || res.Address == "" {
		return nil, fmt.Errorf("shim start: unreadable answer %q: %w", stdout.Bytes(), errdefs.ErrUnknown)
	}
	if res.Protocol != "ttrpc" || res.Version != 3 {
		return nil, fmt.Errorf("shim start: %s Task API v%d: only ttrpc v3 is spoken: %w", res.Protocol, res.Version, errdefs.ErrNotImplemented)
	}
	return &res, nil
}

// deleteShim runs `shim delete` for the container of dir: it removes what
// is left (runc state, mounts) and reports the saved exit. It is what
// cleans up after a dead shim, and is harmless after a clean teardown.
func (m *Manager) deleteShim(ctx context.Context, dir string, rec record) (Exit, error) {
	ctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	mm := *m
	if rec.Runtime != "" {
		mm.cfg.RuntimeBinary = rec.Runtime
	}
	cmd := mm.shimCommand(ctx, dir, rec.ID, "-bundle", dir, "delete")
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return Exit{}, shimCmdError(ctx, "shim delete", err, stderr.Bytes())
	}
	var resp taskAPI.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return Exit{}, fmt.Errorf("shim delete: unreadable answer %q: %w", stdout.Bytes(), errdefs.ErrUnknown)
	}
	return Exit{Pid: int(resp.Pid), Status: int(resp.ExitStatus), ExitedAt: resp.ExitedAt.AsTime()}, nil
}

func shimCmdError(ctx context.Context, what string, err error, stderr []byte) error {
	msg := strings.TrimSpace(string(stderr))
	if ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ctx.Err(), errdefs.ErrUnavailable)
	}
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		err = fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	if msg != "" {
		return fmt.Errorf("%s: %s: %w", what, msg, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ErrShimDead is wrapped by the errors of calls to a shim that is gone or
// does not answer within its bound.
var ErrShimDead = fmt.Errorf("shim dead: %w", errdefs.ErrUnavailable)

// dial connects to the shim at address (unix://PATH) within ctx's deadline.
func dial(ctx context.Context, address string) (*ttrpc.Client, error) {
	path, ok := strings.CutPrefix(address, "unix://")
	if !ok {
		return nil, fmt.Errorf("shim address %q: not unix://: %w", address, errdefs.ErrNotImplemented)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w: %w", address, err, ErrShimDead)
	}
	return ttrpc.NewClient(conn), nil
}

// fromShim converts an error of a shim call to the native errdefs classes.
// Transport failures (connection closed, no answer in time) mean that the
// shim is gone: they wrap ErrShimDead.
func fromShim(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ttrpc.ErrClosed), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w: %w", err, ErrShimDead)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return errgrpc.ToNative(err)
}
