package process

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/internal/runcroot"
)

// Runtime names the OCI runtime binary and where it keeps its state.
type Runtime struct {
	Binary        string `json:"binary,omitempty"` // default "runc", looked up in PATH
	Root          string `json:"root,omitempty"`   // default runcroot.For("", namespace)
	SystemdCgroup bool   `json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool   `json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool   `json:"no_new_keyring,omitempty"`
	IoUID         int    `json:"io_uid,omitempty"`
	IoGID         int    `json:"io_gid,omitempty"`
	CriuWorkPath  string `json:"criu_work_path,omitempty"`
	ShimCgroup    string `json:"shim_cgroup,omitempty"`
}

// WithDefaults fills the unset fields for namespace ns.
func (r Runtime) WithDefaults(ns string) Runtime {
	if r.Binary == "" {
		r.Binary = "runc"
	}
	if r.Root == "" {
		r.Root = runcroot.For("", ns)
	}
	return r
}

// Check verifies that the runtime binary can be found.
func (r Runtime) Check() error {
	bin := r.Binary
	if bin == "" {
		bin = "runc"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("runtime binary %q: %v: %w", bin, err, errdefs.ErrFailedPrecondition)
	}
	if r.SystemdCgroup {
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			return fmt.Errorf("SystemdCgroup is set but systemd is not running on this host: %w", errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

// client returns the go-runc client of bundle, logging to bundle/log.json.
func (r Runtime) client(bundle string) *runc.Runc {
	return &runc.Runc{
		Command:       r.Binary,
		Root:          r.Root,
		Log:           filepath.Join(bundle, "log.json"),
		LogFormat:     runc.JSON,
		PdeathSignal:  unix.SIGKILL,
		Setpgid:       true,
		SystemdCgroup: r.SystemdCgroup,
	}
}

// StateDir is the runtime's state directory of container id.
func (r Runtime) StateDir(id string) string { return filepath.Join(r.Root, id) }

// runtimeLog reads the runtime's log.json from a given offset, so that an
// error carries the runtime's own words of the call that failed.
type runtimeLog struct {
	path   string
	offset int64
}

func markLog(path string) runtimeLog {
	l := runtimeLog{path: path}
	if st, err := os.Stat(path); err == nil {
		l.offset = st.Size()
	}
	return l
}

// lastError returns the last error message logged since the mark.
func (l runtimeLog) lastError() string {
	f, err := os.Open(l.path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(l.offset, io.SeekStart); err != nil {
		return ""
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return ""
	}
	var last string
	for _, line := range bytes.Split(data, []byte("\n")) {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Level == "error" && entry.Msg != "" {
			last = entry.Msg
		}
	}
	return last
}

// wrap adds the runtime's logged error text to err, keeping err in the chain.
func (l runtimeLog) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if msg := l.lastError(); msg != "" {
		return fmt.Errorf("%s: %s: %w", what, msg, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// stateGone reports whether the runtime has no state left for id: the state
// directory is absent. Used instead of matching the runtime's error text.
func (r Runtime) stateGone(id string) bool {
	_, err := os.Stat(r.StateDir(id))
	return errors.Is(err, os.ErrNotExist)
}

// adapter is the one way the package calls the OCI runtime for a container:
// each call notes where runc's log.json stands, and a failure comes back
// with runc's own words and exactly one errdefs class, decided from the
// runtime's state after the failure, never from the text of its error:
//
//   - the container is gone from the runtime: errdefs.ErrNotFound;
//   - it is stopped: ErrNotFound for a kill (containerd and CRI take that as
//     "already finished"), ErrFailedPrecondition for anything else;
//   - the runtime binary is missing: ErrFailedPrecondition;
//   - otherwise the error keeps its own class (a context's deadline, ...) or
//     none (unknown).
type adapter struct {
	rc  *runc.Runc
	cfg Runtime
	id  string
}

func newAdapter(cfg Runtime, bundle, id string) *adapter {
	return &adapter{rc: cfg.client(bundle), cfg: cfg, id: id}
}

// stateBound bounds the `runc state` that classifies a failure.
const stateBound = 5 * time.Second

// do runs one runtime call named op ("kill", "exec", ...) and classifies its
// failure.
func (a *adapter) do(ctx context.Context, op string, call func() error) error {
	logm := markLog(a.rc.Log)
	err := call()
	if err == nil {
		return nil
	}
	what := filepath.Base(a.cfg.Binary) + " " + op
	err = logm.wrap(what, err)
	if cerr := ctx.Err(); cerr != nil {
		// The runtime was killed when ctx ended. That is the failure; a
		// `runc state` to classify it would spend another stateBound of a
		// caller that has none left.
		return fmt.Errorf("%w: %w", err, cerr)
	}
	if class := a.classify(ctx, op, err); class != nil {
		return fmt.Errorf("%w: %w", err, class)
	}
	return err
}

func (a *adapter) classify(ctx context.Context, op string, err error) error {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		if _, lerr := exec.LookPath(a.cfg.Binary); lerr != nil {
			return errdefs.ErrFailedPrecondition
		}
	}
	if errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsAlreadyExists(err) ||
		errdefs.IsInvalidArgument(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil // already classified
	}
	if op == "create" || op == "restore" {
		return nil
	}
	if a.cfg.stateGone(a.id) {
		return errdefs.ErrNotFound
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stateBound)
	defer cancel()
	st, serr := a.rc.State(sctx, a.id)
	if serr != nil {
		if a.cfg.stateGone(a.id) {
			return errdefs.ErrNotFound
		}
		return nil
	}
	if st.Status == "stopped" {
		if op == "kill" {
			return errdefs.ErrNotFound
		}
		return errdefs.ErrFailedPrecondition
	}
	return nil
}

func (a *adapter) create(ctx context.Context, bundle string, opts *runc.CreateOpts) error {
	return a.do(ctx, "create", func() error { return a.rc.Create(ctx, a.id, bundle, opts) })
}

func (a *adapter) start(ctx context.Context) error {
	return a.do(ctx, "start", func() error { return a.rc.Start(ctx, a.id) })
}

func (a *adapter) exec(ctx context.Context, spec specs.Process, opts *runc.ExecOpts) error {
	return a.do(ctx, "exec", func() error { return a.rc.Exec(ctx, a.id, spec, opts) })
}

func (a *adapter) kill(ctx context.Context, sig int, all bool) error {
	return a.do(ctx, "kill", func() error { return a.rc.Kill(ctx, a.id, sig, &runc.KillOpts{All: all}) })
}

// delete removes the runtime's state (killing what still runs); a container
// the runtime no longer has is not an error.
func (a *adapter) delete(ctx context.Context) error {
	err := a.do(ctx, "delete", func() error { return a.rc.Delete(ctx, a.id, &runc.DeleteOpts{Force: true}) })
	if err != nil && a.cfg.stateGone(a.id) {
		return nil
	}
	return err
}

func (a *adapter) pause(ctx context.Context) error {
	return a.do(ctx, "pause", func() error { return a.rc.Pause(ctx, a.id) })
}

func (a *adapter) resume(ctx context.Context) error {
	return a.do(ctx, "resume", func() error { return a.rc.Resume(ctx, a.id) })
}

func (a *adapter) update(ctx context.Context, res *specs.LinuxResources) error {
	return a.do(ctx, "update", func() error { return a.rc.Update(ctx, a.id, res) })
}

func (a *adapter) ps(ctx context.Context) ([]int, error) {
	var pids []int
	err := a.do(ctx, "ps", func() (err error) { pids, err = a.rc.Ps(ctx, a.id); return err })
	return pids, err
}

func (a *adapter) checkpoint(ctx context.Context, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error {
	return a.do(ctx, "checkpoint", func() error { return a.rc.Checkpoint(ctx, a.id, opts, actions...) })
}

func (a *adapter) restore(ctx context.Context, bundle string, opts *runc.RestoreOpts) error {
	return a.do(ctx, "restore", func() error { _, err := a.rc.Restore(ctx, a.id, bundle, opts); return err })
}
