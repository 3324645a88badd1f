package task

import (
	"encoding/json"
	"fmt"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mineshim/mine/internal/runcroot"
	"github.com/mineshim/mine/pkg/process"
)

// The decoding of request payloads that are not plain fields: every one
// returns an error wrapping errdefs.ErrInvalidArgument for bad input.

// decodeProcessSpec decodes an exec's process spec (runtime-spec JSON).
func decodeProcessSpec(a typeurl.Any) (*specs.Process, error) {
	if a == nil || len(a.GetValue()) == 0 {
		return nil, fmt.Errorf("no process spec: %w", errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(a.GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("decode process spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 && spec.CommandLine == "" {
		return nil, fmt.Errorf("process spec without args: %w", errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// decodeResources decodes an Update's LinuxResources (runtime-spec JSON).
func decodeResources(a typeurl.Any) (*specs.LinuxResources, error) {
	if a == nil || len(a.GetValue()) == 0 {
		return nil, fmt.Errorf("no resources: %w", errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(a.GetValue(), &res); err != nil {
		return nil, fmt.Errorf("decode resources: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return &res, nil
}

// checkpointConfig maps a Checkpoint's path and runc CheckpointOptions.
func checkpointConfig(path string, opts typeurl.Any) (process.CheckpointConfig, error) {
	cfg := process.CheckpointConfig{ImagePath: path}
	if opts == nil || len(opts.GetValue()) == 0 {
		return cfg, nil
	}
	var o runcoptions.CheckpointOptions
	if err := typeurl.UnmarshalTo(opts, &o); err != nil {
		return cfg, fmt.Errorf("decode checkpoint options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if o.ImagePath != "" {
		cfg.ImagePath = o.ImagePath
	}
	cfg.WorkPath, cfg.ParentPath = o.WorkPath, o.ParentPath
	cfg.Exit, cfg.OpenTCP, cfg.ExternalUnixSockets = o.Exit, o.OpenTcp, o.ExternalUnixSockets
	cfg.Terminal, cfg.FileLocks = o.Terminal, o.FileLocks
	cfg.EmptyNamespaces, cfg.CgroupsMode = o.EmptyNamespaces, o.CgroupsMode
	return cfg, nil
}

// runtimeOptions applies the runc options of a Create (containerd.runc.v1.Options)
// over the shim's defaults. Other option types (CRI's generic runtimeoptions)
// carry nothing for us and are ignored.
func runtimeOptions(base process.Runtime, opts typeurl.Any, ns string) (process.Runtime, error) {
	if opts == nil || len(opts.GetValue()) == 0 {
		return base, nil
	}
	var o runcoptions.Options
	if !typeurl.Is(opts, &o) {
		return base, nil
	}
	if err := typeurl.UnmarshalTo(opts, &o); err != nil {
		return base, fmt.Errorf("decode runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return RuntimeFromOptions(base, &o, ns), nil
}

// RuntimeFromOptions is the one mapping of containerd's runc options to the
// runtime the shim uses, for the bootstrap (over no defaults) and for Create
// (over the bootstrap's). Options given replace what base
// says, booleans included: they are the runtime handler's whole
// configuration. Root gets one directory per namespace, as the default root
// does, so that equal IDs in two namespaces never collide.
func RuntimeFromOptions(base process.Runtime, o *runcoptions.Options, ns string) process.Runtime {
	r := base
	if o == nil {
		return r.WithDefaults(ns)
	}
	if o.BinaryName != "" {
		r.Binary = o.BinaryName
	}
	if o.Root != "" {
		r.Root = runcroot.For(o.Root, ns)
	}
	r.SystemdCgroup = o.SystemdCgroup
	r.NoPivotRoot = o.NoPivotRoot
	r.NoNewKeyring = o.NoNewKeyring
	if o.IoUid != 0 {
		r.IoUID = int(o.IoUid)
	}
	if o.IoGid != 0 {
		r.IoGID = int(o.IoGid)
	}
	if o.CriuWorkPath != "" {
		r.CriuWorkPath = o.CriuWorkPath
	}
	if o.ShimCgroup != "" {
		r.ShimCgroup = o.ShimCgroup
	}
	return r.WithDefaults(ns)
}
