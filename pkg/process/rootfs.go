package process

import (
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// The rootfs's unmount at Delete. Unmounting an overlay tears its
// superblock down, and the teardown syncs the filesystem of the upper
// layer. The umount2 call itself returned in 0.02 to 0.27 ms here; the
// teardown runs after it, before the thread returns to user space, and
// took 1.4 to 2.1 ms more on an ext4 upper layer (docs/BENCHMARKS.md, 25):
// on the path of every Delete, between runc delete and the reply. Here
// Delete detaches the overlay from the mount namespace while it holds the
// overlay's root open, replies, and then closes that descriptor: the last
// reference goes, and the teardown runs in the goroutine that closes it.
//
// Once detached, the mount is in no namespace: nothing can reach the
// container's files through it, containerd finds the bundle's rootfs an
// empty directory and removes it, and the snapshotter may remove the
// layer's directories while the superblock still holds them (an overlay
// only keeps references to its directories; it does not own them). The
// fast path is taken only for an overlay, the only mount at and under the
// rootfs: a block device's filesystem (which a snapshotter must see
// released before it removes the device), a stack of mounts on the rootfs,
// or mounts under it are unmounted as before, at once.

// detachRootfs unmounts every mount at and under rootfs. When the fast path
// was taken, release finishes the job: it closes the overlay's root, and
// Delete hands it, as it returns, to Config.Go. It is nil otherwise.
func detachRootfs(rootfs string) (release func(), err error) {
	if fd, ok := detachOverlay(rootfs); ok {
		return func() { _ = unix.Close(fd) }, nil
	}
	return nil, mount.UnmountRecursive(rootfs, 0)
}

// detachOverlay detaches the overlay mounted on rootfs, and returns its root
// opened, when that overlay is the only mount at and under rootfs. It
// returns false, having changed nothing, in every other case.
func detachOverlay(rootfs string) (int, bool) {
	target, err := mount.CanonicalizePath(rootfs)
	if err != nil {
		return -1, false
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(target))
	if err != nil || len(mounts) != 1 || mounts[0].Mountpoint != target || mounts[0].FSType != "overlay" {
		return -1, false
	}
	fd, err := unix.Open(target, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil || st.Type != unix.OVERLAYFS_SUPER_MAGIC {
		_ = unix.Close(fd)
		return -1, false
	}
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
		_ = unix.Close(fd)
		return -1, false
	}
	return fd, true
}
