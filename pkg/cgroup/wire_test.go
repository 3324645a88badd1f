package cgroup

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"runtime/metrics"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// sameWire checks that MarshalAny encodes m into the Any that
// typeurl.MarshalAnyToProto (proto.Marshal) makes of it: the same type URL,
// and a value that decodes to the same message.
func sameWire(t *testing.T, m proto.Message) {
	t.Helper()
	ours, err := MarshalAny(m)
	if err != nil {
		t.Fatalf("MarshalAny(%T): %v", m, err)
	}
	theirs, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		t.Fatal(err)
	}
	if ours.GetTypeUrl() != theirs.GetTypeUrl() {
		t.Fatalf("type URL %q, want %q", ours.GetTypeUrl(), theirs.GetTypeUrl())
	}
	back := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(ours.GetValue(), back); err != nil {
		t.Fatalf("our encoding of %T does not decode: %v", m, err)
	}
	if !proto.Equal(back, m) {
		t.Fatalf("our encoding of %T decodes to another message:\n%s", m, diff(m, back))
	}
	if len(ours.GetValue()) != len(theirs.GetValue()) {
		t.Fatalf("our encoding of %T has %d bytes, proto.Marshal's %d", m, len(ours.GetValue()), len(theirs.GetValue()))
	}
}

// fill sets every protobuf field of the message struct v, recursively, to
// a value of its own: scalars count up from n, lists get two elements.
func fill(v reflect.Value, n *uint64) {
	t := v.Type()
	for i := range t.NumField() {
		if _, ok := t.Field(i).Tag.Lookup("protobuf"); !ok {
			continue
		}
		fillValue(v.Field(i), n)
	}
}

func fillValue(f reflect.Value, n *uint64) {
	*n++
	switch f.Kind() {
	case reflect.Uint64, reflect.Uint32:
		// Large values too: varints of every length.
		f.SetUint(*n << (*n % 5 * 7))
	case reflect.Float64:
		f.SetFloat(float64(*n) + 0.25)
	case reflect.String:
		f.SetString("s" + string(rune('a'+*n%26)))
	case reflect.Pointer:
		f.Set(reflect.New(f.Type().Elem()))
		fill(f.Elem(), n)
	case reflect.Slice:
		s := reflect.MakeSlice(f.Type(), 2, 2)
		for i := range 2 {
			fillValue(s.Index(i), n)
		}
		f.Set(s)
	}
}

func TestMarshalAnyEveryField(t *testing.T) {
	for _, m := range []proto.Message{&v1.Metrics{}, &v2.Metrics{}} {
		var n uint64
		fill(reflect.ValueOf(m).Elem(), &n)
		sameWire(t, m)
	}
}

func TestMarshalAnyZeroAndPartial(t *testing.T) {
	for _, m := range []proto.Message{
		&v1.Metrics{},
		&v2.Metrics{},
		// Empty nested messages are still sent; zero scalars are not.
		&v1.Metrics{Memory: &v1.MemoryStat{Usage: &v1.MemoryEntry{}}, CPU: &v1.CPUStat{Usage: &v1.CPUUsage{PerCPU: []uint64{0, 0, 7}}}},
		&v2.Metrics{Pids: &v2.PidsStat{}, Io: &v2.IOStat{Usage: []*v2.IOEntry{{}, {Major: 8}}}},
	} {
		sameWire(t, m)
	}
}

func TestMarshalAnyRefusesOtherKinds(t *testing.T) {
	// Timestamp's fields are int64 and int32: not a kind of the metrics.
	_, err := MarshalAny(timestamppb.New(timestamppb.Now().AsTime()))
	if err == nil {
		t.Fatal("MarshalAny of a message with int64 fields: no error")
	}
	var nilMetrics *v1.Metrics
	if _, err := MarshalAny(nilMetrics); err == nil {
		t.Fatalf("MarshalAny(nil): %v", err)
	}
}

// TestMarshalAnyKeepsNoTables measures, in a fresh process, the live heap
// that the first encoding of a metrics message leaves behind: MarshalAny's
// against proto.Marshal's (the protobuf runtime's reflection tables and
// full descriptors, kept for the life of the process).
func TestMarshalAnyKeepsNoTables(t *testing.T) {
	if os.Getenv("MINE_WIRE_CHILD") == "1" {
		m := &v1.Metrics{}
		var n uint64
		fill(reflect.ValueOf(m).Elem(), &n)
		ours := retained(func() {
			if _, err := MarshalAny(m); err != nil {
				t.Fatal(err)
			}
		})
		theirs := retained(func() {
			if _, err := proto.Marshal(m); err != nil {
				t.Fatal(err)
			}
		})
		fmt.Printf("retained %d %d\n", ours, theirs)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMarshalAnyKeepsNoTables$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MINE_WIRE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var ours, theirs int64
	i := bytes.Index(out, []byte("retained "))
	if i < 0 {
		t.Fatalf("child said:\n%s", out)
	}
	if _, err := fmt.Sscanf(string(out[i:]), "retained %d %d", &ours, &theirs); err != nil {
		t.Fatalf("child said:\n%s", out)
	}
	t.Logf("live heap kept by the first encoding: MarshalAny %d bytes, proto.Marshal %d bytes", ours, theirs)
	if ours > 32<<10 {
		t.Errorf("MarshalAny keeps %d bytes of live heap after its first use, want at most 32 KiB", ours)
	}
	if theirs < 64<<10 {
		t.Errorf("proto.Marshal keeps only %d bytes: the measurement no longer tells the two apart", theirs)
	}
}

// retained is the growth of the live heap, measured after collections,
// that f leaves behind.
func retained(f func()) int64 {
	live := func() int64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	before := live()
	f()
	return live() - before
}
