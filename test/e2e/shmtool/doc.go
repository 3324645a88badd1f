// Command shmtool writes and reads a System V shared memory segment, for
// the tests of containers sharing a pod's IPC namespace (busybox has no
// such applet):
//
//	shmtool write KEY TEXT   creates the segment KEY and writes TEXT to it
//	shmtool read KEY         prints the text of the existing segment KEY
package main
