package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// featuresTimeout bounds `runc features`.
const featuresTimeout = 5 * time.Second

// featuresTypeURL is the type containerd registers for runtime-spec features.
var featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/" + strconv.Itoa(specs.VersionMajor) + "/features/Features"

// printInfo is -info: the runtime options on stdin, RuntimeInfo on stdout,
// with the features of the runtime binary (`runc features`).
func printInfo(stdin io.Reader, stdout io.Writer) error {
	input, err := io.ReadAll(io.LimitReader(stdin, maxBootstrapInput))
	if err != nil {
		return err
	}
	info := &apitypes.RuntimeInfo{
		Name:    "io.containerd.mine.v2",
		Version: &apitypes.RuntimeVersion{Version: version()},
	}
	binary := "runc"
	if len(input) > 0 {
		var opts anypb.Any
		if err := proto.Unmarshal(input, &opts); err != nil {
			return fmt.Errorf("decode runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		info.Options = &opts
		var ro runcoptions.Options
		if typeurl.Is(&opts, &ro) {
			if err := typeurl.UnmarshalTo(&opts, &ro); err != nil {
				return fmt.Errorf("decode runc options: %v: %w", err, errdefs.ErrInvalidArgument)
			}
			if ro.BinaryName != "" {
				binary = ro.BinaryName
			}
		}
	}
	if feat, err := runtimeFeatures(binary); err == nil {
		info.Features = feat
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// runtimeFeatures runs `BINARY features` and wraps its JSON as containerd
// expects it.
func runtimeFeatures(binary string) (*anypb.Any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), featuresTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "features")
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second // a child of the runtime may hold its output
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s features: %w: %s", binary, err, stderr.Bytes())
	}
	var f features.Features
	if err := json.Unmarshal(out, &f); err != nil {
		return nil, fmt.Errorf("%s features: %w", binary, err)
	}
	return &anypb.Any{TypeUrl: featuresTypeURL, Value: out}, nil
}
