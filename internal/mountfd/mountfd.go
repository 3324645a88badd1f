package mountfd

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// Detached lists the descriptors of process pid that refer to files on
// mounts absent from pid's mount table: mounts detached and kept alive by
// those descriptors, one line per descriptor ("fd N -> PATH (mount ID)").
// Pipes, sockets and anonymous inodes live on the kernel's internal mounts,
// which no mount table lists; they are left out by their link, which is not
// a path.
func Detached(pid int) ([]string, error) {
	proc := fmt.Sprintf("/proc/%d", pid)
	f, err := os.Open(proc + "/mountinfo")
	if err != nil {
		return nil, err
	}
	mounts, err := mountinfo.GetMountsFromReader(f, nil)
	f.Close()
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, m := range mounts {
		ids[strconv.Itoa(m.ID)] = true
	}
	ents, err := os.ReadDir(proc + "/fd")
	if err != nil {
		return nil, err
	}
	var held []string
	for _, e := range ents {
		link, err := os.Readlink(proc + "/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "/") {
			continue // closed meanwhile, or not a path
		}
		info, err := os.ReadFile(proc + "/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if id, ok := strings.CutPrefix(line, "mnt_id:"); ok && !ids[strings.TrimSpace(id)] {
				held = append(held, fmt.Sprintf("fd %s -> %s (mount %s)", e.Name(), link, strings.TrimSpace(id)))
			}
		}
	}
	return held, nil
}
