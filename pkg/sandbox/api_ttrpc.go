package sandbox

import (
	"github.com/containerd/ttrpc"

	"github.com/mineshim/mine/pkg/task"
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
		"CreateSandbox":   task.Method(s.CreateSandbox),
		"StartSandbox":    task.Method(s.StartSandbox),
		"Platform":        task.Method(s.Platform),
		"StopSandbox":     task.Method(s.StopSandbox),
		"WaitSandbox":     task.Method(s.WaitSandbox),
		"SandboxStatus":   task.Method(s.SandboxStatus),
		"PingSandbox":     task.Method(s.PingSandbox),
		"ShutdownSandbox": task.Method(s.ShutdownSandbox),
		"SandboxMetrics":  task.Method(s.SandboxMetrics),
		"UpdateSandbox":   task.Method(s.UpdateSandbox),
	}
}
