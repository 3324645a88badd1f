package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

// Runtime is a containerd runtime type under comparison.
type Runtime string

// The two shims compared.
const (
	Mine   Runtime = "io.containerd.mine.v2"
	RuncV2 Runtime = "io.containerd.runc.v2"
)

// Runtimes lists the compared runtimes, mine first.
var Runtimes = []Runtime{Mine, RuncV2}

// Short is the name used in tables and JSON: "mine" or "runc-v2".
func (r Runtime) Short() string {
	if r == Mine {
		return "mine"
	}
	return "runc-v2"
}

const (
	mineShimName = "containerd-shim-mine-v2"
	runcShimName = "containerd-shim-runc-v2"
	minePackage  = "github.com/mineshim/mine/cmd/containerd-shim-mine-v2"

	// Namespace is the containerd namespace of every benchmark container.
	Namespace = "mine-bench"
	// imageRef is the busybox image, built locally and imported.
	imageRef = imagebuild.DefaultRef

	// runcStateRoot is where both shims keep runc's state by default, one
	// directory per namespace.
	runcStateRoot = "/run/containerd/runc"

	buildTimeout = 5 * time.Minute
	ctrTimeout   = 60 * time.Second
	opTimeout    = 60 * time.Second
)

// ErrSkip wraps the reason a benchmark cannot run on this machine (not root,
// a binary missing); benchmarks skip on it rather than fail.
var ErrSkip = errors.New("benchmark requirement missing")

// Config says where the binaries are. The zero value reads the environment
// as the e2e tests do.
type Config struct {
	// ContainerdBin is the directory holding containerd, ctr and
	// containerd-shim-runc-v2 of the same release. Empty: MINE_CONTAINERD_BIN,
	// or else PATH.
	ContainerdBin string
	// Shim is a built containerd-shim-mine-v2. Empty: MINE_SHIM, or else the
	// shim is built like `make build` does (CGO_ENABLED=0, -trimpath,
	// -ldflags '-s -w') into the work directory.
	Shim string
	// RuncShim is the containerd-shim-runc-v2 to compare with. Empty:
	// MINE_RUNC_SHIM, or else the one in ContainerdBin. hack/bench.sh builds
	// it as containerd's release Makefile does (static, -s -w), so that
	// both shims are built alike.
	RuncShim string
	// Progress receives one line per step; nil discards.
	Progress io.Writer
	// RootParent is where containerd's root directory is made: its
	// content, metadata and snapshots, the containers' overlay layers.
	// Empty: /var/lib, on disk as containerd's own /var/lib/containerd is.
	// (Deleting a container syncs its upper layer's filesystem as its
	// overlay goes; a tmpfs makes that free.) The state, the bundles and
	// sockets, stays under /run as containerd's /run/containerd does.
	RootParent string
}

// Env is a private containerd with both runtimes, the busybox image
// imported, and an unpacked bundle of the same image for raw runc runs.
// Open creates it; Close stops containerd and removes everything.
type Env struct {
	progress io.Writer

	tag         string // random, in every container ID of this Env
	dir         string // work directory, under /run when possible
	rootDir     string // containerd roots, under Config.RootParent
	rootFS      string // rootDir's filesystem
	binDir      string // first on containerd's PATH: the mine shim
	containerd  string
	ctr         string
	runc        string
	shims       map[Runtime]string // binary containerd runs for each runtime
	shimExe     map[Runtime]string // the same with symlinks resolved
	floorExe    string             // the floor server (floor.go), or ""
	snapshotter string

	d      *daemon
	client *client.Client
	image  client.Image
	events *eventRouter
	rootfs string // unpacked image, for raw runc bundles
}

