package cgroup

import (
	"errors"
	"math"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// atFDCWD is AT_FDCWD as a system call argument.
var atFDCWD = func() uintptr { fd := unix.AT_FDCWD; return uintptr(fd) }()

// errFormat is a cgroup file whose content is not in the kernel's format.
var errFormat = errors.New("cgroup file: invalid format")

// fileReader reads whole cgroup files into a buffer it reuses. Not safe for
// concurrent use.
type fileReader struct {
	buf  []byte // the last file read
	path []byte // the last path opened, NUL-terminated
}

// read returns the content of dir/name, valid until the next read. The
// error is an *os.PathError: os.IsNotExist holds for a missing file.
func (r *fileReader) read(dir, name string) ([]byte, error) {
	p := append(r.path[:0], dir...)
	p = append(p, '/')
	p = append(p, name...)
	p = append(p, 0)
	r.path = p
	var fd int
	for {
		v, _, errno := unix.Syscall6(unix.SYS_OPENAT, atFDCWD, uintptr(unsafe.Pointer(&p[0])),
			uintptr(unix.O_RDONLY|unix.O_CLOEXEC), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return nil, &os.PathError{Op: "open", Path: string(p[:len(p)-1]), Err: errno}
		}
		fd = int(v)
		break
	}
	defer unix.Close(fd)
	if r.buf == nil {
		r.buf = make([]byte, 2048)
	}
	n := 0
	for {
		if n == len(r.buf) {
			r.buf = append(r.buf, make([]byte, len(r.buf))...)
		}
		m, err := unix.Read(fd, r.buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: string(p[:len(p)-1]), Err: err}
		}
		if m == 0 {
			return r.buf[:n], nil
		}
		n += m
	}
}

// nextLine splits b at its first newline.
func nextLine(b []byte) (line, rest []byte) {
	for i, c := range b {
		if c == '\n' {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// nextField returns the first run of non-space bytes of b and what follows.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	return b[i:j], b[j:]
}

// trim drops the spaces around b.
func trim(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// keyValue splits a "key value" line: exactly two fields.
func keyValue(line []byte) (key []byte, v uint64, err error) {
	key, rest := nextField(line)
	val, rest := nextField(rest)
	if extra, _ := nextField(rest); len(key) == 0 || len(val) == 0 || len(extra) != 0 {
		return nil, 0, errFormat
	}
	v, err = parseUint(val, 64)
	return key, v, err
}

// parseUint parses a decimal of bitSize bits as the cgroups managers do: a
// negative number (memory limits can be -1 on old kernels) reads as 0.
func parseUint(b []byte, bitSize uint) (uint64, error) {
	if len(b) == 0 {
		return 0, errFormat
	}
	if b[0] == '-' {
		if _, err := parseDigits(b[1:], 64); err != nil && !errors.Is(err, errRange) {
			return 0, err
		}
		return 0, nil
	}
	return parseDigits(b, bitSize)
}

var errRange = errors.New("cgroup file: value out of range")

// parseDigits parses an unsigned decimal of bitSize bits, without sign.
func parseDigits(b []byte, bitSize uint) (uint64, error) {
	if len(b) == 0 {
		return 0, errFormat
	}
	max := uint64(math.MaxUint64)
	if bitSize < 64 {
		max = 1<<bitSize - 1
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errFormat
		}
		d := uint64(c - '0')
		if v > (max-d)/10 {
			for _, c := range b {
				if c < '0' || c > '9' {
					return 0, errFormat
				}
			}
			return 0, errRange
		}
		v = v*10 + d
	}
	return v, nil
}

// parseFloat parses a PSI average ("0.00", "12.34"): the digits make an
// exact integer and one division by the power of ten rounds it, so the
// result is the nearest float64, as strconv.ParseFloat gives.
func parseFloat(b []byte) (float64, bool) {
	var n, scale uint64 = 0, 1
	seenDot, digits := false, 0
	for _, c := range b {
		switch {
		case c == '.' && !seenDot && digits > 0:
			seenDot = true
		case c >= '0' && c <= '9' && n < 1<<49:
			n = n*10 + uint64(c-'0')
			digits++
			if seenDot {
				scale *= 10
			}
		default:
			return 0, false
		}
	}
	if digits == 0 {
		return 0, false
	}
	return float64(n) / float64(scale), true
}

// exists tells whether dir/name exists.
func (r *fileReader) exists(dir, name string) bool {
	p := append(r.path[:0], dir...)
	p = append(p, '/')
	p = append(p, name...)
	p = append(p, 0)
	r.path = p
	for {
		_, _, errno := unix.Syscall6(unix.SYS_FACCESSAT, atFDCWD, uintptr(unsafe.Pointer(&p[0])),
			uintptr(unix.F_OK), 0, 0, 0)
		if errno != unix.EINTR {
			return errno == 0
		}
	}
}
