package replyhold

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
)

// Hold bounds how long a reply is held back. Past it the reply goes out,
// its stream may stay recorded, and Unheld counts it.
const Hold = 100 * time.Millisecond

var unheld atomic.Uint64

// Unheld returns how many writes went out after Hold without their
// connection having read again, in this process: an upper bound of the
// streams left recorded (Wrap says which writes wait out Hold although they
// leave nothing).
func Unheld() uint64 { return unheld.Load() }

// Handshaker wraps inner: every connection it approves is wrapped by Wrap.
func Handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return handshaker{inner}
}

type handshaker struct{ inner ttrpc.Handshaker }

func (h handshaker) Handshake(ctx context.Context, c net.Conn) (net.Conn, any, error) {
	approved, info, err := h.inner.Handshake(ctx, c)
	if err != nil {
		return approved, info, err
	}
	return Wrap(approved), info, nil
}

// Wrap returns c with its writes held back until c is reading again.
//
// ttrpc's server connection reads requests one after another and records
// each before it reads again. So while it waits in Read, every request it
// has read is recorded, and a reply (always to a request already read) may
// go out. A Write that finds no Read under way waits for the next one to
// begin.
//
// Hold bounds the wait where no Read comes although nothing is left to
// record; each such write is late by Hold, and counted by Unheld:
//   - the connection answers a malformed request or an unknown method
//     itself, and its reading goroutine waits until the sending loop takes
//     that answer: a reply the loop holds meanwhile waits out Hold;
//   - once the connection stops reading for a shutdown (rather than a
//     failed Read), every reply still to be sent waits out Hold.
//
// A reply larger than ttrpc's 4 KiB write buffer is two writes; the second
// may wait again, for the next Read.
//
// The shim's services and minimgr's events server are unary calls that
// clients make correctly: these are the rare cases, not the common one.
func Wrap(c net.Conn) net.Conn {
	return wrap(c, Hold)
}

func wrap(c net.Conn, hold time.Duration) net.Conn {
	return &conn{Conn: c, holdFor: hold}
}

type conn struct {
	net.Conn

	mu      sync.Mutex
	reading bool          // a Read is under way; guarded by mu
	done    bool          // a Read failed: no Read follows; guarded by mu
	next    chan struct{} // closed when a Read begins; guarded by mu
	hold    *time.Timer   // bounds a Write's wait; used by one Write at a time
	holdFor time.Duration // Hold, but in tests
}

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	c.reading = true
	if c.next != nil {
		close(c.next)
		c.next = nil
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.reading = false
	c.done = c.done || err != nil
	c.mu.Unlock()
	return n, err
}

// Write is called by the connection's one sending loop, one call at a time.
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.reading || c.done {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	if c.next == nil {
		c.next = make(chan struct{})
	}
	next := c.next
	c.mu.Unlock()
	if c.hold == nil {
		c.hold = time.NewTimer(c.holdFor)
	} else {
		c.hold.Reset(c.holdFor)
	}
	select {
	case <-next:
	case <-c.hold.C:
		unheld.Add(1)
	}
	c.hold.Stop()
	return c.Conn.Write(p)
}
