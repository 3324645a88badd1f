package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/internal/unixsock/socktest"
	"github.com/mineshim/mine/pkg/process"
)

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStart(t *testing.T) {
	opts := &runcoptions.Options{BinaryName: "crun", Root: "/run/x"}
	withExt := &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns", ContainerdTtrpcAddress: "/run/c.ttrpc"}
	if err := withExt.AddExtension(opts); err != nil {
		t.Fatal(err)
	}
	legacyAny, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		input      []byte
		wantLegacy bool
		wantBinary string
		wantErr    bool
	}{
		{name: "new protocol", input: mustMarshal(t, &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns"})},
		{name: "new protocol with runc options", input: mustMarshal(t, withExt), wantBinary: "crun"},
		{name: "other instance id is legacy", input: mustMarshal(t, &bootapi.BootstrapParams{InstanceID: "c2", Namespace: "ns"}), wantLegacy: true},
		{name: "empty stdin is legacy", input: nil, wantLegacy: true},
		{name: "legacy runc options", input: mustMarshal(t, legacyAny), wantLegacy: true, wantBinary: "crun"},
		{name: "garbage", input: []byte{0xff, 0xff, 0xff}, wantLegacy: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseStart(tc.input, "c1", "ns")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if req.legacy != tc.wantLegacy {
				t.Fatalf("legacy %v, want %v", req.legacy, tc.wantLegacy)
			}
			got := ""
			if req.options != nil {
				got = req.options.BinaryName
			}
			if got != tc.wantBinary {
				t.Fatalf("binary %q, want %q", got, tc.wantBinary)
			}
		})
	}
}

