package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

const (
	// ShimBinary is the file name containerd runs for RuntimeMine.
	ShimBinary = "containerd-shim-mine-v2"
	// ShimPackage is built when MINE_SHIM is unset.
	ShimPackage = "github.com/mineshim/mine/cmd/containerd-shim-mine-v2"
	// PausePackage is the pause program of the CRI tests' sandbox image.
	PausePackage = "github.com/mineshim/mine/test/e2e/pause"
	// KubernetesVersion is the kubelet hack/install-kubelet.sh builds.
	KubernetesVersion = "v1.35.4"

	buildTimeout = 5 * time.Minute
)

// Cache is $MINE_CACHE, or ~/.cache/mine: where hack/install-deps.sh and
// hack/install-kubelet.sh put what they build.
func Cache() string {
	if c := os.Getenv("MINE_CACHE"); c != "" {
		return c
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "mine")
	}
	return filepath.Join(os.TempDir(), "mine-cache")
}

// Release is a containerd release line the tests run against.
type Release struct {
	// Line is major.minor, "2.4" for example.
	Line string
	// Env names the variable that may point at its binaries' directory.
	Env string
	// CacheDir is where the install scripts put them, under Cache().
	CacheDir string
}

// Releases are the containerd releases the tests run against, newest first.
var Releases = []Release{
	{Line: "2.4", Env: "MINE_CONTAINERD_BIN", CacheDir: "bin"},
	{Line: "2.2", Env: "MINE_CONTAINERD22_BIN", CacheDir: "containerd-v2.2.9/bin"},
	{Line: "1.7", Env: "MINE_CONTAINERD17_BIN", CacheDir: "containerd-v1.7.35/bin"},
	// Debian 12's own containerd package.
	{Line: "1.6", Env: "MINE_CONTAINERD16_BIN", CacheDir: "containerd-v1.6.20/bin"},
}

// ConfigVersion is the config format the release reads: 1.6 and 1.7 know
// version 2 only, 2.x takes version 3.
func (r Release) ConfigVersion() int {
	if strings.HasPrefix(r.Line, "1.") {
		return 2
	}
	return 3
}

// BinDir finds the directory of the release's containerd and ctr: $Env,
// else the cache, else (for 2.4 only) PATH. It returns a reason to skip when
// they are not there.
func (r Release) BinDir() (dir, skip string) {
	dir = os.Getenv(r.Env)
	from := r.Env
	if dir == "" {
		dir = filepath.Join(Cache(), r.CacheDir)
		from = r.Env + " is unset; default " + dir
		if r.Line == "2.4" && !Executable(filepath.Join(dir, "containerd")) {
			if p, err := exec.LookPath("containerd"); err == nil {
				dir, from = filepath.Dir(p), "PATH"
			}
		}
	}
	for _, b := range []string{"containerd", "ctr"} {
		if !Executable(filepath.Join(dir, b)) {
			return "", fmt.Sprintf("no %s of containerd %s in %s (%s); hack/install-deps.sh builds it", b, r.Line, dir, from)
		}
	}
	return dir, ""
}

// Latest is containerd 2.4, the release most tests run against.
func Latest() Release { return Releases[0] }

// Executable reports whether p is an executable regular file.
func Executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// KubeletBinary returns the kubelet binary: $MINE_KUBELET_BIN/kubelet, else the
// one hack/install-kubelet.sh caches. It returns a reason to skip when
// there is none.
func KubeletBinary() (path, skip string) {
	dir := os.Getenv("MINE_KUBELET_BIN")
	from := "MINE_KUBELET_BIN"
	if dir == "" {
		dir = filepath.Join(Cache(), "kubelet-"+KubernetesVersion, "bin")
		from = "MINE_KUBELET_BIN is unset; default " + dir
	}
	p := filepath.Join(dir, "kubelet")
	if !Executable(p) {
		return "", fmt.Sprintf("no kubelet in %s (%s); hack/install-kubelet.sh builds it", dir, from)
	}
	return p, ""
}

// BuildShim puts containerd-shim-mine-v2 into dir: a link to $MINE_SHIM, or
// a fresh `go build`. It returns the path, or a reason to skip (no go), or
// an error.
func BuildShim(dir string) (path, skip string, err error) {
	dst := filepath.Join(dir, ShimBinary)
	if p := os.Getenv("MINE_SHIM"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", "", err
		}
		if !Executable(abs) {
			return "", "", fmt.Errorf("MINE_SHIM=%s is not an executable file", p)
		}
		return dst, "", os.Symlink(abs, dst)
	}
	if skip, err := goBuild(dst, ShimPackage); skip != "" || err != nil {
		return "", skip, err
	}
	return dst, "", nil
}

// BuildPause builds the static pause program into dir.
func BuildPause(dir string) (path, skip string, err error) {
	dst := filepath.Join(dir, "pause")
	if skip, err := goBuild(dst, PausePackage); skip != "" || err != nil {
		return "", skip, err
	}
	return dst, "", nil
}

func goBuild(dst, pkg string) (skip string, err error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "no go in PATH to build " + pkg, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", pkg, err, out)
	}
	return "", nil
}

// PauseImage is the image of the pause program at pauseBin, named ref: a
// sandbox image that needs no registry.
func PauseImage(ref, pauseBin string) (imagebuild.Options, error) {
	data, err := os.ReadFile(pauseBin)
	if err != nil {
		return imagebuild.Options{}, err
	}
	return imagebuild.Options{
		Ref:   ref,
		Files: []imagebuild.File{{Path: "pause", Mode: 0o755, Data: data}},
		Cmd:   []string{"/pause"},
	}, nil
}
