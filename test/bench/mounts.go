package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// overlayWorks mounts an overlay in dir and unmounts it.
func overlayWorks(dir string) error {
	probe, err := os.MkdirTemp(dir, "overlay-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	var p [4]string
	for i, name := range []string{"lower", "upper", "work", "merged"} {
		p[i] = filepath.Join(probe, name)
		if err := os.Mkdir(p[i], 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", p[0], p[1], p[2])
	if err := syscall.Mount("overlay", p[3], "overlay", 0, opts); err != nil {
		return err
	}
	return syscall.Unmount(p[3], 0)
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// unescapeMount undoes the octal escapes of mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroupParents removes the empty parent cgroups that runc leaves
// behind (/NAMESPACE of containerd's cgroups paths, and the raw runs'
// parent) in every mounted hierarchy. A parent still in use by another run
// is not empty, and stays.
func removeCgroupParents(names ...string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		for _, n := range names {
			_ = os.Remove(filepath.Join(unescapeMount(f[4]), n))
		}
	}
}