func TestAnswerStart(t *testing.T) {
	const addr = "unix:///run/containerd/s/abc"
	out, err := answerStart(startRequest{params: &bootapi.BootstrapParams{}}, addr)
	if err != nil {
		t.Fatal(err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &res); err != nil {
		t.Fatal(err)
	}
	if res.Version != 3 || res.Address != addr || res.Protocol != "ttrpc" {
		t.Fatalf("result %+v", &res)
	}
	// containerd 1.6 takes the whole answer as the address; 1.7 and 2.0 to
	// 2.2 too when it is not JSON.
	out, err = answerStart(startRequest{legacy: true}, addr)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != addr {
		t.Fatalf("legacy answer %q, want the bare address %q", out, addr)
	}
	if json.Valid(out) {
		t.Fatalf("legacy answer %q parses as JSON", out)
	}
}

// The socket path is containerd's own rule, as its pkg/shim computes it.
func TestSocketPathIsContainerdRule(t *testing.T) {
	tests := []struct {
		name, dir, address, ns, id string
		debug                      bool
	}{
		{name: "default dir", dir: defaultSocketDir, address: "/run/containerd/containerd.sock", ns: "default", id: "c1"},
		{name: "socket_dir", dir: "/tmp/s", address: "/run/x/c.sock", ns: "k8s.io", id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{name: "debug", dir: defaultSocketDir, address: "/run/containerd/containerd.sock", ns: "default", id: "c1", debug: true},
		{name: "unix address", dir: defaultSocketDir, address: "unix:///run/containerd/containerd.sock", ns: "n", id: "g"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := namespaces.WithNamespace(context.Background(), tc.ns)
			want, err := shim.CreateSocketAddress(ctx, tc.dir, tc.address, tc.id, tc.debug)
			if err != nil {
				t.Fatal(err)
			}
			if got := "unix://" + socketPath(tc.dir, tc.address, tc.ns, tc.id, tc.debug); got != want {
				t.Fatalf("socket address %q, containerd's %q", got, want)
			}
		})
	}
}

func TestSocketPathFitsUnixLimit(t *testing.T) {
	p := socketPath(defaultSocketDir, "/run/containerd/containerd.sock", "k8s.io", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", false)
	if len(p) > 106 {
		t.Fatalf("socket path %q is %d bytes", p, len(p))
	}
}

func runDelete(t *testing.T, bundle string, extra ...string) (*taskAPI.DeleteResponse, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args := append([]string{"-namespace", "ns", "-id", "c1", "-bundle", bundle}, extra...)
	args = append(args, "delete")
	start := time.Now()
	if code := run(args, bytes.NewReader(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("delete exited %d: %s", code, stderr.String())
	}
	if d := time.Since(start); d > deleteTimeout {
		t.Fatalf("delete took %s", d)
	}
	var resp taskAPI.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		t.Fatalf("answer %q: %v", stdout.Bytes(), err)
	}
	return &resp, stderr.String()
}

func TestDeleteEmptyBundle(t *testing.T) {
	bundle := t.TempDir()
	// Point at a runtime root with no state: nothing to delete.
	if err := os.WriteFile(filepath.Join(bundle, "runtime.json"), []byte(`{"root":"`+t.TempDir()+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, _ := runDelete(t, bundle)
	if resp.ExitStatus != 137 {
		t.Fatalf("exit status %d, want 137 when none was saved", resp.ExitStatus)
	}
}

func TestDeleteReportsSavedExit(t *testing.T) {
	bundle := t.TempDir()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for name, body := range map[string]string{
		"runtime.json": `{"root":"` + t.TempDir() + `"}`,
		"exit.json":    `{"pid":42,"exit_status":3,"exited_at":"` + at.Format(time.RFC3339Nano) + `"}`,
	} {
		if err := os.WriteFile(filepath.Join(bundle, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	resp, _ := runDelete(t, bundle)
	if resp.ExitStatus != 3 || resp.Pid != 42 || !resp.ExitedAt.AsTime().Equal(at) {
		t.Fatalf("answer %+v", resp)
	}
}

// A half-removed bundle: runc state still there but the runtime binary is
// gone. delete still answers, and says why on stderr.
func TestDeleteHalfRemovedBundle(t *testing.T) {
	bundle := t.TempDir()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "runtime.json"), []byte(`{"root":"`+root+`","binary":"/nonexistent/runc"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "exit.json"), []byte(`{not json`), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, stderr := runDelete(t, bundle)
	if resp.ExitStatus != 137 {
		t.Fatalf("exit status %d, want 137", resp.ExitStatus)
	}
	if stderr == "" {
		t.Fatal("no warning about the missing runtime")
	}
}

func TestDeleteRejectsBadID(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-namespace", "ns", "-id", "../etc", "-bundle", t.TempDir(), "delete"}, bytes.NewReader(nil), &stdout, &stderr)
	if code == 0 || stdout.Len() != 0 {
		t.Fatalf("delete of a bad id: code %d, stdout %q", code, stdout.String())
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-v"}, bytes.NewReader(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("-v exited %d", code)
	}
	if !bytes.Contains(stdout.Bytes(), []byte("Version:")) {
		t.Fatalf("-v printed %q", stdout.String())
	}
}

func TestInfo(t *testing.T) {
	opts, err := typeurl.MarshalAnyToProto(&runcoptions.Options{BinaryName: "runc"})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-info"}, bytes.NewReader(mustMarshal(t, opts)), &stdout, &stderr); code != 0 {
		t.Fatalf("-info exited %d: %s", code, stderr.String())
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(stdout.Bytes(), &info); err != nil {
		t.Fatalf("RuntimeInfo: %v", err)
	}
	if info.Name != "io.containerd.mine.v2" || info.Options.GetTypeUrl() != opts.TypeUrl {
		t.Fatalf("info %+v", &info)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skipf("runc not installed (%v): features not checked", err)
	}
	var f features.Features
	if info.Features.GetTypeUrl() != featuresTypeURL || json.Unmarshal(info.Features.GetValue(), &f) != nil || f.OCIVersionMax == "" {
		t.Fatalf("features %v", info.Features)
	}
}

// A runtime whose `features` never answers, its child holding the output
// open: -info still answers, without features, within its bound.
func TestInfoBoundedWithHangingRuntime(t *testing.T) {
	// The child ends by itself 20 s later.
	hang := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nsleep 20 &\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts, err := typeurl.MarshalAnyToProto(&runcoptions.Options{BinaryName: hang})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	begin := time.Now()
	if code := run([]string{"-info"}, bytes.NewReader(mustMarshal(t, opts)), &stdout, &stderr); code != 0 {
		t.Fatalf("-info exited %d: %s", code, stderr.String())
	}
	if took, limit := time.Since(begin), featuresTimeout+3*time.Second; took > limit {
		t.Errorf("-info took %s, more than %s", took, limit)
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(stdout.Bytes(), &info); err != nil {
		t.Fatalf("RuntimeInfo: %v", err)
	}
	if info.Features != nil {
		t.Errorf("features %v from a runtime that never answered", info.Features)
	}
}

func TestShimGroup(t *testing.T) {
	for _, tc := range []struct {
		name, config, want string
	}{
		{"no config", "", "c1"},
		{"no annotations", `{"ociVersion":"1.0.2"}`, "c1"},
		{"pod", `{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}`, "pod1"},
		{"explicit group first", `{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.containerd.runc.v2.group":"g"}}`, "g"},
		{"invalid group ignored", `{"annotations":{"io.containerd.runc.v2.group":"../x"}}`, "c1"},
		{"bad json", `{`, "c1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle := t.TempDir()
			if tc.config != "" {
				if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(tc.config), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := shimGroup(bundle, "c1"); got != tc.want {
				t.Fatalf("group %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzParseStart(f *testing.F) {
	f.Add(mustMarshal(f, &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns"}), "c1", "ns")
	f.Add([]byte{}, "c1", "ns")
	f.Add([]byte{0x0a, 0x02, 'c', '1', 0x12, 0x02, 'n', 's'}, "c1", "ns")
	f.Add([]byte("garbage"), "", "")
	f.Fuzz(func(t *testing.T, input []byte, id, ns string) {
		req, err := parseStart(input, id, ns)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if !req.legacy && (req.params.InstanceID != id || req.params.Namespace != ns || id == "") {
			t.Fatalf("new protocol accepted for %q/%q with params %v", id, ns, req.params)
		}
		if _, err := answerStart(req, "unix:///x"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDeleteRemovesDeadSocketOnly(t *testing.T) {
	for _, live := range []bool{false, true} {
		bundle := t.TempDir()
		if err := os.WriteFile(filepath.Join(bundle, "runtime.json"), []byte(`{"root":"`+t.TempDir()+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(t.TempDir(), "s")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		if !live {
			l.Close() // the shim was killed: the file stays, nobody answers
		} else {
			defer l.Close()
		}
		if err := os.WriteFile(filepath.Join(bundle, "address"), []byte("unix://"+sock), 0o600); err != nil {
			t.Fatal(err)
		}
		runDelete(t, bundle)
		_, err = os.Stat(sock)
		if live && err != nil {
			t.Fatalf("socket of a living shim removed: %v", err)
		}
		if !live && err == nil {
			t.Fatal("socket of a dead shim left behind")
		}
	}
}

// A live shim's socket that goes (the shim ends) between start's bind and
// its look at what holds the path: start binds again, rather than announce
// a socket that no longer exists.
func TestListenAfterLiveSocketWent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	live, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	defer func() { afterAddrInUse = func(string) {} }()
	afterAddrInUse = func(string) { live.Close() } // unlinks the socket
	l, err := listen(sock)
	if err != nil {
		t.Fatalf("listen after the live socket went: %v", err)
	}
	defer l.Close()
	if got, err := lstatID(sock); err != nil {
		t.Fatalf("no socket after listen: %v", err)
	} else if _, err := net.Dial("unix", sock); err != nil {
		t.Errorf("the new socket (%v) does not accept: %v", got, err)
	}
}

// A shim too busy to accept at once is alive: neither start nor delete
// takes its socket for a dead one.
func TestBusySocketIsLive(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	socktest.Busy(t, sock)
	before, err := lstatID(sock)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := listen(sock); !errors.Is(err, syscall.EADDRINUSE) {
		if l != nil {
			l.Close()
		}
		t.Errorf("listen on a busy shim's socket: %v, want EADDRINUSE", err)
	}

	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, "runtime.json"), []byte(`{"root":"`+t.TempDir()+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "address"), []byte("unix://"+sock), 0o600); err != nil {
		t.Fatal(err)
	}
	runDelete(t, bundle)
	if after, err := lstatID(sock); err != nil || after != before {
		t.Errorf("the busy shim's socket was replaced or removed: %v", err)
	}
}

// A runtime that never answers (its child keeps runc's pipes open, as a
// wedged runc's helpers may): delete still answers within containerd's 5 s
// cleanup limit, with the saved exit, and says why on stderr.
func TestDeleteBoundedWithHangingRuntime(t *testing.T) {
	bundle := t.TempDir()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A runtime whose child keeps its pipes open; the child ends by itself
	// 8 s later.
	hang := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nsleep 8 &\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"runtime.json": `{"root":"` + root + `","binary":"` + hang + `"}`,
		"exit.json":    `{"pid":42,"exit_status":3,"exited_at":"2026-01-02T03:04:05Z"}`,
	} {
		if err := os.WriteFile(filepath.Join(bundle, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run([]string{"-namespace", "ns", "-id", "c1", "-bundle", bundle, "delete"}, bytes.NewReader(nil), &stdout, &stderr)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("delete exited %d: %s", code, stderr.String())
	}
	if took >= 5*time.Second {
		t.Fatalf("delete took %s, containerd gives it 5 s", took)
	}
	var resp taskAPI.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		t.Fatalf("answer %q: %v", stdout.Bytes(), err)
	}
	if resp.ExitStatus != 3 || resp.Pid != 42 {
		t.Errorf("answer %+v, want the saved exit", &resp)
	}
	if stderr.Len() == 0 {
		t.Error("no warning about the runtime that did not answer")
	}
	t.Logf("delete took %s; stderr: %s", took, stderr.String())
}

// `shim delete`'s monitor (it cannot run beside pkg/process's Reaper, which
// reaps every child of its test binary): by either way of starting, a
// command whose child holds its stdout returns within the output bound,
// with its own status, where go-runc's default monitor reports 255.
func TestDirectMonitorKeepsStatusOfCutOutput(t *testing.T) {
	for _, locked := range []bool{false, true} {
		var out bytes.Buffer
		// The child ends by itself 8 s later.
		c := exec.Command("sh", "-c", "sleep 8 & exit 3")
		c.Stdout = &out
		m := process.DirectMonitor{}
		start := m.Start
		if locked {
			start = m.StartLocked
		}
		begin := time.Now()
		ec, err := start(c)
		if err != nil {
			t.Fatal(err)
		}
		status, err := m.Wait(c, ec)
		if took := time.Since(begin); err != nil || status != 3 || took > 3*time.Second {
			t.Errorf("locked %v: status %d, %v, after %s; want 3 within 3 s", locked, status, err, took)
		}
	}
}