// Open checks the requirements, builds the shim if needed, starts
// containerd and imports the image. An error wrapping ErrSkip names a
// missing requirement.
func Open(ctx context.Context, cfg Config) (_ *Env, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root (runs containerd and runc)", ErrSkip)
	}
	e := &Env{progress: cfg.Progress, shims: map[Runtime]string{}, shimExe: map[Runtime]string{}}
	var tag [3]byte
	if _, err := rand.Read(tag[:]); err != nil {
		return nil, err
	}
	// IDs stay unique across runs: runc keeps its state under a root
	// shared with every containerd of the host.
	e.tag = hex.EncodeToString(tag[:])
	if e.progress == nil {
		e.progress = io.Discard
	}
	binDir := cfg.ContainerdBin
	if binDir == "" {
		binDir = os.Getenv("MINE_CONTAINERD_BIN")
	}
	if e.containerd, err = findBinary(binDir, "containerd"); err != nil {
		return nil, err
	}
	if e.ctr, err = findBinary(binDir, "ctr"); err != nil {
		return nil, err
	}
	runcShim := cfg.RuncShim
	if runcShim == "" {
		runcShim = os.Getenv("MINE_RUNC_SHIM")
	}
	if runcShim != "" {
		e.shims[RuncV2] = runcShim
	} else if e.shims[RuncV2], err = findBinary(binDir, runcShimName); err != nil {
		return nil, err
	}
	if e.runc, err = exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("%w: runc not in PATH (Debian package runc)", ErrSkip)
	}
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		return nil, fmt.Errorf("%w: no static busybox for the image (Debian package busybox-static): %v", ErrSkip, err)
	}

	if e.dir, err = os.MkdirTemp("/run", "mine-bench-"); err != nil {
		if e.dir, err = os.MkdirTemp("", "mine-bench-"); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.Close())
		}
	}()
	rootParent := cfg.RootParent
	if rootParent == "" {
		rootParent = "/var/lib"
	}
	if e.rootDir, err = os.MkdirTemp(rootParent, "mine-bench-"); err != nil {
		return nil, err
	}
	e.rootFS = fsName(e.rootDir)
	e.binDir = filepath.Join(e.dir, "bin")
	if err := os.Mkdir(e.binDir, 0o755); err != nil {
		return nil, err
	}
	shim := cfg.Shim
	if shim == "" {
		shim = os.Getenv("MINE_SHIM")
	}
	if err := e.prepareShim(ctx, shim); err != nil {
		return nil, err
	}
	if err := e.prepareFloor(ctx); err != nil {
		return nil, err
	}
	for rt, p := range e.shims {
		if e.shimExe[rt], err = filepath.EvalSymlinks(p); err != nil {
			return nil, err
		}
	}
	// Written moments ago: flush, or their pages count as dirty; then drop
	// them from the page cache, so that both shims start from the same
	// state (a build leaves every page cached, a copy may not, and what is
	// cached decides how much fault-around maps) and hold the pages their
	// own runs bring in.
	unix.Sync()
	for _, p := range e.shimExe {
		if err := dropCache(p); err != nil {
			return nil, err
		}
	}
	if e.floorExe != "" {
		if err := dropCache(e.floorExe); err != nil {
			return nil, err
		}
	}

	e.snapshotter = "overlayfs"
	if err := overlayWorks(e.rootDir); err != nil {
		e.logf("overlay mounts do not work here (%v): native snapshotter", err)
		e.snapshotter = "native"
	}
	e.logf("starting containerd %s in %s, its root in %s (%s)", e.containerd, e.dir, e.rootDir, e.rootFS)
	if e.d, err = startDaemon(e.containerd, filepath.Join(e.dir, "d"), filepath.Join(e.rootDir, "d"), []string{e.binDir, filepath.Dir(e.containerd)}); err != nil {
		return nil, err
	}
	if e.client, err = client.New(e.d.socket(), client.WithTimeout(10*time.Second)); err != nil {
		return nil, fmt.Errorf("connect to containerd: %w", err)
	}
	if err := e.importImage(ctx); err != nil {
		return nil, err
	}
	if e.events, err = newEventRouter(e.nsCtx(ctx), e.client); err != nil {
		return nil, err
	}
	if err := e.verifyShims(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// verifyShims runs a container with each runtime and checks that its shim
// daemon runs the binary this Env prepared: every figure depends on it.
func (e *Env) verifyShims(ctx context.Context) error {
	for _, rt := range Runtimes {
		boxes, err := e.startSleepers(ctx, rt, fmt.Sprintf("check-%s-%s", rt.Short(), e.tag), 1)
		if err != nil {
			return err
		}
		_, err = e.shimOf(boxes[0])
		if err != nil {
			err = fmt.Errorf("%s does not run %s: %w; processes naming the container:\n%s",
				rt, e.shimExe[rt], err, describeProcs(map[string]bool{boxes[0].id: true}))
		}
		if err := errors.Join(err, e.removeAll(ctx, boxes)); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes every container left, stops containerd and removes the work
// directory.
func (e *Env) Close() error {
	var errs []error
	if e.events != nil {
		e.events.close()
	}
	if e.client != nil {
		errs = append(errs, e.deleteAll())
		errs = append(errs, e.client.Close())
	}
	if e.d != nil {
		errs = append(errs, e.d.stop())
		errs = append(errs, e.killShims())
		removeCgroupParents(Namespace, strings.TrimPrefix(filepath.Dir(rawCgroup), "/"))
		// Both shims keep runc state in this directory; remove it if empty.
		_ = os.Remove(filepath.Join(runcStateRoot, Namespace))
	}
	for _, dir := range []string{e.dir, e.rootDir} {
		if dir != "" {
			errs = append(errs, removeTree(dir))
		}
	}
	return errors.Join(errs...)
}

// removeTree unmounts everything below dir and removes it.
func removeTree(dir string) error {
	mounts, err := mountsUnder(dir)
	for _, m := range mounts {
		if uerr := syscall.Unmount(m, syscall.MNT_DETACH); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}
	if err != nil {
		return fmt.Errorf("%s kept: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// fsName names the filesystem of path, for the report.
func fsName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	}
	return fmt.Sprintf("0x%x", st.Type)
}

// Snapshotter is the snapshotter containerd uses for the containers.
func (e *Env) Snapshotter() string { return e.snapshotter }

func (e *Env) logf(format string, args ...any) {
	fmt.Fprintf(e.progress, "bench: "+format+"\n", args...)
}

// nsCtx returns ctx in the benchmark namespace.
func (e *Env) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, Namespace)
}

// importImage writes the busybox image, imports it and unpacks its rootfs
// for the raw runc bundles.
func (e *Env) importImage(ctx context.Context) error {
	tarPath := filepath.Join(e.dir, "busybox.tar")
	if _, err := imagebuild.WriteFile(tarPath, imagebuild.Options{Ref: imageRef}); err != nil {
		return fmt.Errorf("build the busybox image: %w", err)
	}
	if out, err := e.runCtr(ctx, "-n", Namespace, "images", "import", "--snapshotter", e.snapshotter, tarPath); err != nil {
		return fmt.Errorf("import image: %w: %s", err, out)
	}
	var err error
	if e.image, err = e.client.GetImage(e.nsCtx(ctx), imageRef); err != nil {
		return err
	}
	e.rootfs = filepath.Join(e.dir, "rootfs")
	return unpackImage(tarPath, e.rootfs)
}

// runCtr runs ctr against the private containerd and returns its output.
func (e *Env) runCtr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctr, append([]string{"--address", e.d.socket()}, args...)...)
	cmd.Env = ctrEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ctrEnv is ctr's environment: no CONTAINERD_* of the caller, and no cgroup
// v1 deprecation warning.
func ctrEnv() []string {
	return append(childEnv(nil), "CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1")
}

// deleteAll kills and deletes every container of the namespace.
func (e *Env) deleteAll() error {
	ctx, cancel := context.WithTimeout(e.nsCtx(context.Background()), opTimeout)
	defer cancel()
	cs, err := e.client.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if t, err := c.Task(ctx, nil); err == nil {
			if _, err := t.Delete(ctx, client.WithProcessKill); err != nil {
				errs = append(errs, err)
			}
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killShims kills shims of this containerd still running after it stopped
// (every container was deleted before, so there should be none).
func (e *Env) killShims() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err := e.shimProcs(nil)
		if err != nil || len(procs) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			for _, p := range procs {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
			return fmt.Errorf("%d shims still running after containerd stopped: killed", len(procs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
