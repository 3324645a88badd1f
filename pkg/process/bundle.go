package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
		a := newAdapter(rt, bundle, id)
		a.rc.PdeathSignal = 0 // `shim delete` exits at once
		if err := a.delete(ctx); err != nil {
			errs = errors.Join(errs, err)
		}
	}
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = errors.Join(errs, fmt.Errorf("unmount rootfs: %w", err))
	}
	return exit, errs
}

// maxIDLength bounds container and exec IDs (containerd's own limit).
const maxIDLength = 76

// ValidateID checks a container or exec ID before any path is built from it:
// 1 to 76 of [A-Za-z0-9_.-], starting with a letter or digit (so never "."
// or ".."), and no "/".
func ValidateID(id string) error {
	ok := len(id) > 0 && len(id) <= maxIDLength
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		ok = alnum || i > 0 && (c == '_' || c == '.' || c == '-')
	}
	if !ok {
		return fmt.Errorf("invalid id %q: want 1 to %d of [A-Za-z0-9_.-] starting with a letter or digit: %w", id, maxIDLength, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateBundle checks that bundle is an absolute directory holding a
// config.json that parses, before anything is written into it.
func ValidateBundle(bundle string) error {
	_, err := loadSpec(bundle)
	return err
}

// bundleSpec is the part of a bundle's config.json that the shim acts on;
// the rest is the runtime's to read and to judge. Decoding the whole
// runtime spec would leave encoding/json's field tables of every type it
// names in the daemon's heap for good (about 150 KiB of live heap per shim
// by a heap profile), for fields the shim never reads. The whole document
// is still parsed: a config.json that is not JSON is refused here; one that
// is JSON but not a runtime spec is refused by the runtime, and that
// failure is classified by specRefused.
type bundleSpec struct {
	Root *struct {
		Path string `json:"path"`
	} `json:"root"`
	Linux *struct {
		Namespaces []specs.LinuxNamespace `json:"namespaces"`
	} `json:"linux"`
}

// loadSpec reads the part of the bundle's config.json the shim needs.
func loadSpec(bundle string) (*bundleSpec, error) {
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return nil, fmt.Errorf("bundle %q is not a clean absolute path: %w", bundle, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	var spec bundleSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// specRefused classifies a failed runtime create of bundle: when its
// config.json does not decode as a runtime spec, the failure is bad input
// (errdefs.ErrInvalidArgument), reported with the decoder's words and the
// runtime's. The whole spec is decoded here, on the failure path only:
// loadSpec reads just the fields the shim needs (see bundleSpec).
func specRefused(bundle string, err error) error {
	data, rerr := os.ReadFile(filepath.Join(bundle, "config.json"))
	if rerr != nil {
		return err
	}
	var spec specs.Spec
	if derr := json.Unmarshal(data, &spec); derr != nil {
		return fmt.Errorf("bundle %s: config.json: %v: %w: %w", bundle, derr, errdefs.ErrInvalidArgument, err)
	}
	return err
}

// checkRoot checks that the root filesystem the spec names exists, once the
// rootfs mounts are in place.
func checkRoot(bundle string, spec *bundleSpec) error {
	if spec.Root == nil || spec.Root.Path == "" {
		return nil // the runtime decides
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("root filesystem %s of bundle %s is missing: %w", spec.Root.Path, bundle, errdefs.ErrInvalidArgument)
	}
	return nil
}

// sharedPIDNamespace reports whether the container has no PID namespace of
// its own (the host's, or another's, as Kubernetes' shareProcessNamespace
// and hostPID give): its init's exit does not end its other processes.
func sharedPIDNamespace(spec *bundleSpec) bool {
	if spec.Linux == nil {
		return true
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path != ""
		}
	}
	return true
}
