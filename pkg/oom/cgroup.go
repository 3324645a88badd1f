//go:build linux

package oom

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// CgroupPath names one cgroup to watch.
type CgroupPath struct {
	// Version is 1 for a cgroup of a cgroup v1 hierarchy that holds the memory
	// controller, 2 for a cgroup of the unified (cgroup v2) hierarchy.
	Version int
	// Dir is the absolute path of the cgroup's directory, for example
	// /sys/fs/cgroup/memory/kubepods/pod1/ctr1 (v1) or /sys/fs/cgroup/system.slice/ctr1 (v2).
	Dir string
}

func (cg CgroupPath) String() string {
	return fmt.Sprintf("cgroup v%d %s", cg.Version, cg.Dir)
}

func (cg CgroupPath) validate() error {
	if cg.Version != 1 && cg.Version != 2 {
		return fmt.Errorf("cgroup version %d, want 1 or 2: %w", cg.Version, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(cg.Dir) {
		return fmt.Errorf("cgroup dir %q is not an absolute path: %w", cg.Dir, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ResolveCgroup returns the memory cgroup of the process pid, as seen from
// this process's mount and cgroup namespaces.
//
// When a cgroup v1 hierarchy holds the memory controller (a v1 or hybrid
// host), the result is the pid's cgroup in that hierarchy (Version 1).
// Otherwise it is the pid's cgroup in the unified hierarchy (Version 2). The
// directory comes from the mount of that hierarchy listed in
// /proc/self/mountinfo; no mount point is assumed.
//
// The error wraps errdefs.ErrNotFound when the process or the hierarchy's
// mount does not exist.
func ResolveCgroup(pid int) (CgroupPath, error) {
	if pid <= 0 {
		return CgroupPath{}, fmt.Errorf("pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	procCgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return CgroupPath{}, classify(fmt.Sprintf("cgroup of pid %d", pid), err)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return CgroupPath{}, classify("mounts", err)
	}
	cg, err := resolveCgroup(procCgroup, mountinfo)
	if err != nil {
		return CgroupPath{}, fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return cg, nil
}

// resolveCgroup picks the memory cgroup out of the content of a
// /proc/PID/cgroup file and of /proc/self/mountinfo.
func resolveCgroup(procCgroup, mountinfo []byte) (CgroupPath, error) {
	v1, v2, err := parseProcCgroup(procCgroup)
	if err != nil {
		return CgroupPath{}, err
	}
	mounts, err := parseMountinfo(mountinfo)
	if err != nil {
		return CgroupPath{}, err
	}
	if v1 != "" {
		dir, err := cgroupDir(mounts, v1, func(m mount) bool {
			return m.fstype == "cgroup" && hasOption(m.superOptions, "memory")
		})
		if err != nil {
			return CgroupPath{}, fmt.Errorf("memory cgroup v1 hierarchy: %w", err)
		}
		return CgroupPath{Version: 1, Dir: dir}, nil
	}
	if v2 != "" {
		dir, err := cgroupDir(mounts, v2, func(m mount) bool { return m.fstype == "cgroup2" })
		if err != nil {
			return CgroupPath{}, fmt.Errorf("cgroup v2 hierarchy: %w", err)
		}
		return CgroupPath{Version: 2, Dir: dir}, nil
	}
	return CgroupPath{}, fmt.Errorf("no memory cgroup v1 and no cgroup v2 entry: %w", errdefs.ErrNotFound)
}

// parseProcCgroup returns the path of the memory controller's v1 cgroup and
// the path of the unified (0::) cgroup; either is empty when absent.
func parseProcCgroup(data []byte) (v1Memory, v2 string, err error) {
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		line := s.Text()
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path; the path may itself hold ':'.
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return "", "", fmt.Errorf("malformed /proc/PID/cgroup line %q: %w", line, errdefs.ErrInvalidArgument)
		}
		if id == "0" && controllers == "" {
			v2 = path
			continue
		}
		if hasOption(controllers, "memory") {
			v1Memory = path
		}
	}
	if err := s.Err(); err != nil {
		return "", "", fmt.Errorf("read /proc/PID/cgroup: %w", err)
	}
	return v1Memory, v2, nil
}

// mount is one line of /proc/self/mountinfo, reduced to what is needed here.
type mount struct {
	root, point, fstype, superOptions string
}

// parseMountinfo parses the format described in proc(5):
// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
func parseMountinfo(data []byte) ([]mount, error) {
	var mounts []mount
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		line := s.Text()
		if line == "" {
			continue
		}
		pre, post, ok := strings.Cut(line, " - ")
		fields := strings.Fields(pre)
		tail := strings.Fields(post)
		if !ok || len(fields) < 6 || len(tail) < 3 {
			return nil, fmt.Errorf("malformed mountinfo line %q: %w", line, errdefs.ErrInvalidArgument)
		}
		mounts = append(mounts, mount{
			root:         unescapeOctal(fields[3]),
			point:        unescapeOctal(fields[4]),
			fstype:       tail[0],
			superOptions: tail[2],
		})
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return mounts, nil
}

// cgroupDir maps the cgroup path of a process to a directory under the
// mount of its hierarchy whose root holds that path (the longest such root).
func cgroupDir(mounts []mount, cgroupPath string, match func(mount) bool) (string, error) {
	if !strings.HasPrefix(cgroupPath, "/") {
		return "", fmt.Errorf("cgroup path %q is not absolute: %w", cgroupPath, errdefs.ErrInvalidArgument)
	}
	for _, elem := range strings.Split(cgroupPath, "/") {
		if elem == ".." {
			// The kernel prints such paths for a cgroup outside this
			// process's cgroup namespace: it has no directory here.
			return "", fmt.Errorf("cgroup %q is outside this cgroup namespace: %w", cgroupPath, errdefs.ErrNotFound)
		}
	}
	best, found := mount{}, false
	for _, m := range mounts {
		if !match(m) || !pathWithin(cgroupPath, m.root) {
			continue
		}
		if !found || len(m.root) > len(best.root) {
			best, found = m, true
		}
	}
	if !found {
		return "", fmt.Errorf("no mount holds cgroup %q: %w", cgroupPath, errdefs.ErrNotFound)
	}
	rel := strings.TrimPrefix(cgroupPath, best.root)
	return filepath.Join(best.point, rel), nil
}

// pathWithin reports whether path is root or below it.
func pathWithin(path, root string) bool {
	if root == "/" || path == root {
		return true
	}
	return strings.HasPrefix(path, root+"/")
}

// hasOption reports whether the comma separated list holds opt.
func hasOption(list, opt string) bool {
	for _, o := range strings.Split(list, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// unescapeOctal undoes the \NNN escapes of mountinfo (space, tab, newline, backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
