package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
)

// Files the shim keeps in a container's bundle, so that `shim delete` can
// clean up and report after the shim itself is gone.
const (
	runtimeFile = "runtime.json" // Runtime options given at create
	exitFile    = "exit.json"    // the init's exit, written before TaskExit is published
	initPidFile = "init.pid"     // written by runc create --pid-file
)

// ExitRecord is the persisted exit of a container's init process.
type ExitRecord struct {
	Pid      int       `json:"pid"`
	Status   int       `json:"exit_status"`
	ExitedAt time.Time `json:"exited_at"`
}

// SaveRuntime persists the runtime options of the container in bundle.
func SaveRuntime(bundle string, r Runtime) error {
	return writeJSON(filepath.Join(bundle, runtimeFile), r)
}

// LoadRuntime reads the runtime options saved in bundle. A bundle without
// them gives the defaults for namespace ns.
func LoadRuntime(bundle, ns string) (Runtime, error) {
	var r Runtime
	data, err := os.ReadFile(filepath.Join(bundle, runtimeFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return r, err
	default:
		if err := json.Unmarshal(data, &r); err != nil {
			return r, fmt.Errorf("%s: %v: %w", runtimeFile, err, errdefs.ErrDataLoss)
		}
	}
	return r.WithDefaults(ns), nil
}

// ReadExit returns the saved exit of the init process of bundle.
func ReadExit(bundle string) (ExitRecord, error) {
	var e ExitRecord
	data, err := os.ReadFile(filepath.Join(bundle, exitFile))
	if errors.Is(err, os.ErrNotExist) {
		return e, fmt.Errorf("no exit saved in %s: %w", bundle, errdefs.ErrNotFound)
	}
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return e, fmt.Errorf("%s: %v: %w", exitFile, err, errdefs.ErrDataLoss)
	}
	return e, nil
}

func writeExit(bundle string, e ExitRecord) error {
	return writeJSON(filepath.Join(bundle, exitFile), e)
}

// ReadInitPid returns the pid runc wrote for the init process of bundle.
func ReadInitPid(bundle string) (int, error) {
	return readPidFile(filepath.Join(bundle, initPidFile))
}

func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s: %q", path, data)
	}
	return pid, nil
}

// writeJSON replaces path atomically (write to a temporary file, rename).
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Cleanup removes what is left of container id of bundle after its shim is
// gone or done: the runtime state (killing what still runs), the rootfs
// mount. It reports the saved exit, or 137 when none was saved. It is
// idempotent and fine on an empty or half-removed bundle.
func Cleanup(ctx context.Context, bundle, ns, id string) (ExitRecord, error) {
	exit, rerr := ReadExit(bundle)
	if rerr != nil {
		exit = ExitRecord{Status: 137, ExitedAt: time.Now()}
		if pid, err := ReadInitPid(bundle); err == nil {
			exit.Pid = pid
		}
	}
	var errs error
	rt, err := LoadRuntime(bundle, ns)
	if err != nil {
		errs = err
		rt = Runtime{}.WithDefaults(ns)
	}
	if !rt.stateGone(id) {
		if _, lerr := exec.LookPath(rt.Binary); lerr != nil {
			errs = errors.Join(errs, fmt.Errorf("runtime %q: %w", rt.Binary, lerr))
		} else {
			r := rt.client(bundle)
			r.PdeathSignal = 0
			logm := markLog(r.Log)
			if err := r.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil && !rt.stateGone(id) {
				errs = errors.Join(errs, logm.wrap("runc delete", err))
			}
		}
	}
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = errors.Join(errs, fmt.Errorf("unmount rootfs: %w", err))
	}
	return exit, errs
}
