package minimgr

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mineshim/mine/internal/runcroot"
)

// Defaults of Config.
const (
	DefaultRoot      = "/run/minimgr"
	DefaultNamespace = "default"
	// ShimBinary is the shim minimgr runs unless told otherwise.
	ShimBinary = "containerd-shim-mine-v2"
)

// Config configures a Manager.
type Config struct {
	// Root holds the state: Root/NAMESPACE/ID per container, the events
	// socket Root/events.sock and, when short enough, the shims' sockets
	// in Root/s. Default DefaultRoot.
	Root string
	// Namespace of the containers. Default DefaultNamespace.
	Namespace string
	// RuntimeBinary is the shim binary. Default: FindRuntime(ShimBinary).
	RuntimeBinary string
	// PublishBinary is given to shims as -publish-binary. Default: the
	// running executable.
	PublishBinary string
	// LoggerBinary logs the output of processes without a terminal, as a
	// binary:// logger started `LoggerBinary LoggerArg LOGFILE` (see
	// RunLogger). Default: PublishBinary.
	LoggerBinary string
	// RuncOptions, when set, go to the shim as the bootstrap extension and
	// with every Create (runc binary, root, systemd cgroups...).
	RuncOptions *runcoptions.Options
	// Debug makes the shims log at debug level (to the state dir's log).
	Debug bool
}

// Manager spawns shims, finds them again from the state directory and
// drives them. It holds no connection of its own: any number of Managers
// in any number of processes may share a Root.
type Manager struct {
	cfg Config
}

// New checks cfg and fills its defaults.
func New(cfg Config) (*Manager, error) {
	if cfg.Root == "" {
		cfg.Root = DefaultRoot
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("state dir %q: %v: %w", cfg.Root, err, errdefs.ErrInvalidArgument)
	}
	cfg.Root = root
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if err := validateName("namespace", cfg.Namespace); err != nil {
		return nil, err
	}
	if cfg.PublishBinary == "" {
		if cfg.PublishBinary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("own executable: %w", err)
		}
	}
	if cfg.LoggerBinary == "" {
		cfg.LoggerBinary = cfg.PublishBinary
	}
	if cfg.RuntimeBinary == "" {
		if cfg.RuntimeBinary, err = FindRuntime(ShimBinary); err != nil {
			return nil, err
		}
	} else if cfg.RuntimeBinary, err = lookRuntime(cfg.RuntimeBinary); err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg}, nil
}

// FindRuntime looks name up in PATH, then next to the running executable.
func FindRuntime(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	self, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("runtime %s: not in PATH nor next to %s: %w", name, self, errdefs.ErrNotFound)
}

func lookRuntime(bin string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("runtime %s: %w: %w", bin, err, errdefs.ErrNotFound)
	}
	return filepath.Abs(p)
}

// Namespace returns the namespace of the Manager's containers.
func (m *Manager) Namespace() string { return m.cfg.Namespace }

// Root returns the state root.
func (m *Manager) Root() string { return m.cfg.Root }

// EventsAddress is the socket that shims forward events to (TTRPC_ADDRESS)
// and that ServeEvents listens on.
func (m *Manager) EventsAddress() string { return filepath.Join(m.cfg.Root, "events.sock") }

// grpcAddress is what shims get as containerd's gRPC address. minimgr
// serves no gRPC API and nothing listens there; shims only hash it into the
// name of their socket.
func (m *Manager) grpcAddress() string { return filepath.Join(m.cfg.Root, "minimgr.sock") }

// StateDir is the state directory of container id.
func (m *Manager) StateDir(id string) string {
	return filepath.Join(nsDir(m.cfg.Root, m.cfg.Namespace), id)
}

