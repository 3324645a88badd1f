package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// call passes req through w's interceptor as the method name of the Task
// API v3, into a method that unmarshals it and returns err.
func (w *stateWatch) call(t *testing.T, name string, req proto.Message, err error) {
	t.Helper()
	raw, merr := proto.Marshal(req)
	if merr != nil {
		t.Fatal(merr)
	}
	u := func(v any) error { return proto.Unmarshal(raw, v.(proto.Message)) }
	m := func(ctx context.Context, u func(any) error) (any, error) {
		v := proto.Clone(req)
		proto.Reset(v)
		if uerr := u(v); uerr != nil {
			return nil, uerr
		}
		return nil, err
	}
	info := &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v3.Task/" + name}
	if _, got := w.interceptor(context.Background(), u, info, m); !errors.Is(got, err) {
		t.Fatalf("%s: %v, want %v", name, got, err)
	}
}

// groupWatch is the state watch of a shim whose own bundle is dir/own,
// after the creation of n containers c0..cN-1 with bundles dir/cI.
func groupWatch(t *testing.T, n int) (w *stateWatch, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "own"), 0o700); err != nil {
		t.Fatal(err)
	}
	w, err := newStateWatch(filepath.Join(dir, "own"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := "c" + strconv.Itoa(i)
		b := filepath.Join(dir, id)
		if err := os.Mkdir(b, 0o700); err != nil {
			t.Fatal(err)
		}
		w.call(t, "Create", &taskAPI.CreateTaskRequest{ID: id, Bundle: b}, nil)
	}
	return w, dir
}

// A group shim lives while any of its state directories exists, its own
// or a container's, and no longer.
func TestStateGoneWhenEveryBundleIs(t *testing.T) {
	w, dir := groupWatch(t, 3)
	for _, name := range []string{"own", "c0", "c2"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if w.gone() {
			t.Fatalf("gone with c1's bundle still there (after removing %s)", name)
		}
	}
	// A directory made again at a path is not the shim's state.
	if err := os.Remove(filepath.Join(dir, "c1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if !w.gone() {
		t.Fatal("not gone once every bundle was removed")
	}
}

// A failed create leaves no state behind; a deleted container's bundle is
// forgotten, an exec's delete forgets nothing, and the shim's own bundle
// stays.
func TestStateCreateAndDelete(t *testing.T) {
	w, dir := groupWatch(t, 2)
	b := filepath.Join(dir, "bad")
	if err := os.Mkdir(b, 0o700); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("runc create failed")
	w.call(t, "Create", &taskAPI.CreateTaskRequest{ID: "bad", Bundle: b}, failed)
	w.call(t, "Delete", &taskAPI.DeleteRequest{ID: "c0", ExecID: "e1"}, nil)
	w.call(t, "Delete", &taskAPI.DeleteRequest{ID: "c1"}, failed)
	w.call(t, "Delete", &taskAPI.DeleteRequest{ID: "c1"}, nil)
	want := []string{"", "c0"}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.bundles) != len(want) {
		t.Fatalf("bundles %v, want those of %q", w.bundles, want)
	}
	for _, id := range want {
		if _, ok := w.bundles[id]; !ok {
			t.Fatalf("bundles %v, want those of %q", w.bundles, want)
		}
	}
}

// The check that runs every idleCheckInterval looks at one directory while
// the shim's own is there, however many containers the shim holds (a stat
// allocates its path), and the calls containerd polls pass through the
// interceptor without allocating.
func TestStateCheckCostsNoMoreWithContainers(t *testing.T) {
	w, _ := groupWatch(t, 50)
	if n := testing.AllocsPerRun(20, func() {
		if w.gone() {
			t.Fatal("gone")
		}
	}); n > 1 {
		t.Errorf("a check of a shim of 50 containers allocates %v times, want at most 1", n)
	}
	info := &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v3.Task/Stats"}
	m := func(context.Context, func(any) error) (any, error) { return nil, nil }
	if n := testing.AllocsPerRun(20, func() {
		w.interceptor(context.Background(), nil, info, m)
	}); n > 0 {
		t.Errorf("a Stats call allocates %v times in the interceptor, want 0", n)
	}
}
