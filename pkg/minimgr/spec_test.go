package minimgr

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func writeBundle(t *testing.T, config string, rootfs bool) string {
	t.Helper()
	dir := t.TempDir()
	if config != "" {
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if rootfs {
		if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadBundle(t *testing.T) {
	good := `{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}`
	tests := []struct {
		name   string
		bundle func(t *testing.T) string
		want   error
	}{
		{"good", func(t *testing.T) string { return writeBundle(t, good, true) }, nil},
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, errdefs.ErrNotFound},
		{"a file", func(t *testing.T) string {
			return filepath.Join(writeBundle(t, good, true), "config.json")
		}, errdefs.ErrInvalidArgument},
		{"no config.json", func(t *testing.T) string { return writeBundle(t, "", true) }, errdefs.ErrNotFound},
		{"bad json", func(t *testing.T) string { return writeBundle(t, "{", true) }, errdefs.ErrInvalidArgument},
		{"no process", func(t *testing.T) string {
			return writeBundle(t, `{"ociVersion":"1.0.2","root":{"path":"rootfs"}}`, true)
		}, errdefs.ErrInvalidArgument},
		{"no root", func(t *testing.T) string {
			return writeBundle(t, `{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"}}`, true)
		}, errdefs.ErrInvalidArgument},
		{"no rootfs dir", func(t *testing.T) string { return writeBundle(t, good, false) }, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := loadBundle(tc.bundle(t))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestStateSpec(t *testing.T) {
	base := &specs.Spec{
		Process: &specs.Process{Args: []string{"sh"}, Terminal: true, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Linux:   &specs.Linux{},
	}
	tests := []struct {
		name       string
		spec       *specs.Spec
		args       []string
		terminal   bool
		wantArgs   []string
		wantRoot   string
		wantCgroup string
		wantErr    error
	}{
		{name: "defaults", spec: base, wantArgs: []string{"sh"}, wantRoot: "/b/rootfs", wantCgroup: "/minimgr/ns/id"},
		{name: "args and terminal", spec: base, args: []string{"echo", "hi"}, terminal: true, wantArgs: []string{"echo", "hi"}, wantRoot: "/b/rootfs", wantCgroup: "/minimgr/ns/id"},
		{name: "absolute root, own cgroup", spec: &specs.Spec{
			Process: &specs.Process{Args: []string{"sh"}},
			Root:    &specs.Root{Path: "/elsewhere"},
			Linux:   &specs.Linux{CgroupsPath: "/mine"},
		}, wantArgs: []string{"sh"}, wantRoot: "/elsewhere", wantCgroup: "/mine"},
		{name: "no command", spec: &specs.Spec{Process: &specs.Process{}, Root: &specs.Root{Path: "r"}}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stateSpec(tc.spec, "/b", "ns", "id", tc.args, tc.terminal)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.Process.Args, " ") != strings.Join(tc.wantArgs, " ") || got.Process.Terminal != tc.terminal {
				t.Errorf("process %+v", got.Process)
			}
			if got.Root.Path != tc.wantRoot {
				t.Errorf("root %q, want %q", got.Root.Path, tc.wantRoot)
			}
			if got.Linux.CgroupsPath != tc.wantCgroup {
				t.Errorf("cgroups path %q, want %q", got.Linux.CgroupsPath, tc.wantCgroup)
			}
			// The user's spec is untouched.
			if base.Root.Path != "rootfs" || base.Process.Args[0] != "sh" || !base.Process.Terminal || base.Linux.CgroupsPath != "" {
				t.Errorf("the user's spec was modified: %+v %+v %+v", base.Root, base.Process, base.Linux)
			}
		})
	}
}

func TestSocketDir(t *testing.T) {
	if got := socketDir("/run/minimgr"); got != "/run/minimgr/s" {
		t.Errorf("short root: %s", got)
	}
	long := "/" + strings.Repeat("x", 60)
	if got := socketDir(long); got != fallbackSocketDir {
		t.Errorf("long root: %s", got)
	}
}

func TestBusyboxSpec(t *testing.T) {
	s := BusyboxSpec()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back specs.Spec
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Process.Terminal || strings.Join(back.Process.Args, " ") != "sh" || back.Root.Path != "rootfs" {
		t.Errorf("process/root: %+v %+v", back.Process, back.Root)
	}
	var mounts []string
	for _, m := range back.Mounts {
		mounts = append(mounts, m.Destination)
	}
	for _, want := range []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"} {
		if !strings.Contains(","+strings.Join(mounts, ",")+",", ","+want+",") {
			t.Errorf("no %s mount in %v", want, mounts)
		}
	}
	var ns []string
	for _, n := range back.Linux.Namespaces {
		ns = append(ns, string(n.Type))
	}
	if got := strings.Join(ns, ","); got != "pid,network,ipc,uts,mount" {
		t.Errorf("namespaces %s", got)
	}
	if len(back.Linux.MaskedPaths) == 0 || len(back.Linux.ReadonlyPaths) == 0 || len(back.Process.Rlimits) != 1 {
		t.Error("masked/readonly paths or rlimits missing")
	}
}

func TestMakeStateDir(t *testing.T) {
	root := t.TempDir()
	dir, lk, err := makeStateDir(root, "ns", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tryLock(dir); !errors.Is(err, ErrBusy) {
		t.Errorf("second lock: %v, want ErrBusy", err)
	}
	if _, _, err := makeStateDir(root, "ns", "c1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("same ID again: %v", err)
	}
	lk.unlock()
	l2, err := tryLock(dir)
	if err != nil {
		t.Errorf("lock after unlock: %v", err)
	}
	l2.unlock()
	entries, _ := os.ReadDir(filepath.Join(root, "ns"))
	if len(entries) != 1 || entries[0].Name() != "c1" {
		t.Errorf("entries %v", entries)
	}
}

// TestUnlockWithInheritedDescriptor: a child that shares the lock's open
// file description (as one forked by another goroutine does until its
// exec) must not keep the lock after unlock.
func TestUnlockWithInheritedDescriptor(t *testing.T) {
	dir := t.TempDir()
	lk, err := tryLockNew(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	child := exec.CommandContext(ctx, "sleep", "60")
	child.ExtraFiles = []*os.File{lk.f}
	if err := child.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	defer func() {
		_ = child.Process.Kill()
		_ = child.Wait()
	}()
	lk.unlock()
	l2, err := tryLock(dir)
	if err != nil {
		t.Fatalf("lock after unlock, with the child holding the description: %v", err)
	}
	l2.unlock()
}

// TestLockNeverRecreated: tryLock makes no lock file: a directory being
// removed (its lock file gone) is not found, and stays removable.
func TestLockNeverRecreated(t *testing.T) {
	dir := t.TempDir()
	if _, err := tryLock(dir); !errdefs.IsNotFound(err) {
		t.Fatalf("tryLock without a lock file: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(dir, lockFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tryLock made a lock file: %v", err)
	}
}
