package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Join moves pid into the cgroup at path (relative to the cgroup root),
// creating it where it is missing: on a v1 host in every mounted
// hierarchy, with cpuset.cpus and cpuset.mems of a new cpuset cgroup copied
// from its parent (an empty cpuset admits no process).
func Join(path string, pid int) error {
	path, err := absolute(path)
	if err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	procs := []byte(strconv.Itoa(pid))
	if Unified() {
		dir := filepath.Join(unifiedRoot, path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
		return writeProcs(dir, procs)
	}
	var r fileReader
	mounts, err := v1Mounts(&r)
	if err != nil {
		return err
	}
	if len(mounts) == 0 {
		return fmt.Errorf("no cgroup v1 hierarchy mounted: %w", errdefs.ErrNotFound)
	}
	for _, m := range mounts {
		dir := joinDir(m.point, path)
		if m.has("cpuset") {
			err = makeCpuset(m.point, dir)
		} else {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
		if err := writeProcs(dir, procs); err != nil {
			return err
		}
	}
	return nil
}

func writeProcs(dir string, pid []byte) error {
	f, err := os.OpenFile(filepath.Join(dir, "cgroup.procs"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("join cgroup: %w", err)
	}
	defer f.Close()
	for {
		_, err = f.Write(pid)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("join cgroup %s: %w", dir, err)
	}
	return nil
}

// makeCpuset creates dir and its missing parents below root, each with the
// cpus and mems of its parent when it has none.
func makeCpuset(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("cpuset cgroup %s outside %s: %w", dir, root, errdefs.ErrInvalidArgument)
	}
	parent := root
	if rel == "." {
		return nil
	}
	for _, name := range strings.Split(rel, "/") {
		cur := filepath.Join(parent, name)
		if err := os.Mkdir(cur, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		for _, f := range [...]string{"cpuset.cpus", "cpuset.mems"} {
			if err := inheritCpuset(parent, cur, f); err != nil {
				return err
			}
		}
		parent = cur
	}
	return nil
}

func inheritCpuset(parent, cur, name string) error {
	b, err := os.ReadFile(filepath.Join(cur, name))
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) > 0 {
		return nil
	}
	if b, err = os.ReadFile(filepath.Join(parent, name)); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cur, name), b, 0)
}

// Remove removes the cgroup at path (relative to the cgroup root; on a v1
// host from every mounted hierarchy) once its processes are gone. The
// kernel may still count a process that has just exited, so a busy cgroup
// is tried again a few times, 10 ms then twice as long each time (150 ms
// in all) as the cgroups managers do. A cgroup that does not exist is not
// an error.
func Remove(path string) error {
	path, err := absolute(path)
	if err != nil {
		return err
	}
	if path == "/" {
		return fmt.Errorf("remove the root cgroup: %w", errdefs.ErrInvalidArgument)
	}
	if Unified() {
		return rmdir(filepath.Join(unifiedRoot, path))
	}
	var r fileReader
	mounts, err := v1Mounts(&r)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		errs = append(errs, rmdir(joinDir(m.point, path)))
	}
	return errors.Join(errs...)
}

func rmdir(dir string) error {
	delay := 10 * time.Millisecond
	for i := 0; ; i++ {
		err := unix.Rmdir(dir)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EBUSY) && i < 4:
			time.Sleep(delay)
			delay *= 2
			continue
		}
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w: %w", dir, err, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
}

// absolute checks that path is absolute and cleans it.
func absolute(path string) (string, error) {
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("cgroup path %q must be absolute: %w", path, errdefs.ErrInvalidArgument)
	}
	return filepath.Clean(path), nil
}
