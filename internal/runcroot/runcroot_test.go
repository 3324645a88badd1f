package runcroot

import "testing"

func TestFor(t *testing.T) {
	for _, c := range []struct{ root, ns, want string }{
		{"", "default", "/run/containerd/runc/default"},
		{"", "k8s.io", "/run/containerd/runc/k8s.io"},
		{"/var/run/mine", "k8s.io", "/var/run/mine/k8s.io"},
		{"/var/run/mine/", "a", "/var/run/mine/a"},
	} {
		if got := For(c.root, c.ns); got != c.want {
			t.Errorf("For(%q, %q) = %q, want %q", c.root, c.ns, got, c.want)
		}
	}
}
