package main

import (
	"crypto/sha256"
	"encoding/json"
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

// socketDir returns where the shim's socket goes.
func (r startRequest) socketDir() string {
	if r.params != nil && r.params.GetSocketDir() != "" {
		return r.params.GetSocketDir()
	}
	return defaultSocketDir
}

// defaultSocketDir is containerd's directory of shim sockets.
const defaultSocketDir = "/run/containerd/s"

// socketPath derives a short, stable socket path for the shim of id in ns
// talking to the containerd at address: the unix path limit is ~106 bytes,
// so the name is a hash.
func socketPath(dir, address, ns, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(address, ns, id, "mine")))
	return filepath.Join(dir, fmt.Sprintf("%x", sum))
}

// answerStart encodes start's reply for the protocol the request came in.
func answerStart(r startRequest, address string) ([]byte, error) {
	if !r.legacy {
		return proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
	}
	// containerd <= 2.2 reads JSON with a version; 2 is the Task API v2,
	// which every containerd since 1.7 speaks.
	return json.Marshal(struct {
		Version  int    `json:"version"`
		Address  string `json:"address"`
		Protocol string `json:"protocol"`
	}{2, address, "ttrpc"})
}

// runtimeFromOptions turns runc options into the runtime defaults of the shim.
func runtimeFromOptions(o *runcoptions.Options, ns string) process.Runtime {
	return task.RuntimeFromOptions(process.Runtime{}, o, ns)
}
