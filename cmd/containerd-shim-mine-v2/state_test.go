package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
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
	// Another directory at a path is not the shim's state. (It is made
	// before the shim's goes, so that it cannot get the same inode.)
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "c1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, filepath.Join(dir, "c1")); err != nil {
		t.Fatal(err)
	}
	if !w.gone() {
		t.Fatal("not gone once every bundle was removed")
	}
}

// A failed create leaves no state behind (the Task API v2's request here,
// which the shim decodes for v2 and v3 calls alike), and a container made
// again under an id keeps its bundle.
func TestStateFailedCreateLeavesNothing(t *testing.T) {
	w, dir := groupWatch(t, 1)
	failed := errors.New("runc create failed")
	for _, id := range []string{"bad", "c0"} {
		b := filepath.Join(dir, id+"-again")
		if err := os.Mkdir(b, 0o700); err != nil {
			t.Fatal(err)
		}
		w.call(t, "Create", &taskv2.CreateTaskRequest{ID: id, Bundle: b}, failed)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.bundles["bad"]; ok || len(w.bundles) != 2 || w.bundles["c0"].path != filepath.Join(dir, "c0") {
		t.Fatalf("bundles %v after two failed creates, want the own one and c0's first", w.bundles)
	}
}

// While the shim's own bundle is there, each check also looks at one
// container's bundle and forgets it if it is gone: those of deleted
// containers do not pile up in a long-lived group shim.
func TestStateForgetsBundlesFoundGone(t *testing.T) {
	w, dir := groupWatch(t, 3)
	if err := os.Remove(filepath.Join(dir, "c1")); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if w.gone() {
			t.Fatal("gone with the own bundle there")
		}
		w.mu.Lock()
		_, kept := w.bundles["c1"]
		n := len(w.bundles)
		w.mu.Unlock()
		if !kept {
			if n != 3 {
				t.Fatalf("%d bundles left, want the own one, c0's and c2's", n)
			}
			return
		}
		if i == 1000 {
			t.Fatal("c1's bundle, removed, still recorded after 1000 checks")
		}
	}
}

// The check that runs every idleCheckInterval looks at two directories while
// the shim's own is there, however many containers the shim holds (a stat
// allocates its path), and the calls containerd polls pass through the
// interceptor without allocating.
func TestStateCheckCostsNoMoreWithContainers(t *testing.T) {
	w, _ := groupWatch(t, 50)
	if n := testing.AllocsPerRun(20, func() {
		if w.gone() {
			t.Fatal("gone")
		}
	}); n > 2 {
		t.Errorf("a check of a shim of 50 containers allocates %v times, want at most 2", n)
	}
	if n := statsCallAllocs(w.interceptor); n > 0 {
		t.Errorf("a Stats call allocates %v times in the interceptor, want 0", n)
	}
}

// statsCallAllocs is how many times a Stats call allocates in interceptor,
// its method aside.
func statsCallAllocs(interceptor ttrpc.UnaryServerInterceptor) float64 {
	info := &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v3.Task/Stats"}
	m := func(context.Context, func(any) error) (any, error) { return nil, nil }
	return testing.AllocsPerRun(50, func() {
		interceptor(context.Background(), nil, info, m)
	})
}
