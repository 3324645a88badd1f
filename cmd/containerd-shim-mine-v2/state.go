package main

import (
	"context"
	"errors"
	"os"
	"path"
	"sync"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// stateWatch tells when every state directory this shim serves is gone: its
// own bundle (its working directory) and the bundle of each container
// created through it. A shim whose state has been removed (its manager
// deleted the container, or gave up on a shim it could not reach) can be
// called by no one and must not live on. A group shim keeps serving while
// one of its containers' bundles exists, even after its own is gone.
//
// A directory counts as gone when its path no longer names the directory
// that was there when the shim learned of it: a new container of the same
// id gets a new bundle at the same path, which is not this shim's state.
type stateWatch struct {
	mu      sync.Mutex
	bundles map[string]ownedFile // container id (own: "") -> bundle; guarded by mu
}

func newStateWatch(bundle string) (*stateWatch, error) {
	o, err := statOwned(bundle)
	if err != nil {
		return nil, err
	}
	return &stateWatch{bundles: map[string]ownedFile{"": o}}, nil
}

// bundleRequest is a Task API v2 or v3 CreateTaskRequest.
type bundleRequest interface {
	GetID() string
	GetBundle() string
}

// interceptor records the bundle of every container created: before the
// call, so that a container being created counts as state, and dropped
// again when its creation fails. Other calls pass through untouched: Stats,
// which containerd's CRI polls for every container, allocates nothing here.
func (w *stateWatch) interceptor(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	if path.Base(info.FullMethod) != "Create" {
		return m(ctx, u)
	}
	var (
		id          string
		added, prev ownedFile
		hadPrev     bool
	)
	resp, err := m(ctx, func(v any) error {
		if err := u(v); err != nil {
			return err
		}
		r, ok := v.(bundleRequest)
		if !ok || r.GetID() == "" || r.GetBundle() == "" {
			return nil
		}
		o, err := statOwned(r.GetBundle())
		if err != nil {
			return nil // the create fails on its own
		}
		w.mu.Lock()
		id, added = r.GetID(), o
		prev, hadPrev = w.bundles[id]
		w.bundles[id] = o
		w.mu.Unlock()
		return nil
	})
	if err != nil && added.path != "" {
		w.mu.Lock()
		if w.bundles[id] == added {
			delete(w.bundles, id)
			if hadPrev {
				w.bundles[id] = prev
			}
		}
		w.mu.Unlock()
	}
	return resp, err
}

// gone reports whether no state directory of the shim exists any more. The
// check runs every idleCheckInterval in a shim otherwise idle, and costs
// the same however many containers the shim holds: while the shim's own
// bundle is there it looks at that one and at one container's bundle more,
// forgetting it if it is gone (so that the bundles of deleted containers
// do not pile up in a long-lived group shim); once the own bundle is gone,
// it looks at the others until one is there. A directory found gone is
// forgotten: it cannot come back (a directory made again at its path is
// not this shim's).
func (w *stateWatch) gone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if own, ok := w.bundles[""]; ok && own.present() {
		for id, b := range w.bundles {
			if id == "" {
				continue
			}
			if !b.present() {
				delete(w.bundles, id)
			}
			break
		}
		return false
	}
	delete(w.bundles, "")
	for id, b := range w.bundles {
		if b.present() {
			return false
		}
		delete(w.bundles, id)
	}
	return true
}

// statOwned records the directory path names now (following links).
func statOwned(path string) (ownedFile, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ownedFile{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return ownedFile{path: path, id: fileID{dev: uint64(st.Dev), ino: st.Ino}}, nil
}

// present reports whether the path still names the recorded directory. An
// error other than "not found" (a transient one) counts as present.
func (o ownedFile) present() bool {
	now, err := statOwned(o.path)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	return err != nil || now.id == o.id
}
