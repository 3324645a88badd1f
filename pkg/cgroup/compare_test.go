package cgroup

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// sameMetrics compares our reading with the manager's. The cgroup may move
// between readings, so the manager reads before and after ours; when both
// of its readings agree, ours must equal them in every field. It tries a
// few times for such a quiet moment.
func sameMetrics(t *testing.T, ours func() (proto.Message, error), theirs func() (proto.Message, error)) proto.Message {
	t.Helper()
	for range 20 {
		a, err := theirs()
		if err != nil {
			t.Fatalf("manager: %v", err)
		}
		o, err := ours()
		if err != nil {
			t.Fatalf("reader: %v", err)
		}
		b, err := theirs()
		if err != nil {
			t.Fatalf("manager: %v", err)
		}
		if !proto.Equal(a, b) {
			continue
		}
		if !proto.Equal(a, o) {
			t.Fatalf("the reader and the manager differ:\n%s", diff(a, o))
		}
		return o
	}
	t.Fatal("the cgroup never kept still across two manager readings")
	return nil
}

// diff lists the lines of the text forms that differ.
func diff(manager, reader proto.Message) string {
	opts := prototext.MarshalOptions{Multiline: true}
	ml := strings.Split(opts.Format(manager), "\n")
	rl := strings.Split(opts.Format(reader), "\n")
	var b strings.Builder
	for _, l := range ml {
		if !slices.Contains(rl, l) {
			fmt.Fprintf(&b, "manager only: %s\n", l)
		}
	}
	for _, l := range rl {
		if !slices.Contains(ml, l) {
			fmt.Fprintf(&b, "reader only:  %s\n", l)
		}
	}
	return b.String()
}
