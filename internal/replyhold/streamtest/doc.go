// Package streamtest counts, for tests, the streams that the ttrpc servers
// of the test's process still hold recorded, and makes the window in which
// ttrpc leaves one behind likely (see package replyhold). It reads the heap
// profile; it owns nothing of the servers it counts.
package streamtest
