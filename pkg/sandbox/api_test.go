package sandbox

import (
	"testing"

	cdsandbox "github.com/containerd/containerd/api/runtime/sandbox/v1"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestMessagesMatchContainerd checks what api.proto promises: every message
// of containerd's Sandbox API has a namesake here with the same fields
// (number, name, kind, cardinality, nested types), every method of
// containerd's service is served under the service name containerd calls,
// with request and response types of the same names.
func TestMessagesMatchContainerd(t *testing.T) {
	theirs := cdsandbox.File_runtime_sandbox_v1_sandbox_proto
	ours := File_pkg_sandbox_api_proto
	if theirs.Messages().Len() != ours.Messages().Len() {
		t.Errorf("containerd declares %d messages, api.proto %d", theirs.Messages().Len(), ours.Messages().Len())
	}
	for i := range theirs.Messages().Len() {
		m := theirs.Messages().Get(i)
		o := ours.Messages().ByName(m.Name())
		if o == nil {
			t.Errorf("containerd's %s has no namesake in api.proto", m.Name())
			continue
		}
		sameFields(t, m, o)
	}

	svc := theirs.Services().ByName("Sandbox")
	if svc == nil {
		t.Fatal("no Sandbox service in containerd's descriptor")
	}
	if string(svc.FullName()) != serviceName {
		t.Errorf("containerd's service is %s, registered as %s", svc.FullName(), serviceName)
	}
	served := (&Service{}).methods()
	if len(served) != svc.Methods().Len() {
		t.Errorf("containerd's service has %d methods, %d registered", svc.Methods().Len(), len(served))
	}
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		if served[string(m.Name())] == nil {
			t.Errorf("method %s is not registered", m.Name())
		}
		for _, d := range []protoreflect.MessageDescriptor{m.Input(), m.Output()} {
			if ours.Messages().ByName(d.Name()) == nil {
				t.Errorf("method %s: %s has no namesake", m.Name(), d.Name())
			}
		}
	}
}

// sameFields compares two message descriptors field by field; types nested
// in a message (map entries) are compared the same way, shared ones
// (containerd.types.*, google.protobuf.*) must be the very same type.
func sameFields(t *testing.T, theirs, ours protoreflect.MessageDescriptor) {
	t.Helper()
	if theirs.Fields().Len() != ours.Fields().Len() {
		t.Errorf("%s: %d fields in containerd's, %d in ours", theirs.Name(), theirs.Fields().Len(), ours.Fields().Len())
	}
	for j := range theirs.Fields().Len() {
		a := theirs.Fields().Get(j)
		b := ours.Fields().ByNumber(a.Number())
		switch {
		case b == nil:
			t.Errorf("%s.%s (%d): no field with that number in ours", theirs.Name(), a.Name(), a.Number())
		case a.Name() != b.Name() || a.Kind() != b.Kind() || a.Cardinality() != b.Cardinality() || a.IsMap() != b.IsMap():
			t.Errorf("%s field %d: containerd's %s %s %s, ours %s %s %s", theirs.Name(), a.Number(),
				a.Cardinality(), a.Kind(), a.Name(), b.Cardinality(), b.Kind(), b.Name())
		case a.Message() == nil:
		case a.Message().FullName() == b.Message().FullName():
		case a.IsMap():
			sameFields(t, a.Message(), b.Message())
		default:
			t.Errorf("%s.%s: containerd's type %s, ours %s", theirs.Name(), a.Name(), a.Message().FullName(), b.Message().FullName())
		}
	}
}
