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

// deleteRequest is a Task API v2 or v3 DeleteRequest.
type deleteRequest interface {
	GetID() string
	GetExecID() string
}

// interceptor records the bundle of every container created (before the
// call, so that a container being created counts as state, and dropped
// again when its creation fails) and forgets it once the container is
// deleted. Other calls pass through untouched: Stats, polled once a second
// per container, allocates nothing here.
func (w *stateWatch) interceptor(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	switch path.Base(info.FullMethod) {
	case "Create":
		return w.create(ctx, u, m)
	case "Delete":
		var req deleteRequest
		resp, err := m(ctx, func(v any) error {
			if err := u(v); err != nil {
				return err
			}
			req, _ = v.(deleteRequest)
			return nil
		})
		if err == nil && req != nil && req.GetExecID() == "" {
			w.forget(req.GetID())
		}
		return resp, err
	}
	return m(ctx, u)
}

func (w *stateWatch) create(ctx context.Context, u ttrpc.Unmarshaler, m ttrpc.Method) (any, error) {
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

// forget drops the bundle of a container deleted: it is no longer state
// this shim serves. The shim's own bundle ("") stays until it is gone.
func (w *stateWatch) forget(id string) {
	if id == "" {
		return
	}
	w.mu.Lock()
	delete(w.bundles, id)
	w.mu.Unlock()
}

// gone reports whether no state directory of the shim exists any more. It
// looks at the shim's own bundle first and stops at the first directory
// present, so a group shim stats one path per check, not one per
// container (the check runs every idleCheckInterval, in a shim otherwise
// idle). A directory found gone is forgotten: it cannot come back (a
// directory made again at its path is not this shim's).
func (w *stateWatch) gone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if own, ok := w.bundles[""]; ok {
		if own.present() {
			return false
		}
		delete(w.bundles, "")
	}
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
