package socktest

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// Busy listens on path with a backlog of one connection and fills it, so
// that a connect fails at once (EAGAIN) while the socket still has its
// listener. Everything is closed when the test ends.
func Busy(t testing.TB, path string) {
	t.Helper()
	sock := func() int {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	l := sock()
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 0); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		err := unix.Connect(sock(), &unix.SockaddrUnix{Name: path})
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the backlog never filled")
}
