package minimgr

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// loadBundle reads and checks the OCI bundle at path: a directory holding a
// config.json with a process and a root whose directory exists. It returns
// the absolute bundle path and the spec.
func loadBundle(path string) (string, *specs.Spec, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("bundle %q: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", nil, fmt.Errorf("bundle %s: %w", abs, errdefs.ErrNotFound)
	case err != nil:
		return "", nil, fmt.Errorf("bundle %s: %w", abs, err)
	case !st.IsDir():
		return "", nil, fmt.Errorf("bundle %s is not a directory: %w", abs, errdefs.ErrInvalidArgument)
	}
	spec, err := readSpec(filepath.Join(abs, configFile))
	if err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return "", nil, fmt.Errorf("bundle %s: config.json has no root.path: %w", abs, errdefs.ErrInvalidArgument)
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(abs, root)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return "", nil, fmt.Errorf("bundle %s: root %s is not a directory: %w", abs, root, errdefs.ErrInvalidArgument)
	}
	return abs, spec, nil
}

// readSpec reads an OCI config.json.
func readSpec(path string) (*specs.Spec, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("%s: no process: %w", path, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// stateSpec turns the user's spec into the one the shim runs from the state
// directory: the root becomes the absolute path of the user's rootfs (so
// nothing is mounted, copied or linked), args and terminal are those asked
// for, and a container without a cgroups path gets /minimgr/NS/ID so that
// equal IDs of different namespaces never share a cgroup.
func stateSpec(spec *specs.Spec, bundle, ns, id string, args []string, terminal bool) (*specs.Spec, error) {
	out := *spec
	root := *spec.Root
	if !filepath.IsAbs(root.Path) {
		root.Path = filepath.Join(bundle, root.Path)
	}
	out.Root = &root
	proc := *spec.Process
	if len(args) > 0 {
		proc.Args = append([]string(nil), args...)
	}
	if len(proc.Args) == 0 && proc.CommandLine == "" {
		return nil, fmt.Errorf("no command: config.json has no process.args and none was given: %w", errdefs.ErrInvalidArgument)
	}
	proc.Terminal = terminal
	out.Process = &proc
	if out.Linux != nil && out.Linux.CgroupsPath == "" {
		lx := *out.Linux
		lx.CgroupsPath = "/minimgr/" + ns + "/" + id
		out.Linux = &lx
	}
	return &out, nil
}

// writeSpec writes spec as dir/config.json.
func writeSpec(dir string, spec *specs.Spec) error {
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, configFile), data, 0o600)
}

// execSpec is the process spec of an exec: the container's process (user,
// env, cwd, capabilities) with the given args and terminal.
func execSpec(dir string, args []string, terminal bool) (*specs.Process, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	spec, err := readSpec(filepath.Join(dir, configFile))
	if err != nil {
		return nil, err
	}
	p := *spec.Process
	p.Args = append([]string(nil), args...)
	p.CommandLine = ""
	p.Terminal = terminal
	p.ConsoleSize = nil
	return &p, nil
}
