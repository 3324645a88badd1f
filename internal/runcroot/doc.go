// Package runcroot holds the one rule for where runc keeps the state of a
// container that the shim runs.
//
// runc keeps its state under a root directory, one subdirectory per
// container. The shim gives runc one root per containerd namespace, under
// the root that the runc options name or under Default, as containerd's
// runc shim does, so that equal IDs in two namespaces never collide.
// minimgr reads runc's state of the shims it started (a container whose
// shim died) and must find it where the shim had runc put it; both take the
// path from For.
package runcroot
