package process

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/internal/mountfd"
)

// overlayMount returns the mount of an overlay of fresh lower, upper and
// work directories under dir, with one file in the lower layer.
func overlayMount(t *testing.T, dir string) mount.Mount {
	t.Helper()
	for _, d := range []string{"lower", "upper", "work"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lower", "f"), []byte("lower"), 0o600); err != nil {
		t.Fatal(err)
	}
	return mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + filepath.Join(dir, "lower"),
		"upperdir=" + filepath.Join(dir, "upper"),
		"workdir=" + filepath.Join(dir, "work"),
	}}
}

// mountOrSkip mounts m on target, skipping the test where this process may
// not mount.
func mountOrSkip(t *testing.T, m mount.Mount, target string) {
	t.Helper()
	if err := os.MkdirAll(target, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(target); err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("mounting needs root: %v", err)
		}
		t.Fatalf("mount %s on %s: %v", m.Type, target, err)
	}
	t.Cleanup(func() { _ = mount.UnmountRecursive(target, unix.MNT_DETACH) })
}

// mountedUnder returns the mount points at and under dir.
func mountedUnder(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}

// detachedFDs lists this process's descriptors that keep a detached mount
// alive.
func detachedFDs(t *testing.T) []string {
	t.Helper()
	held, err := mountfd.Detached(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return held
}

// waitNoDetachedFDs waits (bounded) until no descriptor holds a detached
// mount.
func waitNoDetachedFDs(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		held := detachedFDs(t)
		if len(held) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("detached mounts still held after 10s: %s", strings.Join(held, "; "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDetachRootfsOverlay(t *testing.T) {
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	mountOrSkip(t, overlayMount(t, dir), rootfs)
	if err := os.WriteFile(filepath.Join(rootfs, "new"), []byte("upper"), 0o600); err != nil {
		t.Fatal(err)
	}
	if held := detachedFDs(t); len(held) != 0 {
		t.Fatalf("detached mounts held before the test: %v", held)
	}

	release, err := detachRootfs(rootfs)
	if err != nil {
		t.Fatalf("detach: %v", err)
	}
	if got := mountedUnder(t, rootfs); len(got) != 0 {
		t.Fatalf("still mounted after detach: %v", got)
	}
	// The overlay is out of the namespace but alive until release: its
	// superblock is torn down there, not in detachRootfs.
	if held := detachedFDs(t); len(held) != 1 {
		t.Fatalf("want the overlay's root held until release, got %v", held)
	}
	release()
	if held := detachedFDs(t); len(held) != 0 {
		t.Fatalf("release left %v", held)
	}
	// What the container wrote is in the upper layer, for the snapshotter.
	if b, err := os.ReadFile(filepath.Join(dir, "upper", "new")); err != nil || string(b) != "upper" {
		t.Fatalf("upper layer: %q, %v", b, err)
	}
	if err := os.Remove(rootfs); err != nil {
		t.Fatalf("the bundle's rootfs directory after release: %v", err)
	}
}

// Anything but a lone overlay is unmounted at once, as before: nothing held.
func TestDetachRootfsOtherMounts(t *testing.T) {
	tmpfs := mount.Mount{Type: "tmpfs", Source: "tmpfs"}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir, rootfs string)
	}{
		{"tmpfs", func(t *testing.T, dir, rootfs string) { mountOrSkip(t, tmpfs, rootfs) }},
		{"overlay with a mount under it", func(t *testing.T, dir, rootfs string) {
			mountOrSkip(t, overlayMount(t, dir), rootfs)
			mountOrSkip(t, tmpfs, filepath.Join(rootfs, "sub"))
		}},
		{"overlay on a tmpfs", func(t *testing.T, dir, rootfs string) {
			mountOrSkip(t, tmpfs, rootfs)
			mountOrSkip(t, overlayMount(t, dir), rootfs)
		}},
		{"nothing mounted", func(t *testing.T, dir, rootfs string) {
			if err := os.MkdirAll(rootfs, 0o711); err != nil {
				t.Fatal(err)
			}
		}},
		{"no directory", func(t *testing.T, dir, rootfs string) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rootfs := filepath.Join(dir, "rootfs")
			tc.setup(t, dir, rootfs)
			release, err := detachRootfs(rootfs)
			if err != nil {
				t.Fatalf("detach: %v", err)
			}
			if got := mountedUnder(t, rootfs); len(got) != 0 {
				t.Fatalf("still mounted: %v", got)
			}
			if held := detachedFDs(t); len(held) != 0 {
				t.Fatalf("held: %v", held)
			}
			if release != nil {
				t.Fatal("a release to run, with nothing held")
			}
		})
	}
}

// deleteOverlayContainer creates, starts, kills and deletes a container
// whose rootfs is an overlay (skipping the test where this process may not
// mount), with Config.Go set to goFn, and checks that nothing is left
// mounted at its rootfs when Delete returns.
func deleteOverlayContainer(t *testing.T, goFn func(func())) {
	t.Helper()
	f := newFake(t)
	m := overlayMount(t, filepath.Dir(f.bundle))
	probe := filepath.Join(t.TempDir(), "probe")
	mountOrSkip(t, m, probe) // skips without root, and proves overlay works here
	if err := mount.UnmountAll(probe, 0); err != nil {
		t.Fatal(err)
	}
	c, err := Create(context.Background(), Config{
		ID: "c1", Bundle: f.bundle, Namespace: "test", Runtime: f.rt,
		Reaper: testReaper, Emit: newRecorder().emit, Rootfs: []mount.Mount{m}, Go: goFn,
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	rootfs := filepath.Join(f.bundle, "rootfs")
	t.Cleanup(func() { _ = mount.UnmountRecursive(rootfs, unix.MNT_DETACH) })
	if got := mountedUnder(t, rootfs); len(got) != 1 {
		t.Fatalf("rootfs mounts after create: %v", got)
	}
	ctx := context.Background()
	if _, err := c.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	killWait(t, c, "")
	if _, err := c.Delete(ctx, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if got := mountedUnder(t, rootfs); len(got) != 0 {
		t.Fatalf("rootfs still mounted after delete: %v", got)
	}
}

// Delete of a container whose rootfs is an overlay leaves nothing mounted
// when it returns, and the overlay's last reference goes right after.
func TestDeleteReleasesOverlayRootfs(t *testing.T) {
	deleteOverlayContainer(t, nil)
	waitNoDetachedFDs(t)
}

// Delete hands the overlay's teardown to Config.Go, whose owner waits for
// it before the process exits, instead of a goroutine nothing waits for:
// when Delete returns the overlay is out of the namespace and still held,
// and running what Delete handed over releases it.
func TestDeleteHandsTheTeardownToItsOwner(t *testing.T) {
	var handed []func()
	t.Cleanup(func() { // what a failure left unrun
		for _, fn := range handed {
			fn()
		}
	})
	deleteOverlayContainer(t, func(fn func()) { handed = append(handed, fn) })
	if len(handed) != 1 {
		t.Fatalf("Delete handed %d functions to Config.Go, want the teardown", len(handed))
	}
	if held := detachedFDs(t); len(held) != 1 {
		t.Fatalf("want the overlay held until the teardown runs, got %v", held)
	}
	teardown := handed[0]
	handed = nil
	teardown()
	if held := detachedFDs(t); len(held) != 0 {
		t.Fatalf("the teardown left %v", held)
	}
}
