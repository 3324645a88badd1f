package runcroot

import "path/filepath"

// Default is the root under which runc keeps its state when the runc
// options name none.
const Default = "/run/containerd/runc"

// For returns runc's root for the containers of namespace ns: a directory
// for ns under root, or under Default when root is empty.
func For(root, ns string) string {
	if root == "" {
		root = Default
	}
	return filepath.Join(root, ns)
}
