package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/mineshim/mine/test/e2e/imagebuild"
	"github.com/mineshim/mine/test/internal/testenv"
)

const (
	runtimeMine = "io.containerd.mine.v2"
	runtimeRunc = "io.containerd.runc.v2"

	shimBinary     = "containerd-shim-mine-v2"
	runcShimBinary = "containerd-shim-runc-v2"
	shimPackage    = "github.com/mineshim/mine/cmd/containerd-shim-mine-v2"

	// defaultNamespace is where the tests run unless they need another one.
	defaultNamespace = "mine-e2e"
	// runcRoot is the default runc root of containerd's runc shim, which the
	// mine shim keeps: runc state lives in runcRoot/NAMESPACE/ID.
	runcRoot = "/run/containerd/runc"

	imageRef = imagebuild.DefaultRef

	shimBuildTimeout = 5 * time.Minute
	teardownTimeout  = 30 * time.Second
)

// The harness of this test binary, set up by TestMain. Tests reach it through
// requireHarness, which skips or fails the test when setup did not succeed.
var (
	theHarness *harness
	skipReason string // why every test skips; set when a requirement is missing
	setupErr   error  // why every test fails; set when setup broke
)

// harness is the private containerd and what the tests need to drive it.
type harness struct {
	runtime     string // runtime under test
	snapshotter string
	containerd  string   // path of the containerd binary
	ctrPath     string   // path of ctr
	runcShim    string   // path of containerd-shim-runc-v2, "" when not found
	shim        string   // path of containerd-shim-mine-v2, "" when not needed
	shimExes    []string // resolved paths of the shim binaries above
	dir         string   // temporary directory of the whole run
	imageTar    string

	d      *daemon
	client *client.Client

	mu       sync.Mutex
	imported map[string]bool // namespaces holding the image; guarded by mu
}

func TestMain(m *testing.M) {
	h := &harness{imported: map[string]bool{}}
	skipReason, setupErr = h.setup()
	switch {
	case skipReason != "":
		fmt.Fprintf(os.Stderr, "e2e: every test skips: %s\n", skipReason)
	case setupErr != nil:
		fmt.Fprintf(os.Stderr, "e2e: setup failed, every test fails: %v\n", setupErr)
	default:
		theHarness = h
	}
	code := m.Run()
	if err := h.teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// requireHarness returns the harness, or skips or fails t with the reason
// setup gave. On failure, the tail of containerd's log is added to t's output.
func requireHarness(t testing.TB) *harness {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatalf("e2e setup failed: %v", setupErr)
	}
	h := theHarness
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (%s), last lines:\n%s", h.d.cfg.logPath(), h.d.logTail(60))
		}
	})
	return h
}