// CreateOpts describes a container to create.
type CreateOpts struct {
	// Bundle is an OCI bundle: config.json and its root directory.
	Bundle string
	// Image, instead of Bundle, is an image (see InitImageBundle) that is
	// unpacked into a bundle of the container's own, under
	// ROOT/bundles/NAMESPACE/ID, removed with the container.
	Image string
	ID    string
	// Args, when given, replace process.args of config.json.
	Args []string
	// Terminal gives the init process a terminal.
	Terminal bool
	IO       IO
	// StopSignal is what Stop sends first (a name such as SIGQUIT);
	// default SIGTERM.
	StopSignal string
	// Spec, when set, edits the config the container runs with (after
	// Args and Terminal are applied): environment, mounts, resources...
	Spec func(*specs.Spec) error
}

// unpackOwnBundle unpacks image into a new directory and makes it the
// bundle of container id, ROOT/bundles/NS/ID, locked until the caller
// unlocks it. The unpack goes to a directory of its own, renamed into place
// only if no other create holds that place: two creates of one ID never
// unpack into, or remove, each other's bundle. A bundle left there by a
// create that died (unlocked, and no container of that ID) is replaced.
func (m *Manager) unpackOwnBundle(ctx context.Context, id, image string) (_ string, _ *stateLock, retErr error) {
	taken := func() error {
		return fmt.Errorf("container %q in namespace %q: %w", id, m.cfg.Namespace, errdefs.ErrAlreadyExists)
	}
	if _, err := os.Stat(m.StateDir(id)); err == nil {
		return "", nil, taken()
	}
	parent := filepath.Join(m.cfg.Root, "bundles", m.cfg.Namespace)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", nil, err
	}
	// IDs never start with a dot, so temporary names never clash with one.
	tmp, err := os.MkdirTemp(parent, "."+id+".")
	if err != nil {
		return "", nil, err
	}
	lk, err := tryLockNew(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
			lk.unlock()
		}
	}()
	if err := InitImageBundle(ctx, image, tmp); err != nil {
		return "", nil, err
	}
	dst := filepath.Join(parent, id)
	if err := m.placeBundle(id, tmp, dst); err != nil {
		return "", nil, err
	}
	return dst, lk, nil
}

// leftoverWait bounds how long a create waits for a bundle in its place to
// be unlocked, or to be gone once moved aside: Cleanup holds a leftover's
// lock only to move it aside, a create under way holds its bundle's for the
// whole create. A variable for tests.
var leftoverWait = 200 * time.Millisecond

// placeBundle renames tmp, a new bundle of container id that the caller
// holds locked, to dst. A bundle left at dst by a create that died
// (unlocked, and no container of that ID) is moved aside and removed
// first. A bundle that another create holds, or that belongs to a
// container, is ErrAlreadyExists: of two creates of one ID, one places its
// bundle and the other is refused.
func (m *Manager) placeBundle(id, tmp, dst string) error {
	taken := fmt.Errorf("container %q in namespace %q: %w", id, m.cfg.Namespace, errdefs.ErrAlreadyExists)
	deadline := time.Now().Add(leftoverWait)
	for {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		old, err := tryLockNew(dst)
		switch {
		case err == nil:
		case errdefs.IsNotFound(err) || errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrBusy):
			// Being moved aside (by Cleanup or a create), or another
			// create's, under way.
			if time.Now().After(deadline) {
				return taken
			}
			time.Sleep(10 * time.Millisecond)
			continue
		default:
			return err
		}
		// Unlocked: its create has ended. It is a leftover unless that
		// create made the container.
		if _, err := os.Stat(m.StateDir(id)); err == nil {
			old.unlock()
			return taken
		}
		if err := removeLocked(dst, old); err != nil {
			return fmt.Errorf("leftover bundle %s: %w", dst, err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return taken
		}
		return err
	}
	return nil
}

