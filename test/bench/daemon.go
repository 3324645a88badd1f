package bench

import (
	"github.com/mineshim/mine/test/internal/testenv"
)

// daemon is a private containerd (package testenv): its root, state,
// sockets, config and log all live in dir.
type daemon struct {
	*testenv.Containerd
}

func (d *daemon) socket() string { return d.Address() }

// pid is containerd's process id.
func (d *daemon) pid() int { return d.Pid() }

func (d *daemon) stop() error { return d.Stop() }

// logTail returns the last n lines of containerd's log.
func (d *daemon) logTail(n int) string { return d.LogTail(n) }

// disabledPlugins are not loaded by the benchmark's containerd: CRI (no
// pods are run; its event handling and CNI setup would only add noise) and
// NRI (its socket would be shared with a containerd of the host).
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.runtime",
	"io.containerd.cri.v1.images",
	"io.containerd.nri.v1.nri",
}

// startDaemon starts containerd with its state in dir, its root in root and
// pathDirs first on its PATH (where it finds the shims), and waits until it
// serves. The log level is containerd's default, info: the shims then run
// without -debug, as in production.
func startDaemon(containerd, dir, root string, pathDirs []string) (*daemon, error) {
	c, err := testenv.StartContainerd(containerd, testenv.Config{
		Dir:             dir,
		RootDir:         root,
		PathDirs:        pathDirs,
		LogLevel:        "info",
		DisabledPlugins: disabledPlugins,
	})
	if err != nil {
		return nil, err
	}
	return &daemon{c}, nil
}

// childEnv is the benchmark's environment without containerd client
// settings, with dirs first on PATH.
func childEnv(dirs []string) []string { return testenv.Env(dirs) }
