package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// fileID names one file whatever its path: device and inode. A new shim for
// the same container binds a socket, or writes an address file, at the same
// path as the old one; only the identity tells the two apart.
type fileID struct {
	dev, ino uint64
}

// lstatID returns the identity of what path names (not following a link).
func lstatID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// ownedFile is a path together with the identity of the file this process
// created there.
type ownedFile struct {
	path string
	id   fileID
}

// own records what path names now as ours.
func own(path string) (ownedFile, error) {
	id, err := lstatID(path)
	if err != nil {
		return ownedFile{}, err
	}
	return ownedFile{path: path, id: id}, nil
}

// remove unlinks the path only while it still names the file we created:
// a socket or address file another shim has put there since is left alone.
// The identity is compared right before the unlink; without a lock shared
// by every shim, that is as small as the window between the two can be. A
// path already gone is not an error.
func (o ownedFile) remove() error {
	if o.path == "" {
		return nil
	}
	id, err := lstatID(o.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if id != o.id {
		return nil
	}
	if err := unix.Unlink(o.path); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "unlink", Path: o.path, Err: err}
	}
	return nil
}

// writeFileNew writes data to path as a new file (new inode), replacing
// what was there in one rename, so that the identity recorded by whoever
// wrote the old file no longer matches.
func writeFileNew(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), perm)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