// Create spawns a shim for a new container and creates the container in it
// (runc create): its init process waits for Start.
//
// The state directory is the shim's bundle and working directory. It holds
// a copy of config.json whose root.path is the absolute path of the user's
// rootfs (nothing is mounted, copied or linked), with Args and Terminal
// applied; runc runs with --bundle STATEDIR.
func (m *Manager) Create(ctx context.Context, o CreateOpts) (_ *Container, retErr error) {
	if err := validateName("container id", o.ID); err != nil {
		return nil, err
	}
	if err := o.IO.validate(o.Terminal); err != nil {
		return nil, err
	}
	ownBundle := ""
	if o.Image != "" {
		if o.Bundle != "" {
			return nil, fmt.Errorf("a bundle or an image, not both: %w", errdefs.ErrInvalidArgument)
		}
		o.Image = absImageRef(o.Image)
		b, lk, err := m.unpackOwnBundle(ctx, o.ID, o.Image)
		if err != nil {
			return nil, err
		}
		defer lk.unlock() // after the removal below, on failure
		ownBundle, o.Bundle = b, b
		defer func() {
			if retErr != nil {
				os.RemoveAll(ownBundle)
			}
		}()
	}
	bundle, spec, err := loadBundle(o.Bundle)
	if err != nil {
		return nil, err
	}
	sspec, err := stateSpec(spec, bundle, m.cfg.Namespace, o.ID, o.Args, o.Terminal)
	if err != nil {
		return nil, err
	}
	if o.Spec != nil {
		if err := o.Spec(sspec); err != nil {
			return nil, err
		}
		if sspec.Process == nil || len(sspec.Process.Args) == 0 {
			return nil, fmt.Errorf("no command to run: %w", errdefs.ErrInvalidArgument)
		}
		sspec.Process.Terminal = o.Terminal
	}
	if o.StopSignal == "" && sspec.Annotations[AnnotationStopSignal] != "" {
		o.StopSignal = sspec.Annotations[AnnotationStopSignal]
		if !strings.HasPrefix(o.StopSignal, "SIG") {
			o.StopSignal = "SIG" + o.StopSignal
		}
	}
	if o.StopSignal != "" && unix.SignalNum(o.StopSignal) == 0 {
		return nil, fmt.Errorf("stop signal %q: %w", o.StopSignal, errdefs.ErrInvalidArgument)
	}
	// runc state under this ID that is not ours (containerd's container
	// in the same namespace, a leftover): a failed create and its cleanup
	// would destroy it.
	if st := filepath.Join(m.runcRoot(), o.ID); exists(st) {
		return nil, fmt.Errorf("container %q: runc already has state in %s: %w", o.ID, st, errdefs.ErrAlreadyExists)
	}
	dir, lk, err := makeStateDir(m.cfg.Root, m.cfg.Namespace, o.ID)
	if err != nil {
		return nil, err
	}
	defer lk.unlock()

	var (
		c       *Container
		started bool // `shim start` ran: a shim may serve
	)
	defer func() {
		if retErr == nil || !started {
			if retErr != nil {
				os.RemoveAll(dir)
			}
			return
		}
		// Undo everything: the shim (also one whose answer we never
		// read: it wrote its address file), what it left, the state.
		cctx := context.WithoutCancel(ctx)
		_, rec, _ := m.load(o.ID)
		if c == nil && rec.Address != "" {
			c, _ = m.connect(cctx, dir, rec)
		}
		if c != nil {
			// A shim that created the container ignores the
			// Shutdown, and nobody else uses it: it is killed.
			c.teardown(cctx)
			_ = m.endShim(c.rec.ShimPid, o.ID, false)
		}
		_, _ = m.deleteShim(cctx, dir, rec)
		removeSocket(rec.Address)
		os.RemoveAll(dir)
	}()

	if err := writeSpec(dir, sspec); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, shimLog), nil, 0o600); err != nil {
		return nil, err
	}
	rec := record{
		ID:         o.ID,
		Namespace:  m.cfg.Namespace,
		Bundle:     bundle,
		Runtime:    m.cfg.RuntimeBinary,
		Terminal:   o.Terminal,
		OpenStdin:  o.IO.Stdin != nil || o.IO.OpenStdin,
		OwnBundle:  ownBundle != "",
		Image:      o.Image,
		StopSignal: o.StopSignal,
		Created:    time.Now().UTC(),
	}
	if err := writeRecord(dir, rec); err != nil {
		return nil, err
	}
	started = true
	res, err := m.startShim(ctx, dir, o.ID)
	if err != nil {
		return nil, err
	}
	rec.Address, rec.Protocol, rec.Version = res.Address, res.Protocol, res.Version
	if err := writeRecord(dir, rec); err != nil {
		return nil, err
	}
	c, err = m.connect(ctx, dir, rec)
	if err != nil {
		return nil, err
	}
	rec.ShimPid = c.rec.ShimPid
	if err := writeRecord(dir, rec); err != nil {
		return nil, err
	}

	paths, att, err := openIO(dir, "", o.IO, o.Terminal, m.cfg.LoggerBinary)
	if err != nil {
		return nil, err
	}
	req := &taskAPI.CreateTaskRequest{
		ID:       o.ID,
		Bundle:   dir,
		Terminal: o.Terminal,
		Stdin:    paths.stdin,
		Stdout:   paths.stdout,
		Stderr:   paths.stderr,
	}
	if req.Options, err = m.runcOptions(); err != nil {
		att.close()
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, lifecycleTimeout)
	resp, err := c.task.Create(cctx, req)
	cancel()
	if err != nil {
		att.close()
		return nil, fmt.Errorf("create %s: %w", o.ID, fromShim(err))
	}
	rec.Pid = int(resp.Pid)
	rec.Log = paths.log
	c.rec = rec
	if err := writeRecord(dir, rec); err != nil {
		att.close()
		return nil, err
	}
	att.follow()
	if err := att.connectStdin(func() { _ = c.closeStdin(context.Background(), "") }); err != nil {
		att.close()
		return nil, err
	}
	c.io = att
	return c, nil
}

