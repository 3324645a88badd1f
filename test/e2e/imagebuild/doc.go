// Package imagebuild writes a small busybox container image as an OCI image
// layout tar, without a registry or network access.
//
// The image is one gzip layer holding a statically linked busybox binary at
// /bin/busybox, a symlink /bin/NAME -> /bin/busybox for every applet (what
// `busybox --install -s /bin` would make), a minimal /etc/passwd and
// /etc/group, and the usual empty top-level directories (/tmp is 1777). Its
// config runs `sh` by default, like the Docker Hub busybox image.
//
// The tar holds oci-layout, index.json and blobs/sha256/*. The single
// manifest in index.json carries the full reference (for example
// docker.io/library/busybox:mine) in both the
// org.opencontainers.image.ref.name and io.containerd.image.name
// annotations, so `ctr images import FILE` stores it under that name without
// --base-name.
//
// Output is deterministic: the same busybox binary and Options give the same
// bytes (fixed timestamps, owners and entry order). The package uses only the
// standard library, so tools and tests outside the e2e suite (hack/mkimage,
// CRI tests, benchmarks) can import it without pulling in containerd.
//
// What it needs: a statically linked busybox, by default /bin/busybox (the
// Debian busybox-static package). A dynamically linked busybox is refused,
// since the image has no libc. When Options.Applets is nil the applet list is
// read from `busybox --list`, which executes the binary.
package imagebuild
