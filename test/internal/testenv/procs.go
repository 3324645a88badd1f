package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ShimProcess is a running containerd shim.
type ShimProcess struct {
	Pid  int
	Argv []string
}

// Flag returns the value of -name or --name in the shim's argv, as
// "-name value" or "-name=value".
func (p ShimProcess) Flag(name string) (string, bool) {
	for i, a := range p.Argv {
		for _, dash := range []string{"-", "--"} {
			if a == dash+name && i+1 < len(p.Argv) {
				return p.Argv[i+1], true
			}
			if v, ok := strings.CutPrefix(a, dash+name+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// ShimProcesses lists the live shim processes that serve the containerd at
// address: their -address flag names it. A shim is a process whose argv[0]
// base name starts with "containerd-shim" or whose executable is one of exes
// (MINE_SHIM may have any name).
func ShimProcesses(address string, exes []string) ([]ShimProcess, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var procs []ShimProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a zombie
		}
		p := ShimProcess{Pid: pid, Argv: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")}
		if !strings.HasPrefix(filepath.Base(p.Argv[0]), "containerd-shim") {
			exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
			if err != nil || !slices.Contains(exes, exe) {
				continue
			}
		}
		// containerd passes -address to every shim it starts; a process
		// without it is not a shim of this containerd.
		if a, ok := p.Flag("address"); !ok || a != address && a != "unix://"+address {
			continue
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// KillLeftoverShims waits a little for the shims of the containerd at
// address to exit, then kills the ones left. The caller deleted every
// container before, so a shim still running is a leak: it is reported as an
// error.
func KillLeftoverShims(address string, exes []string) error {
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		procs, err := ShimProcesses(address, exes)
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var left []string
			for _, p := range procs {
				left = append(left, fmt.Sprintf("pid %d: %s", p.Pid, strings.Join(p.Argv, " ")))
				syscall.Kill(p.Pid, syscall.SIGKILL)
			}
			return fmt.Errorf("shims still running after every container was deleted, killed:\n%s",
				strings.Join(left, "\n"))
		}
		<-tick.C
	}
}

// MountsUnder returns the mount points at or below dir in this mount
// namespace.
func MountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := UnescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	return mounts, sc.Err()
}

// UnescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func UnescapeMountinfo(s string) string {
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

// RemoveDir unmounts (detached) whatever is mounted at or below dir, then
// removes dir. It never removes through a mount point: when an unmount
// fails, dir is kept and the error says so.
func RemoveDir(dir string) error {
	mounts, err := MountsUnder(dir)
	// Deepest first.
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mounts {
		if uerr := syscall.Unmount(mp, syscall.MNT_DETACH); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", mp, uerr))
		}
	}
	if err != nil {
		return fmt.Errorf("%s kept: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// FDCount returns how many descriptors process pid has open.
func FDCount(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(entries), nil
}

// StacksFile is what the mine shim daemon writes into its working directory
// (its bundle) on SIGUSR1: "goroutines N" on the first line, then stacks.
const StacksFile = "shim-stacks.txt"

// ShimGoroutines makes the mine shim daemon pid write StacksFile (SIGUSR1)
// and returns the goroutine count on its first line, waiting at most timeout.
func ShimGoroutines(pid int, timeout time.Duration) (int, error) {
	dir, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return 0, err
	}
	path := filepath.Join(dir, StacksFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return 0, fmt.Errorf("signal shim %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := ReadGoroutineCount(path)
		if err == nil {
			return n, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("shim %d did not write a goroutine count to %s within %v after SIGUSR1: %w", pid, path, timeout, err)
		}
		<-tick.C
	}
}

// ReadGoroutineCount parses the first line of a stacks file, "goroutines
// N". A file that is not there yet or whose first line is not complete yet
// is an error.
func ReadGoroutineCount(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("first line of %s incomplete: %q", path, line)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutines ")
	if !ok {
		return 0, fmt.Errorf("first line of %s is %q, want \"goroutines N\"", path, line)
	}
	return strconv.Atoi(v)
}
