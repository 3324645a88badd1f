package minimgr

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/continuity/fs"
)

// Exit codes of a command that could not be run, as docker and shells use
// them.
const (
	ExitCannotExecute = 126
	ExitNotFound      = 127
)

// CommandProblem tells why args (or, when empty, the bundle's
// process.args) cannot be run in the rootfs of bundle: ExitNotFound when
// the program is not there, ExitCannotExecute when it is not an executable
// file, 0 when it looks fine or cannot be told. The program is looked up
// in the PATH of the bundle's process, with symbolic links resolved
// inside the rootfs.
func CommandProblem(bundle string, args []string) int {
	abs, spec, err := loadBundle(bundle)
	if err != nil {
		return 0
	}
	if len(args) == 0 {
		args = spec.Process.Args
	}
	if len(args) == 0 {
		return 0
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(abs, root)
	}
	prog := args[0]
	var candidates []string
	if strings.Contains(prog, "/") {
		p := prog
		if !filepath.IsAbs(p) {
			p = filepath.Join(spec.Process.Cwd, p)
		}
		candidates = []string{p}
	} else {
		path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, e := range spec.Process.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				path = v
			}
		}
		for _, d := range filepath.SplitList(path) {
			if filepath.IsAbs(d) {
				candidates = append(candidates, filepath.Join(d, prog))
			}
		}
	}
	found := false
	for _, c := range candidates {
		p, err := fs.RootPath(root, c)
		if err != nil {
			continue
		}
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0
		}
		found = true
		if !st.IsDir() && st.Mode()&0o111 != 0 {
			return 0
		}
	}
	if found {
		return ExitCannotExecute
	}
	return ExitNotFound
}
