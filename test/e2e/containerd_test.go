package e2e

import "github.com/mineshim/mine/test/internal/testenv"

// The private containerd of the e2e tests is package testenv's; the names
// below are the ones the tests use.

const (
	daemonStartTimeout = testenv.StartTimeout
	daemonStopTimeout  = testenv.StopTimeout
)

// daemonConfig describes a private containerd.
type daemonConfig struct {
	// Dir holds root, state, temp, the sockets, config.toml and the log.
	// Keep it short: unix socket paths are limited to about 106 bytes.
	Dir string
	// Snapshotter is the CRI image snapshotter (ctr and the Go client are
	// told theirs on each call).
	Snapshotter string
	// Runtimes maps CRI runtime names to runtime types.
	Runtimes map[string]string
	// PathDirs are put first on containerd's PATH, so it finds the shims.
	PathDirs []string
	// ExtraTOML is appended to the generated config (for example by CRI
	// tests that need a CNI section).
	ExtraTOML string
}

// env is the testenv config: a version 3 config, which containerd 2.0 to
// 2.4 accept, with CRI's default runtime "runc".
func (c daemonConfig) env() testenv.Config {
	return testenv.Config{
		Dir:         c.Dir,
		Snapshotter: c.Snapshotter,
		Runtimes:    c.Runtimes,
		PathDirs:    c.PathDirs,
		ExtraTOML:   c.ExtraTOML,
	}
}

func (c daemonConfig) root() string         { return c.env().Root() }
func (c daemonConfig) state() string        { return c.env().State() }
func (c daemonConfig) address() string      { return c.env().Address() }
func (c daemonConfig) ttrpcAddress() string { return c.env().TTRPCAddress() }
func (c daemonConfig) configPath() string   { return c.env().ConfigPath() }
func (c daemonConfig) logPath() string      { return c.env().LogPath() }
func (c daemonConfig) toml() string         { return c.env().TOML() }

// daemon is a running private containerd.
type daemon struct {
	cfg daemonConfig
	c   *testenv.Containerd
}

// startDaemon writes the config and starts containerd with only stdio
// open, then waits until its gRPC socket accepts connections.
func startDaemon(containerd string, cfg daemonConfig) (*daemon, error) {
	c, err := testenv.StartContainerd(containerd, cfg.env())
	if err != nil {
		return nil, err
	}
	return &daemon{cfg: cfg, c: c}, nil
}

// crash kills containerd with SIGKILL and waits for it to exit. Its shims
// keep running.
func (d *daemon) crash() error { return d.c.Crash() }

// restart starts containerd again once it has exited (after crash or
// stop), and waits until it serves.
func (d *daemon) restart() error { return d.c.Restart() }

// stop sends SIGTERM, then SIGKILL, and waits for containerd to exit.
func (d *daemon) stop() error { return d.c.Stop() }

// logTail returns the last n lines of containerd's log.
func (d *daemon) logTail(n int) string { return d.c.LogTail(n) }

// daemonEnv is the test's environment without containerd client settings,
// with dirs first on PATH.
func daemonEnv(dirs []string) []string { return testenv.Env(dirs) }

// closeOnExecAll marks every open descriptor above stderr close-on-exec.
func closeOnExecAll() error { return testenv.CloseOnExecAll() }

// overlayWorks reports whether an overlay mount works in dir.
func overlayWorks(dir string) error { return testenv.OverlayWorks(dir) }
