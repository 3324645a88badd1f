// Package unixsock tells a dead unix socket from a live one before its path
// is taken over.
//
// The shim's start and delete, and minimgr's events server, find a socket
// file at the path they want and must decide whether a server still owns
// it. A connect that fails because the listener's backlog is full, or
// because a loaded machine let the bound pass before the connect was tried,
// may have reached a live server: taking its path over would cut off a
// group shim's containers, or another events server's shims. Every other
// failure (refused, gone, a datagram socket, a symlink loop) leaves a path
// no client can use, which is taken over as before.
package unixsock
