// Package unixsock tells a dead unix socket from a live one before its path
// is taken over.
//
// The shim's start and delete, and minimgr's events server, find a socket
// file at the path they want and must decide whether a server still owns
// it. Only a refused connect (nobody listens on it) or a path already gone
// says so. A connect that fails otherwise, because the listener's backlog
// is full or because a loaded machine let the bound pass before the connect
// was tried, may have reached a live server: taking its path over would cut
// off a group shim's containers, or another events server's shims.
package unixsock
