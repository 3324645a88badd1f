package main

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mineshim/mine/pkg/process"
	"github.com/mineshim/mine/pkg/task"
)

// maxBootstrapInput bounds what start reads from stdin.
const maxBootstrapInput = 1 << 20

// startRequest is what `start` learned from its stdin, under either protocol.
type startRequest struct {
	// legacy is set for containerd <= 2.2 and 1.7: stdin holds only the
	// runtime options (a protobuf Any) or nothing.
	legacy bool
	// params is the containerd >= 2.3 BootstrapParams; nil when legacy.
	params *bootapi.BootstrapParams
	// options are the runc options, from the bootstrap extension or the
	// legacy stdin; nil when none were given.
	options *runcoptions.Options
}

// parseStart tells the two bootstrap protocols apart. Legacy stdin (an Any)
// can decode as BootstrapParams, so the params count only when their
// instance ID and namespace are those of the command line.
func parseStart(input []byte, id, namespace string) (startRequest, error) {
	var params bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &params) == nil &&
		params.InstanceID == id && params.Namespace == namespace && id != "" {
		req := startRequest{params: &params}
		var o runcoptions.Options
		found, err := params.FindExtension(&o)
		if err != nil {
			return req, fmt.Errorf("bootstrap runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if found {
			req.options = &o
		}
		return req, nil
	}
	req := startRequest{legacy: true}
	if len(input) == 0 {
		return req, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(input, &a); err != nil {
		return req, fmt.Errorf("decode runtime options on stdin: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var o runcoptions.Options
	if typeurl.Is(&a, &o) {
		if err := typeurl.UnmarshalTo(&a, &o); err != nil {
			return req, fmt.Errorf("decode runc options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		req.options = &o
	}
	return req, nil
}

// socketDir returns where the shim's socket goes: BootstrapParams'
// socket_dir when containerd passes one, else containerd's default.
func (r startRequest) socketDir() string {
	if r.params != nil && r.params.GetSocketDir() != "" {
		return r.params.GetSocketDir()
	}
	return defaultSocketDir
}

// grpcAddress returns the containerd address the socket name is derived
// from: the one of BootstrapParams, else the -address flag.
func (r startRequest) grpcAddress(flag string) string {
	if r.params != nil && r.params.GetContainerdGrpcAddress() != "" {
		return r.params.GetContainerdGrpcAddress()
	}
	return flag
}

// defaultSocketDir is containerd's directory of shim sockets: `s` under
// its default state directory /run/containerd.
const defaultSocketDir = "/run/containerd/s"

// socketPath is containerd's rule for a shim's socket (pkg/shim
// CreateSocketAddress): dir, then the sha256 of
// "<containerd address>/<namespace>/<id>" in hex, with "/debug" appended
// for the debug socket. The name is a hash because a unix socket path is
// limited to about 106 bytes. Tools find a shim's socket by this rule, so it
// must not change; id is the group's id for a group shim.
func socketPath(dir, address, ns, id string, debug bool) string {
	name := filepath.Join(address, ns, id)
	if debug {
		name = filepath.Join(name, "debug")
	}
	return fmt.Sprintf("%s/%x", dir, sha256.Sum256([]byte(name)))
}

// answerStart encodes start's reply for the protocol the request came in:
// a BootstrapResult (version 3, Task API v3) for containerd >= 2.3, and the
// bare address for every older containerd. containerd 1.6 reads only the
// address; 1.7 and 2.0 to 2.2 try JSON first and take what does not parse
// as the address of a Task API v2 shim, which this shim also serves.
func answerStart(r startRequest, address string) ([]byte, error) {
	if !r.legacy {
		return proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
	}
	return []byte(address), nil
}

// runtimeFromOptions turns runc options into the runtime defaults of the shim.
func runtimeFromOptions(o *runcoptions.Options, ns string) process.Runtime {
	return task.RuntimeFromOptions(process.Runtime{}, o, ns)
}