func (m *Manager) runcOptions() (*anypb.Any, error) {
	if m.cfg.RuncOptions == nil {
		return nil, nil
	}
	a, err := typeurl.MarshalAnyToProto(m.cfg.RuncOptions)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return a, nil
}

// runcRoot is the runc root of the Manager's containers, where the shim
// has runc keep their state.
func (m *Manager) runcRoot() string {
	root := ""
	if o := m.cfg.RuncOptions; o != nil {
		root = o.Root
	}
	return runcroot.For(root, m.cfg.Namespace)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// notFound is the error for an unknown container.
func (m *Manager) notFound(id string) error {
	return fmt.Errorf("container %q in namespace %q: %w", id, m.cfg.Namespace, errdefs.ErrNotFound)
}

// load reads the record of container id.
func (m *Manager) load(id string) (string, record, error) {
	if err := validateName("container id", id); err != nil {
		return "", record{}, err
	}
	dir := m.StateDir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return dir, record{}, m.notFound(id)
	}
	rec, err := readRecord(dir)
	if errdefs.IsNotFound(err) {
		// The directory of a create in progress, or of a crashed one.
		lk, lerr := tryLock(dir)
		if lerr != nil {
			return dir, record{}, lerr
		}
		lk.unlock()
		return dir, record{ID: id, Namespace: m.cfg.Namespace, Runtime: m.cfg.RuntimeBinary},
			fmt.Errorf("container %q: creation never finished: %w", id, ErrShimDead)
	}
	if err == nil && rec.Address == "" {
		// A create that died between `shim start` and recording its
		// answer: the shim also writes its address in its directory.
		if data, aerr := os.ReadFile(filepath.Join(dir, "address")); aerr == nil {
			rec.Address = strings.TrimSpace(string(data))
		}
	}
	if err == nil && rec.Address == "" && rec.Exit == nil {
		// Killed before its shim served: a create in progress, or one
		// that died with no shim to ask.
		lk, lerr := tryLock(dir)
		if lerr != nil {
			return dir, rec, lerr
		}
		lk.unlock()
		return dir, rec, fmt.Errorf("container %q: creation never finished: no shim address: %w", id, ErrShimDead)
	}
	return dir, rec, err
}