// setup finds the binaries, starts containerd and imports the image. It
// returns a skip reason when a requirement of the machine is missing, and an
// error when something that should work did not.
func (h *harness) setup() (skip string, err error) {
	if os.Geteuid() != 0 {
		return "needs root: runs containerd and runc", nil
	}
	h.runtime = runtimeMine
	if v := os.Getenv("MINE_E2E_RUNTIME"); v != "" {
		h.runtime = v
	}
	if h.containerd, skip = findBinary("containerd"); skip != "" {
		return skip, nil
	}
	if h.ctrPath, skip = findBinary("ctr"); skip != "" {
		return skip, nil
	}
	h.runcShim, _ = findBinary(runcShimBinary)
	if h.runtime == runtimeRunc && h.runcShim == "" {
		return "runtime under test is " + runtimeRunc + " but " + runcShimBinary + " was not found in MINE_CONTAINERD_BIN or PATH", nil
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "runc not found in PATH (Debian package runc)", nil
	}
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		return "no busybox to build the test image from (Debian package busybox-static): " + err.Error(), nil
	}

	if h.dir, err = os.MkdirTemp("/run", "mine-e2e-"); err != nil {
		if h.dir, err = os.MkdirTemp("", "mine-e2e-"); err != nil {
			return "", err
		}
	}
	binDir := filepath.Join(h.dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		return "", err
	}
	if skip, err := h.prepareShim(binDir); skip != "" || err != nil {
		return skip, err
	}

	for _, p := range []string{h.shim, h.runcShim, h.shimPath(h.runtime)} {
		if p == "" {
			continue
		}
		if exe, err := filepath.EvalSymlinks(p); err == nil && !slices.Contains(h.shimExes, exe) {
			h.shimExes = append(h.shimExes, exe)
		}
	}

	h.imageTar = filepath.Join(h.dir, "busybox.tar")
	if _, err := imagebuild.WriteFile(h.imageTar, imagebuild.Options{Ref: imageRef}); err != nil {
		return "", fmt.Errorf("build the busybox image: %w", err)
	}

	h.snapshotter = "overlayfs"
	if err := overlayWorks(h.dir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: overlay does not work here (%v), using the native snapshotter\n", err)
		h.snapshotter = "native"
	}

	cfg := daemonConfig{
		Dir:         h.dir,
		Snapshotter: h.snapshotter,
		Runtimes:    map[string]string{"runc": runtimeRunc, "mine": runtimeMine},
		PathDirs:    []string{binDir, filepath.Dir(h.containerd)},
	}
	if cfg.ExtraTOML, err = criTOML(h.dir); err != nil {
		return "", fmt.Errorf("configure CRI: %w", err)
	}
	if h.d, err = startDaemon(h.containerd, cfg); err != nil {
		return "", err
	}
	if h.client, err = client.New(cfg.address(), client.WithTimeout(10*time.Second)); err != nil {
		return "", fmt.Errorf("connect to containerd: %w", err)
	}
	if err := h.checkSnapshotter(); err != nil {
		return "", err
	}
	if err := h.importImage(defaultNamespace); err != nil {
		return "", err
	}
	return "", nil
}

// findBinary looks for name in MINE_CONTAINERD_BIN, or in PATH when that is
// unset. It returns the path, or a reason to skip.
func findBinary(name string) (string, string) {
	if dir := os.Getenv("MINE_CONTAINERD_BIN"); dir != "" {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Sprintf("%s not found in MINE_CONTAINERD_BIN=%s (hack/install-deps.sh installs it)", name, dir)
		}
		return p, ""
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Sprintf("%s not found in PATH and MINE_CONTAINERD_BIN is not set (hack/install-deps.sh installs it)", name)
	}
	if p, err = filepath.Abs(p); err != nil {
		return "", err.Error()
	}
	return p, ""
}

// prepareShim puts containerd-shim-mine-v2 into binDir: a link to MINE_SHIM,
// or a fresh build. The build is skipped when another runtime is under test
// and MINE_SHIM is unset.
func (h *harness) prepareShim(binDir string) (skip string, err error) {
	dst := filepath.Join(binDir, shimBinary)
	if p := os.Getenv("MINE_SHIM"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("MINE_SHIM=%s is not an executable file", p)
		}
		h.shim = dst
		return "", os.Symlink(abs, dst)
	}
	if h.runtime != runtimeMine {
		return "", nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "MINE_SHIM is unset and there is no go in PATH to build " + shimPackage, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shimBuildTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", dst, shimPackage).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("cannot build %s (%v): %s", shimPackage, err, lastLines(string(out), 10)), nil
	}
	h.shim = dst
	return "", nil
}

// shimPath returns the shim binary containerd runs for runtime rt.
func (h *harness) shimPath(rt string) string {
	switch rt {
	case runtimeRunc:
		return h.runcShim
	case runtimeMine:
		return h.shim
	}
	// io.containerd.NAME.vN runs containerd-shim-NAME-vN.
	name := "containerd-shim-" + strings.ReplaceAll(strings.TrimPrefix(rt, "io.containerd."), ".", "-")
	p, _ := findBinary(name)
	return p
}

