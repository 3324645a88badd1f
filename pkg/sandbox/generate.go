package sandbox

// api.pb.go is generated from api.proto with protoc (Debian's
// protobuf-compiler and libprotobuf-dev) and protoc-gen-go at the version of
// google.golang.org/protobuf in go.mod; containerd's type definitions come
// from the containerd/api module.
//go:generate sh -c "cd ../.. && protoc -I . -I \"$(go list -m -f '{{.Dir}}' github.com/containerd/containerd/api)\" -I /usr/include --go_out=. --go_opt=paths=source_relative pkg/sandbox/api.proto"
