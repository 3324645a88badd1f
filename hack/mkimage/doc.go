// Command mkimage writes the busybox test image as an OCI image layout tar,
// ready for `ctr images import`. It needs a static busybox (Debian package
// busybox-static) and no network.
//
//	go run ./hack/mkimage -o /tmp/busybox.tar
package main
