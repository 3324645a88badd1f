// Package replyhold closes a leak of ttrpc's server from underneath it.
//
// ttrpc's server connection reads a request, starts its handler, and only
// then records the request's stream in a map; writing the reply removes
// the stream from the map. A handler that answers before the stream is
// recorded leaves it there for as long as the connection lives
// (containerd/ttrpc issue 236). containerd keeps one connection to a shim
// for the shim's whole life and sends every Stats poll and exec probe
// through it, so a long-lived server's heap grows without end: some 220
// entries per 1000 `ctr task exec` were measured on one shim.
//
// Wrap holds a connection's replies back until the connection reads again,
// which it does only once every request it has read is recorded; Handshaker
// wraps every connection a ttrpc server accepts. The shim's server and
// minimgr's events server use it. The package owns nothing but the counter
// of replies it could not hold back (Unheld).
package replyhold
