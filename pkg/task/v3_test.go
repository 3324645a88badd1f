package task

import (
	"testing"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestV3MessagesAreV2OnTheWire checks what registerV3 relies on: every
// message of the Task API v3 has a v2 namesake with the same fields (number,
// name, kind, cardinality and message type), so a v3 request decodes into
// the v2 type without loss and a v2 response is a valid v3 one.
func TestV3MessagesAreV2OnTheWire(t *testing.T) {
	f3 := v3.File_runtime_task_v3_shim_proto
	f2 := v2.File_runtime_task_v2_shim_proto
	msgs := f3.Messages()
	if msgs.Len() == 0 {
		t.Fatal("no messages in the v3 file descriptor")
	}
	for i := range msgs.Len() {
		m3 := msgs.Get(i)
		m2 := f2.Messages().ByName(m3.Name())
		if m2 == nil {
			t.Errorf("v3 message %s has no v2 namesake", m3.Name())
			continue
		}
		compareFields(t, m3, m2)
	}
	// Every method of the v3 service is registered, with v2 types of the
	// same names.
	svc := f3.Services().ByName("Task")
	if svc == nil {
		t.Fatal("no Task service in the v3 file descriptor")
	}
	if string(svc.FullName()) != v3ServiceName {
		t.Errorf("v3 service is %s, registered as %s", svc.FullName(), v3ServiceName)
	}
	svc2 := f2.Services().ByName("Task")
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		m2 := svc2.Methods().ByName(m.Name())
		if m2 == nil {
			t.Errorf("v3 method %s has no v2 namesake", m.Name())
			continue
		}
		for _, p := range [][2]protoreflect.MessageDescriptor{{m.Input(), m2.Input()}, {m.Output(), m2.Output()}} {
			if p[0].Name() != p[1].Name() {
				t.Errorf("method %s: v3 uses %s, v2 %s", m.Name(), p[0].FullName(), p[1].FullName())
			}
			compareFields(t, p[0], p[1])
		}
	}
}

func compareFields(t *testing.T, m3, m2 protoreflect.MessageDescriptor) {
	t.Helper()
	if m3.Fields().Len() != m2.Fields().Len() {
		t.Errorf("%s: %d fields in v3, %d in v2", m3.Name(), m3.Fields().Len(), m2.Fields().Len())
		return
	}
	for j := range m3.Fields().Len() {
		a := m3.Fields().Get(j)
		b := m2.Fields().ByNumber(a.Number())
		switch {
		case b == nil:
			t.Errorf("%s.%s (%d): no v2 field with that number", m3.Name(), a.Name(), a.Number())
		case a.Name() != b.Name() || a.Kind() != b.Kind() || a.Cardinality() != b.Cardinality():
			t.Errorf("%s field %d: v3 %s %s %s, v2 %s %s %s", m3.Name(), a.Number(),
				a.Cardinality(), a.Kind(), a.Name(), b.Cardinality(), b.Kind(), b.Name())
		case a.Message() != nil && a.Message().FullName() != b.Message().FullName():
			// Nested types must be the same shared types (containerd.types...),
			// not v3-local ones.
			if a.Message().Name() != b.Message().Name() {
				t.Errorf("%s.%s: v3 type %s, v2 %s", m3.Name(), a.Name(), a.Message().FullName(), b.Message().FullName())
			} else {
				compareFields(t, a.Message(), b.Message())
			}
		}
	}
}
