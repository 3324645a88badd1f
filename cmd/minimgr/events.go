package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/pkg/minimgr"
)

func eventsFlags(fs *pflag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print one JSON object per event")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 0 {
			return 0, usagef("takes no arguments")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		srv, err := m.ListenEvents()
		if err != nil {
			return 0, err
		}
		// Tells whoever waits for us (a script, a test) that shims can
		// forward from now on.
		fmt.Fprintf(c.stderr, "minimgr events: listening on %s\n", srv.Path())
		ctx, cancel := interruptible(c.ctx)
		defer cancel()
		print := printEventText
		if *asJSON {
			print = printEventJSON
		}
		return 0, srv.Serve(ctx, func(e minimgr.Event) { print(c.stdout, e) })
	}
}

// eventJSON is the --json form of an event.
type eventJSON struct {
	Timestamp time.Time       `json:"timestamp"`
	Namespace string          `json:"namespace"`
	Topic     string          `json:"topic"`
	Type      string          `json:"type,omitempty"`
	Event     json.RawMessage `json:"event,omitempty"`
}

func printEventJSON(w io.Writer, e minimgr.Event) {
	out := eventJSON{Timestamp: e.Timestamp, Namespace: e.Namespace, Topic: e.Topic, Type: e.TypeURL}
	if e.Event != nil {
		if data, err := (protojson.MarshalOptions{UseProtoNames: true}).Marshal(e.Event); err == nil {
			out.Event = data
		}
	}
	data, err := json.Marshal(out)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "%s\n", data)
}

// printEventText prints "TIME NAMESPACE TOPIC field=value...".
func printEventText(w io.Writer, e minimgr.Event) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", e.Timestamp.Format(time.RFC3339Nano), e.Namespace, e.Topic)
	if e.Event == nil {
		fmt.Fprintf(&b, " type=%s", e.TypeURL)
	} else {
		msg := e.Event.ProtoReflect()
		fields := msg.Descriptor().Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			if !msg.Has(fd) {
				continue
			}
			fmt.Fprintf(&b, " %s=%s", fd.Name(), fieldText(fd, msg.Get(fd)))
		}
	}
	fmt.Fprintln(w, b.String())
}

func fieldText(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	if fd.IsList() || fd.IsMap() {
		return compactJSON(fd, v)
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if ts, ok := v.Message().Interface().(*timestamppb.Timestamp); ok {
			return ts.AsTime().Format(time.RFC3339Nano)
		}
		return messageText(v.Message().Interface())
	case protoreflect.StringKind:
		s := v.String()
		if s == "" || strings.ContainsAny(s, " \t\"=") {
			return fmt.Sprintf("%q", s)
		}
		return s
	}
	return v.String()
}

func compactJSON(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	if fd.IsList() {
		parts := make([]string, 0, v.List().Len())
		for i := 0; i < v.List().Len(); i++ {
			el := v.List().Get(i)
			if fd.Kind() == protoreflect.MessageKind {
				parts = append(parts, messageText(el.Message().Interface()))
			} else {
				parts = append(parts, el.String())
			}
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprintf("map[%d]", v.Map().Len())
}

// messageText is a nested message as compact JSON.
func messageText(m proto.Message) string {
	data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return "?"
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return string(data)
	}
	return b.String()
}
