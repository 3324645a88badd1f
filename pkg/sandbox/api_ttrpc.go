package sandbox

import (
	"context"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// serviceName is the ttrpc service containerd's sandbox controller calls
// for a `sandboxer = "shim"` handler.
const serviceName = "containerd.runtime.sandbox.v1.Sandbox"

// RegisterTTRPC registers the service on a ttrpc server: one decoder per
// method of containerd's Sandbox API, onto the handlers of s (the messages
// are this package's own, see api.proto).
func (s *Service) RegisterTTRPC(server *ttrpc.Server) {
	server.RegisterService(serviceName, &ttrpc.ServiceDesc{Methods: s.methods()})
}

// methods are the service's methods by their names in containerd's API.
func (s *Service) methods() map[string]ttrpc.Method {
	return map[string]ttrpc.Method{
		"CreateSandbox":   method(s.CreateSandbox),
		"StartSandbox":    method(s.StartSandbox),
		"Platform":        method(s.Platform),
		"StopSandbox":     method(s.StopSandbox),
		"WaitSandbox":     method(s.WaitSandbox),
		"SandboxStatus":   method(s.SandboxStatus),
		"PingSandbox":     method(s.PingSandbox),
		"ShutdownSandbox": method(s.ShutdownSandbox),
		"SandboxMetrics":  method(s.SandboxMetrics),
		"UpdateSandbox":   method(s.UpdateSandbox),
	}
}

// method decodes a request into Req and calls fn with it.
func method[Req any, PReq interface {
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