// requireShim skips tb when the shim of runtime rt (mine or containerd's
// runc shim) is not there to run.
func (h *harness) requireShim(tb testing.TB, rt string) {
	tb.Helper()
	if h.shimPath(rt) != "" {
		return
	}
	if rt == runtimeRunc {
		tb.Skip(runcShimBinary + " not found in MINE_CONTAINERD_BIN or PATH")
	}
	tb.Skip("the mine shim is built only when it is under test or MINE_SHIM is set")
}

// checkSnapshotter makes sure containerd loaded the chosen snapshotter.
func (h *harness) checkSnapshotter() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.client.IntrospectionService().Plugins(ctx,
		`type=="io.containerd.snapshotter.v1"`, fmt.Sprintf("id==%q", h.snapshotter))
	if err != nil {
		return fmt.Errorf("list snapshotter plugins: %w", err)
	}
	for _, p := range resp.GetPlugins() {
		if p.GetType() == "io.containerd.snapshotter.v1" && p.GetID() == h.snapshotter {
			if p.GetInitErr() != nil {
				return fmt.Errorf("snapshotter %s failed to load: %s", h.snapshotter, p.GetInitErr().GetMessage())
			}
			return nil
		}
	}
	return fmt.Errorf("containerd has no snapshotter %s", h.snapshotter)
}

// importImage imports the busybox image into ns once.
func (h *harness) importImage(ns string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.imported[ns] {
		return nil
	}
	out, code, err := h.runCtr(context.Background(), "-n", ns, "images", "import", "--snapshotter", h.snapshotter, h.imageTar)
	if err != nil || code != 0 {
		return fmt.Errorf("import %s into namespace %s (exit %d, %v): %s", h.imageTar, ns, code, err, out)
	}
	h.imported[ns] = true
	return nil
}

// teardown deletes what tests left behind, stops containerd and removes the
// temporary directory. It runs whether or not setup succeeded.
func (h *harness) teardown() error {
	var errs []error
	if h.client != nil {
		h.mu.Lock()
		nss := sortedKeys(h.imported)
		h.mu.Unlock()
		for _, ns := range nss {
			if err := h.deleteAll(ns); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, h.client.Close())
	}
	if h.d != nil {
		errs = append(errs, h.d.stop())
		errs = append(errs, killLeftoverShims(h.d.cfg.address(), h.shimExes))
	}
	if h.dir != "" {
		// Never remove through a mount point: that would delete the
		// content of whatever is mounted there.
		mounts, err := mountsUnder(h.dir)
		for _, mp := range mounts {
			if uerr := syscall.Unmount(mp, syscall.MNT_DETACH); uerr != nil {
				err = errors.Join(err, fmt.Errorf("unmount %s: %w", mp, uerr))
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s kept: %w", h.dir, err))
		} else {
			errs = append(errs, os.RemoveAll(h.dir))
		}
	}
	return errors.Join(errs...)
}

// killLeftoverShims waits a little for the shims of the containerd at
// address to exit, then kills the ones left, reporting them as a leak.
func killLeftoverShims(address string, exes []string) error {
	return testenv.KillLeftoverShims(address, exes)
}

// deleteAll kills and deletes every container left in ns. Tests delete
// their own containers; this only keeps a failed run from leaking shims.
func (h *harness) deleteAll(ns string) error {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), teardownTimeout)
	defer cancel()
	containers, err := h.client.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers of %s: %w", ns, err)
	}
	var errs []error
	for _, c := range containers {
		if task, err := c.Task(ctx, nil); err == nil {
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
				errs = append(errs, fmt.Errorf("delete task %s/%s: %w", ns, c.ID(), err))
			}
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			errs = append(errs, fmt.Errorf("delete container %s/%s: %w", ns, c.ID(), err))
		}
	}
	// The runc shim leaves an empty runcRoot/NS behind; remove it if empty.
	os.Remove(filepath.Join(runcRoot, ns))
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
