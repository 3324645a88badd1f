// Package mountfd finds the descriptors that keep a detached mount alive.
//
// A mount detached with MNT_DETACH leaves the mount table at once but lives
// on, superblock and all, while any descriptor still refers to a file on it.
// The shim detaches a container's overlay rootfs in Delete and closes its
// last descriptor on it just after the reply; the tests of that, in
// pkg/process and in test/e2e, use this package to check that nothing is
// left holding one.
package mountfd
