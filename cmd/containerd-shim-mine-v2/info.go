package main

import (
	"fmt"
	"io"

	apitypes "github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// printInfo is -info: the runtime options on stdin, RuntimeInfo on stdout.
func printInfo(stdin io.Reader, stdout io.Writer) error {
	input, err := io.ReadAll(io.LimitReader(stdin, maxBootstrapInput))
	if err != nil {
		return err
	}
	info := &apitypes.RuntimeInfo{
		Name:    "io.containerd.mine.v2",
		Version: &apitypes.RuntimeVersion{Version: version()},
	}
	if len(input) > 0 {
		var opts anypb.Any
		if err := proto.Unmarshal(input, &opts); err != nil {
			return fmt.Errorf("decode runtime options: %w", err)
		}
		info.Options = &opts
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
