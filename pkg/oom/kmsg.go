//go:build linux

package oom

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	// kmsgRecordMax is the largest record /dev/kmsg returns (the kernel's
	// CONSOLE_EXT_LOG_MAX); a smaller buffer makes read(2) fail with EINVAL
	// and leaves the record unread.
	kmsgRecordMax = 8192
	// kmsgVictims is how many OOM victims the log remembers between two
	// readings of it.
	kmsgVictims = 64
)

// kmsgKilled is the part of the OOM killer's record of a victim that every
// kernel since 4.x prints, unconditionally (no rate limit): "Memory cgroup
// out of memory: Killed process 1234 (sh) total-vm:...", or "Out of memory:
// Killed process ..." for a global OOM.
var kmsgKilled = []byte("Killed process ")

// kmsgLog follows the kernel log for the OOM killer's records of its
// victims. It is the one witness of a kill left when the cgroup that counted
// it has been removed before anyone read the counter: a systemd scope is
// removed as soon as its last process has exited, and the kernel notifies
// memory.events at most once per 10 ms.
//
// It reads /dev/kmsg without blocking, from where the log ended when it was
// opened, only when asked (mark and killedSince): records of other kinds are
// read and dropped, the victims are kept, the last kmsgVictims of them.
type kmsgLog struct {
	mu      sync.Mutex
	fd      int      // /dev/kmsg, -1 once closed; guarded by mu
	last    uint64   // sequence number of the last record read; guarded by mu
	victims []victim // oldest first, at most kmsgVictims; guarded by mu
}

// victim is one OOM kill read from the kernel log.
type victim struct {
	seq uint64 // the record's sequence number
	pid int    // in the initial PID namespace
}

// openKmsg opens the kernel log at its end. It fails when the process may
// not read it (dmesg_restrict without CAP_SYSLOG) or does not run in the
// initial PID namespace, where the kernel's PIDs are its own.
func openKmsg() (*kmsgLog, error) {
	if err := requireInitialPIDNamespace(); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, classify("open /dev/kmsg", err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("seek /dev/kmsg: %w", err)
	}
	return &kmsgLog{fd: fd}, nil
}

// requireInitialPIDNamespace fails unless the process is in the initial PID
// namespace: its NSpid line in /proc/self/status lists one PID.
func requireInitialPIDNamespace() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := bytes.CutPrefix(s.Bytes(), []byte("NSpid:")); ok {
			if n := len(bytes.Fields(rest)); n != 1 {
				return fmt.Errorf("in a nested PID namespace (NSpid has %d PIDs): the kernel log's PIDs are not ours", n)
			}
			return nil
		}
	}
	if err := s.Err(); err != nil {
		return err
	}
	return errors.New("no NSpid in /proc/self/status (kernel < 4.1): cannot tell the PID namespace")
}

// mark reads the log to its end and returns the sequence number of its last
// record: the victims killedSince finds after it were killed later.
func (k *kmsgLog) mark() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.readLocked()
	return k.last
}

// killedSince reads the log to its end and reports whether the OOM killer
// killed pid in a record after mark.
func (k *kmsgLog) killedSince(pid int, mark uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.readLocked()
	for _, v := range k.victims {
		if v.seq > mark && v.pid == pid {
			return true
		}
	}
	return false
}

// readLocked reads every record written since the last reading.
func (k *kmsgLog) readLocked() {
	if k.fd < 0 {
		return
	}
	var buf []byte
	for {
		if buf == nil {
			buf = make([]byte, kmsgRecordMax)
		}
		n, err := unix.Read(k.fd, buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EPIPE):
			// Records were overwritten before they were read; the
			// next read returns the oldest one left.
			continue
		case err != nil:
			// EAGAIN: the end of the log. Anything else would repeat.
			return
		}
		seq, pid, ok := parseKmsgRecord(buf[:n])
		if seq > k.last {
			k.last = seq
		}
		if ok {
			k.remember(victim{seq: seq, pid: pid})
		}
	}
}

// remember keeps v, dropping the oldest victim past kmsgVictims.
func (k *kmsgLog) remember(v victim) {
	if len(k.victims) == kmsgVictims {
		k.victims = append(k.victims[:0], k.victims[1:]...)
	}
	k.victims = append(k.victims, v)
}

// close closes the log; later readings find nothing new.
func (k *kmsgLog) close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fd < 0 {
		return nil
	}
	err := unix.Close(k.fd)
	k.fd = -1
	return err
}

// parseKmsgRecord returns the sequence number of a /dev/kmsg record
// ("PRIORITY,SEQ,USEC,FLAGS[,...];MESSAGE\n" then " KEY=VALUE" lines) and,
// when it is the OOM killer's record of a victim, the victim's PID. Only
// records of the kernel itself count (facility 0): a privileged process
// can write records of its own to /dev/kmsg, under facility LOG_USER.
func parseKmsgRecord(rec []byte) (seq uint64, pid int, ok bool) {
	prefix, msg, found := bytes.Cut(rec, []byte{';'})
	if !found {
		return 0, 0, false
	}
	fields := bytes.SplitN(prefix, []byte{','}, 4)
	if len(fields) < 3 {
		return 0, 0, false
	}
	prio, err := strconv.ParseUint(string(fields[0]), 10, 32)
	if err != nil {
		return 0, 0, false
	}
	if seq, err = strconv.ParseUint(string(fields[1]), 10, 64); err != nil {
		return 0, 0, false
	}
	if prio>>3 != 0 {
		return seq, 0, false
	}
	msg, _, _ = bytes.Cut(msg, []byte{'\n'})
	_, rest, found := bytes.Cut(msg, kmsgKilled)
	if !found {
		return seq, 0, false
	}
	digits, _, found := bytes.Cut(rest, []byte(" ("))
	if !found {
		return seq, 0, false
	}
	n, err := strconv.Atoi(string(digits))
	if err != nil || n <= 0 {
		return seq, 0, false
	}
	return seq, n, true
}
