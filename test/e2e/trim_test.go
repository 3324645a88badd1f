package e2e

import (
	"bufio"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
)

// pieIdle is how long the PIE-built shim stays without a call before the
// exec: twice the shim's idle trim delay (5 s).
const pieIdle = 10 * time.Second

// TestPIEShimServesAfterIdleTrim builds the shim with -buildmode=pie (as
// distributions build Go programs), runs a container with it through
// containerd, waits until the shim has given back the pages of its code
// (its idle trim), keeps it idle for pieIdle in all, and then runs an exec
// in the container: the shim must still serve, as the same process. A trim
// that dropped the relocated GNU_RELRO pages of a PIE crashed the shim
// here.
func TestPIEShimServesAfterIdleTrim(t *testing.T) {
	h := requireHarness(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go in PATH to build the shim with -buildmode=pie")
	}
	shim := filepath.Join(t.TempDir(), shimBinary)
	ctx, cancel := context.WithTimeout(context.Background(), shimBuildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "build", "-buildmode=pie", "-o", shim, shimPackage)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the shim with -buildmode=pie: %v\n%s", err, out)
	}
	if f, err := elf.Open(shim); err != nil {
		t.Fatal(err)
	} else if typ := f.Type; f.Close() == nil && typ != elf.ET_DYN {
		t.Fatalf("the -buildmode=pie shim is %v, want a position-independent executable (ET_DYN)", typ)
	}

	// An absolute runtime path makes containerd run that binary.
	c := h.startHost(t, shim, "pie-trim", discardIO(), oci.WithProcessArgs("sleep", "3600"))
	started := time.Now()
	pids, err := shimPIDs(h.d.cfg.address(), []string{shim}, c.ns, c.id)
	if err != nil || len(pids) != 1 {
		t.Fatalf("shim of %s: pids %v, %v", c.id, pids, err)
	}
	pid := pids[0]

	// The trim gives back most of the code pages: wait for the code's RSS
	// to fall below half of what serving the container mapped.
	before, err := codeRSS(pid, shim)
	if err != nil {
		t.Fatal(err)
	}
	deadline := started.Add(pieIdle + 10*time.Second)
	for {
		now, err := codeRSS(pid, shim)
		if err != nil {
			t.Fatalf("shim %d after %v idle: %v", pid, time.Since(started).Round(time.Millisecond), err)
		}
		if now < before/2 {
			t.Logf("code RSS of the shim %d KiB after start, %d KiB after %v idle", before, now, time.Since(started).Round(100*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shim kept %d of %d KiB of code mapped after %v idle: no idle trim", now, before, time.Since(started))
		}
		time.Sleep(100 * time.Millisecond) // polling the kernel's figures
	}
	// Idle for pieIdle in all: what the trim dropped is used again only
	// by later work (timers, the orphan check, the next call).
	time.Sleep(time.Until(started.Add(pieIdle)))
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("shim %d died while idle: %v", pid, err)
	}
	ectx, ecancel := context.WithTimeout(c.base(), opTimeout)
	defer ecancel()
	code, err := c.runExec(ectx, "after-trim", "true")
	if err != nil || code != 0 {
		t.Fatalf("exec after %v idle: status %d, %v", pieIdle, code, err)
	}
	if now, err := shimPIDs(h.d.cfg.address(), []string{shim}, c.ns, c.id); err != nil || len(now) != 1 || now[0] != pid {
		t.Fatalf("shim of %s after the exec: pids %v (was %d), %v", c.id, now, pid, err)
	}
}

// codeRSS returns the resident KiB of the executable mappings of file exe
// in process pid.
func codeRSS(pid int, exe string) (int, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	total, inCode := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && len(fields[1]) == 4 {
			inCode = len(fields) >= 6 && fields[5] == exe && fields[1][2] == 'x'
			continue
		}
		if inCode && len(fields) >= 2 && fields[0] == "Rss:" {
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return total, sc.Err()
}