// Open reconnects to the shim of container id. A shim that does not answer
// within a bound gives an error wrapping ErrShimDead; Wait and Delete
// clean such a shim up, Cleanup removes it.
func (m *Manager) Open(ctx context.Context, id string) (*Container, error) {
	dir, rec, err := m.load(id)
	if err != nil {
		return nil, err
	}
	if rec.Exit != nil {
		return nil, fmt.Errorf("container %q: shim gone, exit status %d: %w", id, rec.Exit.Status, ErrShimDead)
	}
	return m.connect(ctx, dir, rec)
}

// Wait waits for the init process of id to exit and returns its exit. When
// the shim is dead, or dies while waiting, it is cleaned up with `shim
// delete` and the exit status that reports is returned; the container's
// state stays until Delete or Cleanup.
func (m *Manager) Wait(ctx context.Context, id string) (Exit, error) {
	c, err := m.Open(ctx, id)
	if errors.Is(err, ErrShimDead) {
		return m.reap(ctx, id)
	}
	if err != nil {
		return Exit{}, err
	}
	defer c.Close()
	exit, err := c.Wait(ctx)
	if errors.Is(err, ErrShimDead) {
		c.Close()
		return m.reap(ctx, id)
	}
	return exit, err
}

// WaitExec waits for the exec process execID of container id to exit and
// returns its exit; the exec's record stays in the shim (its status can be
// read again) until an exec of the same ID replaces it.
func (m *Manager) WaitExec(ctx context.Context, id, execID string) (Exit, error) {
	c, err := m.Open(ctx, id)
	if err != nil {
		return Exit{}, err
	}
	defer c.Close()
	return c.Process(execID).Wait(ctx)
}

// reap cleans up after the dead shim of id: `shim delete` (runc delete
// --force, unmount) reports the saved exit, which is recorded; the state
// directory stays. Like containerd, it forwards TaskExit and TaskDelete to
// the events socket (best effort).
func (m *Manager) reap(ctx context.Context, id string) (Exit, error) {
	dir, rec, err := m.load(id)
	if err != nil && !errors.Is(err, ErrShimDead) {
		return Exit{}, err
	}
	if rec.Exit != nil {
		return *rec.Exit, nil
	}
	if shim, ok := m.findShim(rec.ShimPid, id); ok {
		shim.close()
		return Exit{}, fmt.Errorf("container %q: its shim (pid %d) runs but does not answer: %w", id, rec.ShimPid, ErrShimDead)
	}
	lk, err := tryLock(dir)
	if err != nil {
		return Exit{}, err
	}
	defer lk.unlock()
	return m.reapLocked(ctx, dir, rec)
}

func (m *Manager) reapLocked(ctx context.Context, dir string, rec record) (Exit, error) {
	exit, err := m.deleteShim(context.WithoutCancel(ctx), dir, rec)
	if err != nil {
		return Exit{}, fmt.Errorf("clean up after the shim of %s: %w", rec.ID, err)
	}
	removeSocket(rec.Address)
	rec.Exit = &exit
	if _, serr := os.Stat(filepath.Join(dir, recordFile)); serr == nil {
		if err := writeRecord(dir, rec); err != nil {
			return exit, err
		}
	}
	m.publishDeadExit(ctx, rec.ID, exit)
	return exit, nil
}

