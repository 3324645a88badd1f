package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
)

// drainGrace bounds how long an ending daemon waits for its clients to hang
// up before it closes their connections itself.
const drainGrace = 3 * time.Second

// server is the daemon's ttrpc server: it accepts on the socket start
// handed over, from clients of the daemon's own user, and counts the
// connections it serves so that stop can wait for them to close.
//
// ttrpc's Server.Shutdown is not enough on its own: it closes every
// connection it last saw idle, and a connection's state is brought up to
// date only when the connection's loop wakes to send a response. A request
// that came on an idle connection is therefore still "idle" while its
// handler runs, and Shutdown closes the connection under it: the reply is
// lost. containerd sends a group's shim a Shutdown after each task's
// Delete, each on that task's connection; when a pod's containers are
// removed in parallel, the Shutdown that finds no container left can come
// while another task's Delete is still being answered, which containerd
// then reports as "ttrpc: closed". containerd closes a task's connection
// right after that task's Shutdown is answered, so waiting for the clients
// to hang up (for a bounded grace) is waiting for the replies to have been
// written.
type server struct {
	*ttrpc.Server
	listener *closeOnceListener
	conns    *connections
}

func newServer(l net.Listener, opts ...ttrpc.ServerOpt) (*server, error) {
	conns := newConnections()
	opts = append([]ttrpc.ServerOpt{ttrpc.WithServerHandshaker(conns.handshaker(ttrpc.UnixSocketRequireSameUser()))}, opts...)
	srv, err := ttrpc.NewServer(opts...)
	if err != nil {
		return nil, err
	}
	return &server{Server: srv, listener: &closeOnceListener{Listener: l}, conns: conns}, nil
}

// serve serves until stop.
func (s *server) serve(ctx context.Context) error {
	return s.Server.Serve(ctx, s.listener)
}

// stop stops accepting, waits up to grace for the clients to close their
// connections, then shuts the server down (which closes what is still
// open), bounded by ctx. It returns how many connections were still open
// after grace.
func (s *server) stop(ctx context.Context, grace time.Duration) (int, error) {
	lerr := s.listener.Close()
	open := s.conns.waitClosed(grace)
	err := s.Server.Shutdown(ctx)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		err = nil
	}
	return open, errors.Join(lerr, err)
}

// connections counts the connections a server serves.
type connections struct {
	mu      sync.Mutex
	open    int           // guarded by mu
	changed chan struct{} // a connection closed (buffered, one pending)
}

func newConnections() *connections {
	return &connections{changed: make(chan struct{}, 1)}
}

// handshaker wraps a handshaker: every connection it approves is counted
// until it is closed.
func (c *connections) handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return countingHandshaker{inner: inner, c: c}
}

// waitClosed waits up to grace for every connection to close; it returns
// how many are still open.
func (c *connections) waitClosed(grace time.Duration) int {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for {
		c.mu.Lock()
		n := c.open
		c.mu.Unlock()
		if n == 0 {
			return 0
		}
		select {
		case <-c.changed:
		case <-timer.C:
			return n
		}
	}
}

func (c *connections) closed() {
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

type countingHandshaker struct {
	inner ttrpc.Handshaker
	c     *connections
}

func (h countingHandshaker) Handshake(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
	approved, info, err := h.inner.Handshake(ctx, conn)
	if err != nil {
		return approved, info, err
	}
	h.c.mu.Lock()
	h.c.open++
	h.c.mu.Unlock()
	return &countedConn{Conn: &replyAfterStore{Conn: approved}, c: h.c}, info, nil
}

type countedConn struct {
	net.Conn
	once sync.Once
	c    *connections
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.c.closed)
	return err
}

// replyHold bounds how long replyAfterStore holds a reply back. Past it the
// reply goes out, its stream may stay recorded, and unheldReplies counts it.
const replyHold = 100 * time.Millisecond

// unheldReplies counts the replies written after replyHold without the
// connection having read again (the memory dump reports it).
var unheldReplies atomic.Uint64

// replyAfterStore holds a connection's replies back until ttrpc has
// recorded the requests they answer.
//
// ttrpc's connection reads a request, starts its handler, and only then
// records the request's stream in a map; writing the reply removes it. A
// handler that answers before the stream is recorded leaves it recorded for
// as long as the connection lives (containerd/ttrpc issue 236): some 220
// entries per 1000 `ctr task exec` measured here. containerd keeps one
// connection to a shim for the shim's whole life, polls its Stats every
// second, and kubelet's exec probes come through it: the heap of a
// long-lived shim grows without end.
//
// The connection reads requests one after another and records each before
// it reads again. So when it is waiting in Read, every request it has read is
// recorded, and a reply (always to a request already read) may go out. A
// Write that finds no Read waiting waits for the next one to begin. The
// connection itself answers a malformed or unknown request without reading
// again, until that answer is written; replyHold bounds that wait, so such
// an answer (a protocol error, an unknown method) is late by that much.
type replyAfterStore struct {
	net.Conn

	mu      sync.Mutex
	reading bool          // a Read is waiting; guarded by mu
	done    bool          // a Read failed: no Read follows; guarded by mu
	next    chan struct{} // closed when a Read begins; guarded by mu
	hold    *time.Timer   // bounds a Write's wait; used by one Write at a time
}

func (c *replyAfterStore) Read(p []byte) (int, error) {
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

// Write is called by the connection's one writing loop, one call at a time.
func (c *replyAfterStore) Write(p []byte) (int, error) {
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
		c.hold = time.NewTimer(replyHold)
	} else {
		c.hold.Reset(replyHold)
	}
	select {
	case <-next:
	case <-c.hold.C:
		unheldReplies.Add(1)
	}
	c.hold.Stop()
	return c.Conn.Write(p)
}

// closeOnceListener lets stop close the listener before the server's
// Shutdown closes it again.
type closeOnceListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *closeOnceListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
