package task

import (
	"context"
	"errors"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mineshim/mine/pkg/process"
)

// classified reports whether err carries one of the errdefs classes the
// service answers bad input with.
func classified(err error) bool {
	for _, c := range []error{
		errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists,
		errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented,
	} {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

func FuzzDecode(f *testing.F) {
	opts, _ := typeurl.MarshalAnyToProto(&runcoptions.Options{BinaryName: "crun", Root: "/run/x"})
	ckpt, _ := typeurl.MarshalAnyToProto(&runcoptions.CheckpointOptions{Exit: true, ImagePath: "/img"})
	f.Add(opts.TypeUrl, opts.Value)
	f.Add(ckpt.TypeUrl, ckpt.Value)
	f.Add("types.containerd.io/opencontainers/runtime-spec/1/Process", []byte(`{"args":["sh"],"cwd":"/"}`))
	f.Add("types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", []byte(`{"memory":{"limit":1048576}}`))
	f.Add("", []byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, url string, value []byte) {
		a := &anypb.Any{TypeUrl: url, Value: value}
		if _, err := decodeProcessSpec(a); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("process spec: unclassified %v", err)
		}
		if _, err := decodeResources(a); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("resources: unclassified %v", err)
		}
		if _, err := checkpointConfig("/img", a); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("checkpoint options: unclassified %v", err)
		}
		if _, err := runtimeOptions(process.Runtime{}, a, "ns"); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("runtime options: unclassified %v", err)
		}
	})
}

// FuzzHandlers feeds arbitrary encoded requests to the handlers of a service
// that serves no container: every answer is a classified error, never a
// panic, and nothing is created.
func FuzzHandlers(f *testing.F) {
	seed := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add(uint8(0), seed(&taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/nonexistent"}))
	f.Add(uint8(0), seed(&taskAPI.CreateTaskRequest{ID: "../x", Bundle: "/"}))
	f.Add(uint8(1), seed(&taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1"}))
	f.Add(uint8(2), seed(&taskAPI.KillRequest{ID: "c1", Signal: 9, All: true}))
	f.Add(uint8(3), seed(&taskAPI.StateRequest{ID: "", ExecID: "x"}))
	f.Add(uint8(4), seed(&taskAPI.UpdateTaskRequest{ID: "c1"}))
	svc, err := New(Config{Namespace: "fuzz", Reaper: process.NewReaper(), Events: discard{},
		Runtime: process.Runtime{Binary: "/nonexistent/runc", Root: f.TempDir()}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, method uint8, body []byte) {
		var err error
		switch method % 6 {
		case 0:
			var r taskAPI.CreateTaskRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			// Only paths under a fresh directory: a fuzzed bundle must not
			// make the test write into real directories.
			r.Bundle = t.TempDir() + "/" + r.Bundle
			_, err = svc.Create(ctx, &r)
		case 1:
			var r taskAPI.ExecProcessRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			_, err = svc.Exec(ctx, &r)
		case 2:
			var r taskAPI.KillRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			_, err = svc.Kill(ctx, &r)
		case 3:
			var r taskAPI.StateRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			_, err = svc.State(ctx, &r)
		case 4:
			var r taskAPI.UpdateTaskRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			_, err = svc.Update(ctx, &r)
		case 5:
			var r taskAPI.DeleteRequest
			if proto.Unmarshal(body, &r) != nil {
				return
			}
			_, err = svc.Delete(ctx, &r)
		}
		if err == nil {
			t.Fatalf("method %d accepted %x", method%6, body)
		}
		if !classified(errgrpc.ToNative(err)) {
			t.Fatalf("method %d: unclassified error %v", method%6, err)
		}
		if n := svc.Count(); n != 0 {
			t.Fatalf("%d containers after bad input", n)
		}
	})
}

type discard struct{}

func (discard) Publish(string, string, proto.Message) {}
