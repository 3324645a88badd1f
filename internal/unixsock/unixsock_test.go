package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/mineshim/mine/internal/unixsock/socktest"
)

func TestDead(t *testing.T) {
	dir := t.TempDir()

	live := filepath.Join(dir, "live")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	closed := filepath.Join(dir, "closed")
	cl, err := net.ListenUnix("unix", &net.UnixAddr{Name: closed, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	cl.SetUnlinkOnClose(false)
	cl.Close() // the file stays, nobody listens

	full := filepath.Join(dir, "busy")
	socktest.Busy(t, full)

	dgram := filepath.Join(dir, "dgram")
	dl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dgram, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()

	loop := filepath.Join(dir, "loop")
	if err := os.Symlink(loop, loop); err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		path string
		dead bool
	}{
		{live, false},
		{full, false},
		{closed, true},
		{filepath.Join(dir, "none"), true},
		{dgram, true},
		{loop, true},
		{file, true},
	} {
		if got := Dead(c.path); got != c.dead {
			t.Errorf("Dead(%s) = %v, want %v", filepath.Base(c.path), got, c.dead)
		}
	}
}