// Delete deletes container id and everything minimgr and the shim kept for
// it. Without force a running container is refused (ErrFailedPrecondition);
// with force it is killed first. A dead shim is cleaned up with `shim
// delete`. The exit of the init process is returned.
func (m *Manager) Delete(ctx context.Context, id string, force bool) (Exit, error) {
	c, err := m.Open(ctx, id)
	if errors.Is(err, ErrShimDead) {
		return m.removeDead(ctx, id, force, force)
	}
	if err != nil {
		return Exit{}, err
	}
	defer c.Close()
	exit, err := c.Delete(ctx, force)
	if errors.Is(err, ErrShimDead) {
		c.Close()
		return m.removeDead(ctx, id, force, force)
	}
	return exit, err
}

// removeDead reaps a dead shim (once) and removes the state directory. A
// shim process that still runs but does not answer is killed with
// killShim, else the removal is refused; a container process that still
// runs without its shim is killed (by `shim delete`) with killInit, else
// the removal is refused.
func (m *Manager) removeDead(ctx context.Context, id string, killShim, killInit bool) (Exit, error) {
	dir, rec, err := m.load(id)
	if err != nil && !errors.Is(err, ErrShimDead) {
		return Exit{}, err
	}
	lk, err := tryLock(dir)
	if err != nil {
		return Exit{}, err
	}
	defer lk.unlock()
	exit := Exit{}
	if rec.Exit == nil {
		if shim, ok := m.findShim(rec.ShimPid, id); ok {
			defer shim.close()
			if !killShim {
				return exit, fmt.Errorf("container %q: its shim (pid %d) runs but does not answer: delete -f kills it and the container: %w", id, rec.ShimPid, errdefs.ErrFailedPrecondition)
			}
			if err := shim.kill(); err != nil {
				return exit, err
			}
		}
		if !killInit {
			running, err := m.runcRunning(ctx, id)
			if err != nil {
				return exit, fmt.Errorf("container %q: its shim is gone and whether its processes run is unknown: delete -f kills them: %v: %w", id, err, errdefs.ErrUnavailable)
			}
			if running {
				return exit, fmt.Errorf("container %q: its shim is gone but its processes run: delete -f kills them: %w", id, errdefs.ErrFailedPrecondition)
			}
		}
	}
	if rec.Exit != nil {
		exit = *rec.Exit
	} else if exit, err = m.reapLocked(ctx, dir, rec); err != nil {
		return exit, err
	}
	endLoggers(dir)
	if err := removeStateDir(dir); err != nil {
		return exit, fmt.Errorf("remove state of %s: %w", id, err)
	}
	m.removeOwnBundle(rec)
	return exit, nil
}

// removeOwnBundle removes the bundle Create unpacked for the container.
func (m *Manager) removeOwnBundle(rec record) {
	if rec.OwnBundle && rec.Bundle == filepath.Join(m.cfg.Root, "bundles", m.cfg.Namespace, rec.ID) {
		os.RemoveAll(rec.Bundle)
	}
}

// Status is what List and State say of a container.
type Status string

// Statuses. Dead is a shim that does not answer; Creating is a container
// whose creation is in progress in some minimgr process.
const (
	StatusCreated  Status = "created"
	StatusRunning  Status = "running"
	StatusPausing  Status = "pausing"
	StatusPaused   Status = "paused"
	StatusStopped  Status = "stopped"
	StatusUnknown  Status = "unknown"
	StatusDead     Status = "dead"
	StatusCreating Status = "creating"
)

// Info is one container in List.
type Info struct {
	ID        string    `json:"id"`
	Namespace string    `json:"namespace"`
	Pid       int       `json:"pid"`
	Status    Status    `json:"status"`
	Bundle    string    `json:"bundle"`
	StateDir  string    `json:"state_dir"`
	ShimPid   int       `json:"shim_pid,omitempty"`
	Created   time.Time `json:"created"`
	Exit      *Exit     `json:"exit,omitempty"`
	Terminal  bool      `json:"terminal,omitempty"`
	// Command is the init's command line.
	Command []string `json:"command,omitempty"`
	// Log is the file of the init's output.
	Log string `json:"log,omitempty"`
	// Error says why a shim is taken for dead.
	Error string `json:"error,omitempty"`
}

