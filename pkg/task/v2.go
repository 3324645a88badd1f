package task

import (
	"context"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// RegisterTTRPCv2 also serves the Task API v2 (containerd.task.v2.Task) on
// server, for containerd 1.7 and for containerd 2.x downgrading to it. The
// v2 and v3 messages are the same on the wire, so each call is re-encoded
// and served by the v3 handlers.
func (s *Service) RegisterTTRPCv2(server *ttrpc.Server) {
	v2.RegisterTTRPCTaskService(server, v2Adapter{s})
}

type v2Adapter struct{ s *Service }

// recode copies a message into another type with the same wire format.
func recode[T any, PT interface {
	*T
	proto.Message
}](in proto.Message) (PT, error) {
	out := PT(new(T))
	data, err := proto.Marshal(in)
	if err != nil {
		return nil, wire(errdefs.ErrInvalidArgument)
	}
	if err := proto.Unmarshal(data, out); err != nil {
		return nil, wire(errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// via serves a v2 call with the v3 handler fn.
func via[Req3, Resp2 any, PReq3 interface {
	*Req3
	proto.Message
}, PResp2 interface {
	*Resp2
	proto.Message
}, Resp3 proto.Message](ctx context.Context, in proto.Message, fn func(context.Context, PReq3) (Resp3, error)) (PResp2, error) {
	req, err := recode[Req3, PReq3](in)
	if err != nil {
		return nil, err
	}
	resp, err := fn(ctx, req)
	if err != nil {
		return nil, err
	}
	return recode[Resp2, PResp2](resp)
}

func (a v2Adapter) State(ctx context.Context, r *v2.StateRequest) (*v2.StateResponse, error) {
	return via[v3.StateRequest, v2.StateResponse](ctx, r, a.s.State)
}

func (a v2Adapter) Create(ctx context.Context, r *v2.CreateTaskRequest) (*v2.CreateTaskResponse, error) {
	return via[v3.CreateTaskRequest, v2.CreateTaskResponse](ctx, r, a.s.Create)
}

func (a v2Adapter) Start(ctx context.Context, r *v2.StartRequest) (*v2.StartResponse, error) {
	return via[v3.StartRequest, v2.StartResponse](ctx, r, a.s.Start)
}

func (a v2Adapter) Delete(ctx context.Context, r *v2.DeleteRequest) (*v2.DeleteResponse, error) {
	return via[v3.DeleteRequest, v2.DeleteResponse](ctx, r, a.s.Delete)
}

func (a v2Adapter) Pids(ctx context.Context, r *v2.PidsRequest) (*v2.PidsResponse, error) {
	return via[v3.PidsRequest, v2.PidsResponse](ctx, r, a.s.Pids)
}

func (a v2Adapter) Pause(ctx context.Context, r *v2.PauseRequest) (*emptypb.Empty, error) {
	return via[v3.PauseRequest, emptypb.Empty](ctx, r, a.s.Pause)
}

func (a v2Adapter) Resume(ctx context.Context, r *v2.ResumeRequest) (*emptypb.Empty, error) {
	return via[v3.ResumeRequest, emptypb.Empty](ctx, r, a.s.Resume)
}

func (a v2Adapter) Checkpoint(ctx context.Context, r *v2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return via[v3.CheckpointTaskRequest, emptypb.Empty](ctx, r, a.s.Checkpoint)
}

func (a v2Adapter) Kill(ctx context.Context, r *v2.KillRequest) (*emptypb.Empty, error) {
	return via[v3.KillRequest, emptypb.Empty](ctx, r, a.s.Kill)
}

func (a v2Adapter) Exec(ctx context.Context, r *v2.ExecProcessRequest) (*emptypb.Empty, error) {
	return via[v3.ExecProcessRequest, emptypb.Empty](ctx, r, a.s.Exec)
}

func (a v2Adapter) ResizePty(ctx context.Context, r *v2.ResizePtyRequest) (*emptypb.Empty, error) {
	return via[v3.ResizePtyRequest, emptypb.Empty](ctx, r, a.s.ResizePty)
}

func (a v2Adapter) CloseIO(ctx context.Context, r *v2.CloseIORequest) (*emptypb.Empty, error) {
	return via[v3.CloseIORequest, emptypb.Empty](ctx, r, a.s.CloseIO)
}

func (a v2Adapter) Update(ctx context.Context, r *v2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return via[v3.UpdateTaskRequest, emptypb.Empty](ctx, r, a.s.Update)
}

func (a v2Adapter) Wait(ctx context.Context, r *v2.WaitRequest) (*v2.WaitResponse, error) {
	return via[v3.WaitRequest, v2.WaitResponse](ctx, r, a.s.Wait)
}

func (a v2Adapter) Stats(ctx context.Context, r *v2.StatsRequest) (*v2.StatsResponse, error) {
	return via[v3.StatsRequest, v2.StatsResponse](ctx, r, a.s.Stats)
}

func (a v2Adapter) Connect(ctx context.Context, r *v2.ConnectRequest) (*v2.ConnectResponse, error) {
	return via[v3.ConnectRequest, v2.ConnectResponse](ctx, r, a.s.Connect)
}

func (a v2Adapter) Shutdown(ctx context.Context, r *v2.ShutdownRequest) (*emptypb.Empty, error) {
	return via[v3.ShutdownRequest, emptypb.Empty](ctx, r, a.s.Shutdown)
}

var _ v2.TTRPCTaskService = v2Adapter{}
