package process

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// DefaultRuntimeRoot is where runc keeps container state, one directory per
// namespace, as containerd's runc shim does.
const DefaultRuntimeRoot = "/run/containerd/runc"

// Runtime names the OCI runtime binary and where it keeps its state.
type Runtime struct {
	Binary        string `json:"binary,omitempty"` // default "runc", looked up in PATH
	Root          string `json:"root,omitempty"`   // default DefaultRuntimeRoot/<namespace>
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
		r.Root = filepath.Join(DefaultRuntimeRoot, ns)
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
