package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/pkg/minimgr"
)

func TestPrintEvent(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	ev := minimgr.Event{
		Timestamp: at,
		Namespace: "ns",
		Topic:     "/tasks/create",
		TypeURL:   "containerd.events.TaskCreate",
		Event: &eventstypes.TaskCreate{
			ContainerID: "c1",
			Bundle:      "/run/minimgr/ns/c1",
			IO:          &eventstypes.TaskIO{Stdout: "/x/init.stdout"},
			Pid:         42,
		},
	}
	var text bytes.Buffer
	printEventText(&text, ev)
	want := `2026-01-02T03:04:05.000000006Z ns /tasks/create container_id=c1 bundle=/run/minimgr/ns/c1 io={"stdout":"/x/init.stdout"} pid=42` + "\n"
	if text.String() != want {
		t.Errorf("text\n got %q\nwant %q", text.String(), want)
	}

	exit := minimgr.Event{Timestamp: at, Namespace: "ns", Topic: "/tasks/exit",
		Event: &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", ExitStatus: 3, ExitedAt: timestamppb.New(at)}}
	text.Reset()
	printEventText(&text, exit)
	if !strings.HasSuffix(text.String(), " exit_status=3 exited_at=2026-01-02T03:04:05.000000006Z\n") {
		t.Errorf("text %q", text.String())
	}

	var js bytes.Buffer
	printEventJSON(&js, ev)
	var got struct {
		Timestamp time.Time `json:"timestamp"`
		Namespace string    `json:"namespace"`
		Topic     string    `json:"topic"`
		Type      string    `json:"type"`
		Event     struct {
			ContainerID string `json:"container_id"`
			Pid         int    `json:"pid"`
		} `json:"event"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, js.String())
	}
	if !got.Timestamp.Equal(at) || got.Namespace != "ns" || got.Topic != "/tasks/create" ||
		got.Type != "containerd.events.TaskCreate" || got.Event.ContainerID != "c1" || got.Event.Pid != 42 {
		t.Errorf("json %s", js.String())
	}
}
