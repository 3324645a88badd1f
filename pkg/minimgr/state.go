package minimgr

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Files of a container's state directory that minimgr owns. The shim adds
// its own (runtime.json, address, init.pid, exit.json, log.json) and runc is
// given the directory as its bundle.
const (
	recordFile = "minimgr.json" // the record: bundle, shim address, pids
	lockFile   = "lock"         // flock: held while creating and deleting
	configFile = "config.json"  // the rewritten OCI config the shim runs
	shimLog    = "log"          // the shim appends its log to this file
	ioDir      = "io"           // FIFOs and log files of the processes
)

// Exit is how a process ended.
type Exit struct {
	Pid      int       `json:"pid,omitempty"`
	Status   int       `json:"exit_status"`
	ExitedAt time.Time `json:"exited_at"`
}

// record is minimgr.json: what a later minimgr process needs to find the
// shim again and to clean up after it.
type record struct {
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	// Bundle is the user's bundle; the state directory is the shim's.
	Bundle string `json:"bundle"`
	// Runtime is the shim binary that served the container: `delete`
	// must be run with the same one.
	Runtime string `json:"runtime"`
	// Address, Protocol and Version are the shim's bootstrap answer.
	Address  string `json:"address,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Version  int32  `json:"version,omitempty"`
	// ShimPid is the shim daemon's pid as Connect reported it.
	ShimPid int `json:"shim_pid,omitempty"`
	// Pid is the init pid from Create.
	Pid      int  `json:"pid,omitempty"`
	Terminal bool `json:"terminal,omitempty"`
	// OpenStdin: the init has a stdin FIFO that clients attach to.
	OpenStdin bool `json:"open_stdin,omitempty"`
	// OwnBundle: Bundle was unpacked from an image for this container and
	// goes with it.
	OwnBundle bool `json:"own_bundle,omitempty"`
	// Image is the image the bundle was unpacked from.
	Image string `json:"image,omitempty"`
	// StopSignal is the signal Stop sends first (a name, SIGTERM if empty).
	StopSignal string `json:"stop_signal,omitempty"`
	// Log is the file the init's output goes to when it runs detached.
	Log     string    `json:"log,omitempty"`
	Created time.Time `json:"created"`
	// Exit is set once the shim was found dead and cleaned up with
	// `shim delete`: the container is gone, only its state remains.
	Exit *Exit `json:"exit,omitempty"`
}

// validateName checks an ID or namespace before a path is built from it,
// with containerd's rules for identifiers.
func validateName(kind, s string) error {
	if err := identifiers.Validate(s); err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	return nil
}

// nsDir is the directory of namespace ns under root.
func nsDir(root, ns string) string { return filepath.Join(root, ns) }

// readRecord reads the record of the state directory dir.
func readRecord(dir string) (record, error) {
	var r record
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("%s: no %s: %w", dir, recordFile, errdefs.ErrNotFound)
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: %v: %w", filepath.Join(dir, recordFile), err, errdefs.ErrDataLoss)
	}
	return r, nil
}

// writeRecord replaces the record of dir atomically.
func writeRecord(dir string, r record) error {
	return writeFileAtomic(filepath.Join(dir, recordFile), r)
}

func writeFileAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// ErrBusy is wrapped by the errors of an operation refused because another
// minimgr process is creating or deleting the same container.
var ErrBusy = fmt.Errorf("busy: another minimgr is creating or deleting it: %w", errdefs.ErrUnavailable)

// stateLock is an exclusive flock on a state directory's lock file. It is
// taken without waiting: minimgr processes never queue behind each other.
type stateLock struct{ f *os.File }

// The lock file is made with the directory (makeStateDir): a directory
// without one is being removed, or was never finished, and is reported as
// not found, so that no lock file is ever made again in a directory that
// Delete is removing.
func tryLock(dir string) (*stateLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: no lock file: %w", dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return lockDir(dir, f)
}

// tryLockNew is tryLock for a directory of our own that may lack its lock
// file yet (a new one, or a leftover that is removed).
func tryLockNew(dir string) (*stateLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return lockDir(dir, f)
}

// lockDir locks f, the lock file of dir, and checks that it still is: a
// directory moved aside for its removal between the open and the lock
// takes its lock file along, and holding that would lock nothing.
// ErrNotFound then.
func lockDir(dir string, f *os.File) (*stateLock, error) {
	lk, err := lockFD(dir, f)
	if err != nil {
		return nil, err
	}
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(filepath.Join(dir, lockFile), &now) != nil ||
		held.Dev != now.Dev || held.Ino != now.Ino {
		lk.unlock()
		return nil, fmt.Errorf("%s: moved or removed while being locked: %w", dir, errdefs.ErrNotFound)
	}
	return lk, nil
}

func lockFD(dir string, f *os.File) (*stateLock, error) {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return &stateLock{f: f}, nil
}

// unlock releases the lock explicitly before closing: a child forked by
// another goroutine while the lock was held shares the open file
// description until its exec, and closing our descriptor alone would
// leave the lock held by that child meanwhile.
func (l *stateLock) unlock() {
	if l != nil && l.f != nil {
		_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

// makeStateDir creates the state directory of id in ns atomically, locked:
// a temporary directory is made and locked, then renamed into place, so no
// one ever sees the final directory unlocked and without a record. It fails
// with ErrAlreadyExists when the ID is taken.
func makeStateDir(root, ns, id string) (string, *stateLock, error) {
	parent := nsDir(root, ns)
	if err := os.MkdirAll(parent, 0o711); err != nil {
		return "", nil, fmt.Errorf("state dir: %w", err)
	}
	dir := filepath.Join(parent, id)
	if _, err := os.Lstat(dir); err == nil {
		return "", nil, fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrAlreadyExists)
	}
	// IDs never start with a dot, so temporary names never clash with one.
	tmp, err := os.MkdirTemp(parent, "."+id+".")
	if err != nil {
		return "", nil, fmt.Errorf("state dir: %w", err)
	}
	lk, err := tryLockNew(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	if err := os.Chmod(tmp, 0o711); err != nil {
		lk.unlock()
		os.RemoveAll(tmp)
		return "", nil, err
	}
	// rename(2) onto an existing non-empty directory fails; an existing
	// empty one can only be the leftover of a crashed minimgr.
	if err := os.Rename(tmp, dir); err != nil {
		lk.unlock()
		os.RemoveAll(tmp)
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return "", nil, fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrAlreadyExists)
		}
		return "", nil, fmt.Errorf("state dir: %w", err)
	}
	return dir, lk, nil
}

// removeStateDir removes a state directory: renamed out of the way first
// (atomically), so that nothing can make a file in it while it is being
// removed and no one finds it half removed; Cleanup removes a rename whose
// removal was cut short.
func removeStateDir(dir string) error {
	gone := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".deleted."+randHex(4))
	if err := os.Rename(dir, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(gone)
}

// randHex returns n random bytes in hex: names of directories moved aside
// before their removal, and of shims' socket directories. (crypto/rand's
// Read never fails.)
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