// List returns the containers of the namespace, sorted by ID. Shims are
// asked in parallel, each within a bound; one that does not answer is
// listed as dead.
func (m *Manager) List(ctx context.Context) ([]Info, error) {
	entries, err := os.ReadDir(nsDir(m.cfg.Root, m.cfg.Namespace))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			ids = append(ids, e.Name())
		}
	}
	out := make([]Info, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { out[i] = m.info(ctx, id) })
	}
	wg.Wait()
	return out, nil
}

// Inspect returns what List says of container id.
func (m *Manager) Inspect(ctx context.Context, id string) (Info, error) {
	if err := validateName("container id", id); err != nil {
		return Info{}, err
	}
	if _, err := os.Stat(m.StateDir(id)); errors.Is(err, os.ErrNotExist) {
		return Info{}, m.notFound(id)
	}
	return m.info(ctx, id), nil
}

// info probes one container.
func (m *Manager) info(ctx context.Context, id string) Info {
	info := Info{ID: id, Namespace: m.cfg.Namespace, StateDir: m.StateDir(id), Status: StatusUnknown}
	dir, rec, err := m.load(id)
	info.Bundle, info.Pid, info.ShimPid, info.Created, info.Exit = rec.Bundle, rec.Pid, rec.ShimPid, rec.Created, rec.Exit
	info.Terminal, info.Log = rec.Terminal, rec.Log
	if spec, err := readSpec(filepath.Join(dir, configFile)); err == nil {
		info.Command = spec.Process.Args
	}
	switch {
	case errors.Is(err, ErrBusy):
		info.Status = StatusCreating
		return info
	case errors.Is(err, ErrShimDead):
		info.Status, info.Error = StatusDead, err.Error()
		return info
	case err != nil:
		info.Error = err.Error()
		return info
	case rec.Exit != nil:
		info.Status = StatusStopped
		return info
	}
	c, err := m.connect(ctx, dir, rec)
	if err != nil {
		info.Status, info.Error = StatusDead, err.Error()
		return info
	}
	defer c.Close()
	st, err := c.State(ctx)
	switch {
	case errors.Is(err, ErrShimDead), errors.Is(err, context.DeadlineExceeded):
		info.Status, info.Error = StatusDead, err.Error()
	case err != nil:
		info.Error = err.Error()
	default:
		info.Status, info.Pid, info.Exit = st.Status, st.Pid, st.Exit
	}
	return info
}

// Removed is one container that Cleanup removed.
type Removed struct {
	ID string `json:"id"`
	// Reason is "dead shim", "stopped", "unfinished create" or "shim
	// without state".
	Reason string `json:"reason"`
	Exit   Exit   `json:"exit"`
}

// Cleanup removes the state of dead shims (after `shim delete`), of stopped
// containers (Delete, Shutdown) and of creates that never finished (their
// unpacked images included), and kills the shims of this root and
// namespace whose state directory is gone. Running, created and paused
// containers, and those another minimgr is working on, are left alone.
func (m *Manager) Cleanup(ctx context.Context) ([]Removed, error) {
	defer m.cleanupOwnBundles()
	parent := nsDir(m.cfg.Root, m.cfg.Namespace)
	orphans, oerr := m.endOrphanShims()
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return orphans, oerr
	}
	if err != nil {
		return orphans, errors.Join(oerr, err)
	}
	var (
		mu      sync.Mutex
		removed = orphans
		errs    = []error{oerr}
		wg      sync.WaitGroup
	)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			tmp := filepath.Join(parent, name)
			if strings.Contains(name, ".deleted.") {
				// A state directory whose removal was cut short (or
				// is under way: removing it twice does no harm).
				os.RemoveAll(tmp)
				continue
			}
			// A temporary directory of a create that died before it
			// was renamed into place: no shim was ever started.
			removeUnlocked(tmp)
			continue
		}
		wg.Go(func() {
			r, ok, err := m.cleanupOne(ctx, name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
			if ok {
				removed = append(removed, r)
			}
		})
	}
	wg.Wait()
	os.Remove(parent) // only when empty
	return removed, errors.Join(errs...)
}

