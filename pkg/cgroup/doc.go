// Package cgroup reads the metrics of a container's cgroup and places the
// shim and pod holders in cgroups, with nothing but the cgroup files.
//
// # Scope
//
// A [Stats] reads one cgroup's metrics into the messages containerd and
// CRI decode: io.containerd.cgroups.v1.Metrics on legacy and hybrid hosts
// (the v1 controllers), io.containerd.cgroups.v2.Metrics on unified ones.
// Every field is filled as the cgroups/v3 managers (cgroup1.Cgroup.Stat with
// IgnoreNotExist, cgroup2.Manager.Stat) fill it: the same files, units,
// "max" values and treatment of missing files, so that a container reads the
// same through this shim as through containerd's runc shim. The tests compare
// both readers field by field on real cgroups.
//
// [Join] and [Remove] create, join and remove a cgroup given by its path
// below the cgroup root (cgroupfs paths only, not systemd slices).
//
// # Cost
//
// The managers are not used because they bring cilium/ebpf and the systemd
// D-Bus client into the binary, and because one of their readings starts a
// goroutine per controller and allocates a bufio.Scanner, a map and a string
// per line of every file. A Stats resolves the cgroup's directories once,
// when it is made, and holds no file open between readings: each reading
// opens each file, reads it with read(2) into one buffer owned by the Stats,
// parses it in place and closes it, in the calling goroutine. What a reading
// allocates is the returned message.
//
// [MarshalAny] encodes a reading into the Any a Stats call answers with,
// writing the protobuf wire format from the messages' field tags: the
// protobuf runtime's own encoder keeps reflection tables and full
// descriptors of the metrics messages for the life of the process on first
// use (about 140 KB of live heap for the v1 message), in every shim.
//
// # Concurrency
//
// A Stats may be used by several goroutines; its readings are serialised by
// its mutex, which is held only while the cgroup files are read.
package cgroup
