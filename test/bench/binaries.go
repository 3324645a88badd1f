package bench

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// findBinary looks for name in dir, or in PATH when dir is empty.
func findBinary(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%w: %s not found in %s (hack/install-deps.sh builds it)", ErrSkip, name, dir)
		}
		return filepath.Abs(p)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not in PATH and MINE_CONTAINERD_BIN unset (hack/install-deps.sh builds it)", ErrSkip, name)
	}
	return filepath.Abs(p)
}

// prepareShim puts both shims into binDir, where containerd finds them
// first: a copy of shim (or a build of the mine shim with the flags of `make
// build` when shim is empty), and a copy of containerd's runc shim. Private
// copies keep PSS honest: no process outside the benchmark maps these
// files, so their pages are shared among the benchmark's shims only.
func (e *Env) prepareShim(ctx context.Context, shim string) error {
	dst := filepath.Join(e.binDir, mineShimName)
	runcDst := filepath.Join(e.binDir, runcShimName)
	if err := copyFile(e.shims[RuncV2], runcDst); err != nil {
		return err
	}
	e.shims[RuncV2], e.shims[Mine] = runcDst, dst
	if shim != "" {
		if fi, err := os.Stat(shim); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("shim %s is not an executable file", shim)
		}
		return copyFile(shim, dst)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("%w: no shim given (MINE_SHIM) and no go in PATH to build it", ErrSkip)
	}
	return e.goBuild(ctx, goBin, minePackage, dst)
}

// goBuild builds the command pkg into dst, static and stripped.
func (e *Env) goBuild(ctx context.Context, goBin, pkg, dst string) error {
	e.logf("building %s", pkg)
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	return nil
}

// dropCache evicts the clean page cache pages of file.
func dropCache(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// copyFile copies an executable.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// Versions names what is compared: containerd, runc, both shims, Go.
type Versions struct {
	Containerd string `json:"containerd"`
	Runc       string `json:"runc"`
	MineShim   string `json:"mine_shim"`
	RuncShim   string `json:"runc_v2_shim"`
	MineGo     string `json:"mine_shim_go"`
	RuncShimGo string `json:"runc_v2_shim_go"`
}

// Versions asks each binary.
func (e *Env) Versions(ctx context.Context) Versions {
	first := func(bin string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			return "unknown (" + err.Error() + ")"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	shimVersion := func(bin string) string {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput()
		if err != nil {
			return "unknown"
		}
		for _, line := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "Version" {
				return strings.TrimSpace(v)
			}
		}
		return "unknown"
	}
	goOf := func(bin string) string {
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			return "unknown"
		}
		return bi.GoVersion
	}
	return Versions{
		Containerd: first(e.containerd, "--version"),
		Runc:       first(e.runc, "--version"),
		MineShim:   shimVersion(e.shimExe[Mine]),
		RuncShim:   shimVersion(e.shimExe[RuncV2]),
		MineGo:     goOf(e.shimExe[Mine]),
		RuncShimGo: goOf(e.shimExe[RuncV2]),
	}
}
