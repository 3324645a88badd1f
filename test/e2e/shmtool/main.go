package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

const segmentSize = 4096

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "shmtool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: shmtool write KEY TEXT | shmtool read KEY")
	}
	key, err := strconv.ParseInt(args[1], 0, 32)
	if err != nil {
		return err
	}
	switch args[0] {
	case "write":
		if len(args) != 3 || len(args[2]) >= segmentSize {
			return fmt.Errorf("write needs KEY and a TEXT under %d bytes", segmentSize)
		}
		id, err := unix.SysvShmGet(int(key), segmentSize, unix.IPC_CREAT|0o600)
		if err != nil {
			return fmt.Errorf("shmget: %w", err)
		}
		mem, err := unix.SysvShmAttach(id, 0, 0)
		if err != nil {
			return fmt.Errorf("shmat: %w", err)
		}
		copy(mem, append([]byte(args[2]), 0))
		return unix.SysvShmDetach(mem)
	case "read":
		id, err := unix.SysvShmGet(int(key), 0, 0)
		if err != nil {
			return fmt.Errorf("shmget: %w", err)
		}
		mem, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
		if err != nil {
			return fmt.Errorf("shmat: %w", err)
		}
		text, _, _ := bytes.Cut(mem, []byte{0})
		fmt.Println(string(text))
		return unix.SysvShmDetach(mem)
	}
	return fmt.Errorf("unknown command %q", args[0])
}
