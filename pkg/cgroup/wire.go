package cgroup

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// MarshalAny encodes metrics as Read returns them (cgroup1 or cgroup2
// stats.Metrics) into the Any a Stats call answers with, the same message
// that typeurl.MarshalAnyToProto makes of them.
//
// It writes the protobuf wire format itself, walking the generated structs
// by their protobuf field tags. proto.Marshal would do the same work, but
// on its first use of a message type the protobuf runtime builds that
// type's reflection tables and decodes the full descriptors of its .proto
// file, and keeps them for the life of the process: about 140 KB of live
// heap for the v1 message (TestMarshalAnyKeepsNoTables), in every shim
// that is polled, for messages the shim only ever writes. The metrics messages use a small
// part of the format (proto3 scalars, strings, nested and repeated messages,
// one packed list), and this encoder refuses any other field, so a new
// field kind in a newer cgroups module fails the tests, not a reading.
func MarshalAny(metrics proto.Message) (*anypb.Any, error) {
	url, err := typeURL(metrics)
	if err != nil {
		return nil, err
	}
	v := reflect.ValueOf(metrics)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("metrics: %T is not a message", metrics)
	}
	b, err := appendMessage(nil, v.Elem())
	if err != nil {
		return nil, fmt.Errorf("metrics: %T: %w", metrics, err)
	}
	return &anypb.Any{TypeUrl: url, Value: b}, nil
}

// typeURLs caches the type URL per message type (reflect.Type to string).
var typeURLs sync.Map

func typeURL(m proto.Message) (string, error) {
	t := reflect.TypeOf(m)
	if u, ok := typeURLs.Load(t); ok {
		return u.(string), nil
	}
	u, err := typeurl.TypeURL(m)
	if err != nil {
		return "", err
	}
	typeURLs.Store(t, u)
	return u, nil
}

// appendMessage appends the fields of the message struct v, in the order
// of the struct, which protoc-gen-go declares in the order of the .proto.
func appendMessage(b []byte, v reflect.Value) ([]byte, error) {
	t := v.Type()
	for i := range t.NumField() {
		tag, ok := t.Field(i).Tag.Lookup("protobuf")
		if !ok {
			continue // the message's internal state, size cache, unknown fields
		}
		f, err := parseTag(tag)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", t.Field(i).Name, err)
		}
		if b, err = appendField(b, f, v.Field(i)); err != nil {
			return nil, fmt.Errorf("field %s: %w", t.Field(i).Name, err)
		}
	}
	return b, nil
}

// wireField is what a protobuf struct tag says of a field.
type wireField struct {
	kind     string // "varint", "fixed64", "bytes"
	num      protowire.Number
	repeated bool
	packed   bool
}

// parseTag reads a protoc-gen-go tag: "varint,4,rep,packed,name=per_cpu,...".
func parseTag(tag string) (wireField, error) {
	kind, rest, _ := strings.Cut(tag, ",")
	num, rest, _ := strings.Cut(rest, ",")
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return wireField{}, fmt.Errorf("protobuf tag %q: bad field number", tag)
	}
	f := wireField{kind: kind, num: protowire.Number(n)}
	card, rest, _ := strings.Cut(rest, ",")
	f.repeated = card == "rep"
	f.packed = strings.HasPrefix(rest, "packed")
	return f, nil
}

// appendField appends field f of value v, leaving out what proto3 leaves
// out: zero scalars, empty strings and lists, nil messages.
func appendField(b []byte, f wireField, v reflect.Value) ([]byte, error) {
	switch {
	case f.repeated && f.packed && f.kind == "varint" && v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint64:
		if v.Len() == 0 {
			return b, nil
		}
		size := 0
		for i := range v.Len() {
			size += protowire.SizeVarint(v.Index(i).Uint())
		}
		b = protowire.AppendTag(b, f.num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		for i := range v.Len() {
			b = protowire.AppendVarint(b, v.Index(i).Uint())
		}
		return b, nil
	case f.repeated && f.kind == "bytes" && v.Kind() == reflect.Slice && isMessagePointer(v.Type().Elem()):
		var err error
		for i := range v.Len() {
			if b, err = appendNested(b, f.num, v.Index(i)); err != nil {
				return nil, err
			}
		}
		return b, nil
	case f.repeated:
		return nil, fmt.Errorf("unsupported repeated %s field of %s", f.kind, v.Type())
	case f.kind == "varint" && (v.Kind() == reflect.Uint64 || v.Kind() == reflect.Uint32):
		if v.Uint() != 0 {
			b = protowire.AppendTag(b, f.num, protowire.VarintType)
			b = protowire.AppendVarint(b, v.Uint())
		}
		return b, nil
	case f.kind == "fixed64" && v.Kind() == reflect.Float64:
		if bits := math.Float64bits(v.Float()); bits != 0 {
			b = protowire.AppendTag(b, f.num, protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, bits)
		}
		return b, nil
	case f.kind == "bytes" && v.Kind() == reflect.String:
		if v.Len() > 0 {
			b = protowire.AppendTag(b, f.num, protowire.BytesType)
			b = protowire.AppendString(b, v.String())
		}
		return b, nil
	case f.kind == "bytes" && isMessagePointer(v.Type()):
		return appendNested(b, f.num, v)
	}
	return nil, fmt.Errorf("unsupported %s field of %s", f.kind, v.Type())
}

func isMessagePointer(t reflect.Type) bool {
	return t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct
}

// appendNested appends the message *v as field num: its tag, its length,
// its fields. A nil message is left out; an element of a repeated field is
// never nil in what Read returns.
func appendNested(b []byte, num protowire.Number, v reflect.Value) ([]byte, error) {
	if v.IsNil() {
		return b, nil
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	start := len(b)
	b, err := appendMessage(b, v.Elem())
	if err != nil {
		return nil, err
	}
	// The length goes before the fields: encode it after them and rotate.
	n := len(b) - start
	var lenBuf [binary.MaxVarintLen64]byte
	l := protowire.AppendVarint(lenBuf[:0], uint64(n))
	b = append(b, l...)
	copy(b[start+len(l):], b[start:start+n])
	copy(b[start:], l)
	return b, nil
}