// cleanupOwnBundles removes what image creates that died left under
// ROOT/bundles/NS: a temporary unpack directory, or a bundle renamed into
// place whose container was never recorded. A create in progress holds
// its directory locked; the bundle of a container goes with the container.
func (m *Manager) cleanupOwnBundles() {
	parent := filepath.Join(m.cfg.Root, "bundles", m.cfg.Namespace)
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if name := e.Name(); strings.HasPrefix(name, ".") || !exists(m.StateDir(name)) {
			removeUnlocked(filepath.Join(parent, name))
		}
	}
	// parent stays: a create may have made it and not yet its directory.
}

// tmpSettle is how old a create's temporary directory must be before
// Cleanup takes it for a leftover: a create makes it, then locks it.
const tmpSettle = 10 * time.Second

// removeUnlocked removes dir unless some create holds it locked, or, for a
// temporary directory (a name beginning with a dot), may be about to.
func removeUnlocked(dir string) {
	if strings.HasPrefix(filepath.Base(dir), ".") {
		if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < tmpSettle {
			return
		}
	}
	if lk, err := tryLockNew(dir); err == nil {
		_ = removeLocked(dir, lk)
	}
}

// removeLocked removes dir, whose lock lk the caller holds, and unlocks it.
// An error says that dir is still there.
func removeLocked(dir string, lk *stateLock) error {
	// A bundle's place is moved aside before its removal, so that a create
	// of its ID waiting for the lock (placeBundle) finds it free at
	// once; the rename's leftover, a dot name, goes as an old temporary.
	if !strings.HasPrefix(filepath.Base(dir), ".") {
		gone := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".deleted."+randHex(4))
		if os.Rename(dir, gone) == nil {
			lk.unlock()
			os.RemoveAll(gone)
			return nil
		}
	}
	err := os.RemoveAll(dir)
	lk.unlock()
	return err
}

func (m *Manager) cleanupOne(ctx context.Context, id string) (Removed, bool, error) {
	r := Removed{ID: id}
	c, err := m.Open(ctx, id)
	if err == nil {
		defer c.Close()
		var st State
		st, err = c.State(ctx)
		switch {
		case err == nil && st.Status != StatusStopped:
			return r, false, nil // running, created, paused: kept
		case err == nil:
			r.Reason = "stopped"
		case errdefs.IsNotFound(err):
			// The shim answers but holds no container: a create that
			// died half way. Delete shuts it down and cleans up.
			r.Reason = "unfinished create"
		}
		if err == nil || errdefs.IsNotFound(err) {
			exit, err := c.Delete(ctx, false)
			if errors.Is(err, ErrBusy) {
				return r, false, nil
			}
			if !errors.Is(err, ErrShimDead) {
				r.Exit = exit
				return r, err == nil, err
			}
		}
		c.Close()
	}
	switch {
	case errors.Is(err, ErrBusy):
		return r, false, nil
	case !errors.Is(err, ErrShimDead):
		return r, false, err
	}
	_, rec, _ := m.load(id)
	r.Reason = "dead shim"
	if rec.Address == "" {
		r.Reason = "unfinished create"
	}
	// A shim that runs but does not answer may be slow: it is kept. The
	// processes of a container whose shim is gone are killed.
	exit, err := m.removeDead(ctx, id, false, true)
	if errors.Is(err, ErrBusy) || errdefs.IsFailedPrecondition(err) {
		return r, false, nil
	}
	r.Exit = exit
	return r, err == nil, err
}
