package replyhold

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A reply waits for the connection to read again, and goes at once while it
// reads or once its reads have failed; a connection that does not read
// again holds it for the hold, no longer. (The hold is long where the test
// expects none to end, and short where it expects one to.)
func TestWrapWaitsForRead(t *testing.T) {
	const long, short = time.Minute, 100 * time.Millisecond
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := wrap(conn(fds[0]), long)
	peer := conn(fds[1])
	write := func() <-chan error {
		done := make(chan error, 1)
		go func() { _, err := c.Write([]byte("r")); done <- err }()
		return done
	}
	waiting := func(done <-chan error, what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: the reply went out (%v) before the connection read again", what, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	gone := func(done <-chan error, what string) {
		t.Helper()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, unix.EPIPE) {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the reply still waits", what)
		}
	}

	// Nothing read yet: the reply waits; a Read beginning releases it.
	unheld := Unheld()
	done := write()
	waiting(done, "before any read")
	read := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 8)); read <- err }()
	gone(done, "once a read began")
	// While the Read waits, a reply goes at once.
	gone(write(), "during a read")
	// The Read returns: the next reply waits for the next Read...
	if _, err := peer.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	done = write()
	waiting(done, "after a read returned")
	go func() { _, err := c.Read(make([]byte, 8)); read <- err }()
	gone(done, "once a read began again")
	// Once a Read has failed no Read follows: a reply goes at once (here
	// to a peer gone, EPIPE).
	peer.Close()
	if err := <-read; err == nil {
		t.Fatal("read from a closed peer succeeded")
	}
	gone(write(), "after the read failed")
	if n := Unheld() - unheld; n != 0 {
		t.Errorf("%d replies counted as unheld, want 0", n)
	}

	// A connection that never reads again holds a reply for the hold only,
	// and counts it.
	fds2, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c = wrap(conn(fds2[0]), short)
	_ = conn(fds2[1])
	start := time.Now()
	if _, err := c.Write([]byte("r")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < short {
		t.Errorf("a reply with no read to come went after %v, want the hold (%v)", took, short)
	}
	if n := Unheld() - unheld; n != 1 {
		t.Errorf("%d replies counted as unheld, want 1", n)
	}
}
