package task

import (
	"context"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// The Task API v3 (containerd.task.v3.Task) and v2 (containerd.task.v2.Task)
// carry the same messages: each v3 message has the fields of its v2
// namesake, with the same numbers and types (v3_test.go checks every one).
// The service is written against the v2 message types because containerd's
// v3 Go package also holds the gRPC stubs of the service, and importing it
// would link the whole gRPC stack (transport, HTTP/2, TLS, x/net/trace) into
// a shim that speaks only ttrpc. The v3 service is registered by hand here:
// one decoder per method, onto the same handlers.

// v3ServiceName is the ttrpc service containerd >= 2.0 calls.
const v3ServiceName = "containerd.task.v3.Task"

// RegisterTTRPCv2 also serves the Task API v2 (containerd.task.v2.Task) on
// server, for containerd 1.7 and for containerd 2.x downgrading to it.
func (s *Service) RegisterTTRPCv2(server *ttrpc.Server) {
	v2.RegisterTTRPCTaskService(server, s)
}

// registerV3 serves the Task API v3 with the handlers of s.
func registerV3(server *ttrpc.Server, s v2.TTRPCTaskService) {
	server.RegisterService(v3ServiceName, &ttrpc.ServiceDesc{
		Methods: map[string]ttrpc.Method{
			"State":      Method(s.State),
			"Create":     Method(s.Create),
			"Start":      Method(s.Start),
			"Delete":     Method(s.Delete),
			"Pids":       Method(s.Pids),
			"Pause":      Method(s.Pause),
			"Resume":     Method(s.Resume),
			"Checkpoint": Method(s.Checkpoint),
			"Kill":       Method(s.Kill),
			"Exec":       Method(s.Exec),
			"ResizePty":  Method(s.ResizePty),
			"CloseIO":    Method(s.CloseIO),
			"Update":     Method(s.Update),
			"Wait":       Method(s.Wait),
			"Stats":      Method(s.Stats),
			"Connect":    Method(s.Connect),
			"Shutdown":   Method(s.Shutdown),
		},
	})
}

// Method is a ttrpc method that decodes a request into Req and calls fn
// with it: for services registered by hand, with message types that are not
// those of containerd's generated stubs.
func Method[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](fn func(context.Context, PReq) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := PReq(new(Req))
		if err := unmarshal(req); err != nil {
			return nil, err
		}
		return fn(ctx, req)
	}
}

var _ v2.TTRPCTaskService = (*Service)(nil)
