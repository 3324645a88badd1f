package compat

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/mineshim/mine/test/internal/testenv"
)

const (
	daemonStartTimeout = testenv.StartTimeout
	daemonStopTimeout  = testenv.StopTimeout
)

// release is one containerd release line of the matrix.
type release struct {
	name     string // subtest name
	env      string // variable naming the directory of its binaries
	cacheDir string // where hack/install-deps.sh puts them, under MINE_CACHE
	line     string // major.minor the binary must report
}

var releases = []release{
	{name: "containerd-2.4", env: "MINE_CONTAINERD_BIN", cacheDir: "bin", line: "2.4"},
	{name: "containerd-2.2", env: "MINE_CONTAINERD22_BIN", cacheDir: "containerd-v2.2.9/bin", line: "2.2"},
	{name: "containerd-1.7", env: "MINE_CONTAINERD17_BIN", cacheDir: "containerd-v1.7.35/bin", line: "1.7"},
	{name: "containerd-1.6", env: "MINE_CONTAINERD16_BIN", cacheDir: "containerd-v1.6.20/bin", line: "1.6"},
}

// configVersion is the config format the release reads: 1.6 and 1.7 know
// version 2 only, 2.x takes version 3.
func (r release) configVersion() int {
	if strings.HasPrefix(r.line, "1.") {
		return 2
	}
	return 3
}

// binDir finds the directory of the release's containerd and ctr. It returns
// a reason to skip when they are not there.
func (r release) binDir() (dir, skip string) {
	dir = os.Getenv(r.env)
	from := r.env
	if dir == "" {
		cache := os.Getenv("MINE_CACHE")
		if cache == "" {
			if home, err := os.UserHomeDir(); err == nil {
				cache = filepath.Join(home, ".cache", "mine")
			}
		}
		dir = filepath.Join(cache, r.cacheDir)
		from = r.env + " is unset; default " + dir
		if r.env == "MINE_CONTAINERD_BIN" && !executable(filepath.Join(dir, "containerd")) {
			// Like the e2e tests: containerd 2.4 may be on PATH.
			if p, err := exec.LookPath("containerd"); err == nil {
				dir, from = filepath.Dir(p), "PATH"
			}
		}
	}
	for _, b := range []string{"containerd", "ctr"} {
		if !executable(filepath.Join(dir, b)) {
			return "", fmt.Sprintf("no %s of containerd %s in %s (%s); hack/install-deps.sh builds it", b, r.line, dir, from)
		}
	}
	return dir, ""
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

var versionRE = regexp.MustCompile(`\s+v?(\d+)\.(\d+)\.(\d+)\S*`)

// binaryVersion returns "major.minor.patch" of a containerd or ctr binary.
func binaryVersion(bin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", bin, err, out)
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %q", bin, out)
	}
	return m[1] + "." + m[2] + "." + m[3], nil
}

// daemonConfig describes a private containerd of one release, started by
// package testenv.
type daemonConfig struct {
	Dir         string
	Version     int // config format: 2 or 3
	Snapshotter string
	PathDirs    []string // first on containerd's PATH: the shim's directory
	// SandboxImage is CRI's pause image.
	SandboxImage string
}

// env is the testenv config. Both formats carry the CRI runtime "mine" the
// way docs/kubernetes.md shows it, so each release also proves it accepts
// that snippet.
func (c daemonConfig) env() testenv.Config {
	return testenv.Config{
		Dir:          c.Dir,
		Version:      c.Version,
		Snapshotter:  c.Snapshotter,
		PathDirs:     c.PathDirs,
		SandboxImage: c.SandboxImage,
	}
}

func (c daemonConfig) address() string    { return c.env().Address() }
func (c daemonConfig) state() string      { return c.env().State() }
func (c daemonConfig) configPath() string { return c.env().ConfigPath() }
func (c daemonConfig) logPath() string    { return c.env().LogPath() }
func (c daemonConfig) toml() string       { return c.env().TOML() }

// daemon is a running private containerd.
type daemon struct {
	cfg daemonConfig
	c   *testenv.Containerd
}

// startDaemon starts containerd with only stdio open and waits until it
// serves.
func startDaemon(containerd string, cfg daemonConfig) (*daemon, error) {
	c, err := testenv.StartContainerd(containerd, cfg.env())
	if err != nil {
		return nil, err
	}
	return &daemon{cfg: cfg, c: c}, nil
}

// stop sends SIGTERM, then SIGKILL, and waits for containerd to exit.
func (d *daemon) stop() error { return d.c.Stop() }

func (d *daemon) logTail(n int) string { return d.c.LogTail(n) }

// cleanEnv is the test's environment without containerd client settings,
// with dirs first on PATH and no deprecation warnings in ctr's output.
func cleanEnv(dirs []string) []string { return testenv.Env(dirs) }

// closeOnExecAll keeps descriptors the test binary inherited out of
// containerd and its shims.
func closeOnExecAll() error { return testenv.CloseOnExecAll() }

// overlayWorks reports whether an overlay mount works under dir.
func overlayWorks(dir string) error { return testenv.OverlayWorks(dir) }
