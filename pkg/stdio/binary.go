package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// loggerReadyTimeout bounds how long a binary:// logger may take to signal
// that it is ready (by closing its third descriptor, or writing to it).
const loggerReadyTimeout = 10 * time.Second

// logger is a binary:// logging process. As containerd documents it, the
// logger gets the process's stdout as fd 3, its stderr as fd 4, and a pipe as
// fd 5 that it closes once ready; CONTAINER_ID and CONTAINER_NAMESPACE are in
// its environment and the URI's query gives its arguments. A binary-v2://
// logger (containerd >= 2.2) writes a byte to fd 5 when ready: one that
// closes it without has failed. Either is ready at its first byte.
type logger struct {
	cmd *exec.Cmd
}

func startLogger(ctx context.Context, target string, stdout, stderr io.ReadCloser, opts Options) (*logger, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("logger %q: %v: %w", target, err, errdefs.ErrInvalidArgument)
	}
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 && vs[0] != "" {
			args = append(args, vs[0])
		}
	}
	files := []*os.File{asFile(stdout), asFile(stderr)}
	if files[0] == nil || files[1] == nil {
		return nil, fmt.Errorf("logger %q needs both stdout and stderr: %w", target, errdefs.ErrInvalidArgument)
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer ready.Close()
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(),
		"CONTAINER_ID="+opts.ContainerID,
		"CONTAINER_NAMESPACE="+opts.Namespace,
	)
	cmd.ExtraFiles = append(files, readyW)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		return nil, fmt.Errorf("start logger %s: %w", u.Path, err)
	}
	readyW.Close()
	// The shim no longer needs its copies of the read ends: the logger
	// holds them. The process is reaped by the shim's reaper.
	stdout.Close()
	stderr.Close()

	type readiness struct {
		n   int
		err error
	}
	done := make(chan readiness, 1)
	go func() {
		var b [1]byte
		n, err := ready.Read(b[:])
		done <- readiness{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil && !errors.Is(r.err, io.EOF) {
			cmd.Process.Kill()
			return nil, fmt.Errorf("logger %s: read its readiness: %w", u.Path, r.err)
		}
		if r.n == 0 && u.Scheme == "binary-v2" {
			cmd.Process.Kill()
			return nil, fmt.Errorf("logger %s closed fd 5 without writing its ready byte (binary-v2): %w", u.Path, errdefs.ErrUnavailable)
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		return nil, fmt.Errorf("logger %s: %w", u.Path, ctx.Err())
	case <-time.After(loggerReadyTimeout):
		cmd.Process.Kill()
		return nil, fmt.Errorf("logger %s not ready within %s: %w", u.Path, loggerReadyTimeout, errdefs.ErrUnavailable)
	}
	return &logger{cmd: cmd}, nil
}

func asFile(r io.ReadCloser) *os.File {
	f, _ := r.(*os.File)
	return f
}

// close leaves the logger to finish: it sees EOF once the process's write
// ends are gone, and exits by itself.
func (l *logger) close() error {
	if l.cmd.Process == nil {
		return errors.New("logger not started")
	}
	return l.cmd.Process.Release()
}
