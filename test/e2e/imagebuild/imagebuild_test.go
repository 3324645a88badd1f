package imagebuild_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

// fakeBusybox writes a placeholder binary; imagebuild copies non-ELF files as
// they are, so the structure tests need no busybox on the machine.
func fakeBusybox(t *testing.T) (string, []byte) {
	t.Helper()
	data := []byte("#!/bin/false\nnot really busybox\n")
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p, data
}

type member struct {
	hdr  *tar.Header
	data []byte
}

// readTar returns the members of a tar by name, in order of appearance.
func readTar(t *testing.T, data []byte) (map[string]member, []string) {
	t.Helper()
	members := map[string]member{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", hdr.Name, err)
		}
		if _, dup := members[hdr.Name]; dup {
			t.Errorf("duplicate tar member %s", hdr.Name)
		}
		members[hdr.Name] = member{hdr: hdr, data: b}
		order = append(order, hdr.Name)
	}
	return members, order
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
	Platform    struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

// blob returns the layout blob a descriptor points to and checks its digest
// and size.
func blob(t *testing.T, members map[string]member, d descriptor) []byte {
	t.Helper()
	m, ok := members["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s (%s) missing from the layout", d.Digest, d.MediaType)
	}
	if got := digestOf(m.data); got != d.Digest {
		t.Errorf("blob %s has digest %s", d.Digest, got)
	}
	if int64(len(m.data)) != d.Size {
		t.Errorf("blob %s: descriptor size %d, blob size %d", d.Digest, d.Size, len(m.data))
	}
	return m.data
}

func TestWriteLayout(t *testing.T) {
	bb, bbData := fakeBusybox(t)
	opts := imagebuild.Options{
		Busybox: bb,
		Applets: []string{"sh", "echo", "busybox", "sleep", "echo"},
		Ref:     "example.com/test/busybox:t",
		Files:   []imagebuild.File{{Path: "/opt/hello/greeting", Mode: 0o600, Data: []byte("hello\n")}},
	}
	var buf bytes.Buffer
	res, err := imagebuild.Write(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"echo", "sh", "sleep"}; !slices.Equal(res.Applets, want) {
		t.Errorf("applets %v, want %v", res.Applets, want)
	}

	members, order := readTar(t, buf.Bytes())
	if string(members["oci-layout"].data) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", members["oci-layout"].data)
	}
	for _, name := range order {
		if h := members[name].hdr; h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 epoch", name, h.Uid, h.Gid, h.ModTime)
		}
	}

	var idx struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(members["index.json"].data, &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != imagebuild.MediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %s", members["index.json"].data)
	}
	md := idx.Manifests[0]
	if md.Annotations[imagebuild.AnnotationRefName] != opts.Ref || md.Annotations[imagebuild.AnnotationImageName] != opts.Ref {
		t.Errorf("manifest annotations %v, want both names %q", md.Annotations, opts.Ref)
	}
	if md.MediaType != imagebuild.MediaTypeManifest || md.Digest != res.ManifestDigest {
		t.Errorf("manifest descriptor %+v, result %+v", md, res)
	}
	if md.Platform.OS != "linux" || md.Platform.Architecture == "" {
		t.Errorf("manifest platform %+v", md.Platform)
	}

	var man struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(t, members, md), &man); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if man.SchemaVersion != 2 || man.Config.MediaType != imagebuild.MediaTypeConfig || len(man.Layers) != 1 ||
		man.Layers[0].MediaType != imagebuild.MediaTypeLayer {
		t.Fatalf("manifest = %+v", man)
	}

	var cfg struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Env        []string `json:"Env"`
			Entrypoint []string `json:"Entrypoint"`
			Cmd        []string `json:"Cmd"`
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(t, members, man.Config), &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if !slices.Equal(cfg.Config.Cmd, []string{"sh"}) || len(cfg.Config.Entrypoint) != 0 {
		t.Errorf("config entrypoint %q cmd %q, want none and [sh]", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	if !slices.Equal(cfg.Config.Env, []string{imagebuild.DefaultPath}) {
		t.Errorf("config env %q", cfg.Config.Env)
	}

	zr, err := gzip.NewReader(bytes.NewReader(blob(t, members, man.Layers[0])))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	layerTar, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip layer: %v", err)
	}
	if cfg.RootFS.Type != "layers" || !slices.Equal(cfg.RootFS.DiffIDs, []string{digestOf(layerTar)}) ||
		res.DiffID != digestOf(layerTar) {
		t.Errorf("rootfs %+v, result diff id %s, layer tar digest %s", cfg.RootFS, res.DiffID, digestOf(layerTar))
	}

	layer, layerOrder := readTar(t, layerTar)
	seen := map[string]bool{}
	for _, name := range layerOrder {
		if parent := filepath.Dir(strings.TrimSuffix(name, "/")); parent != "." && !seen[parent+"/"] {
			t.Errorf("%s comes before its parent directory", name)
		}
		seen[name] = true
	}
	checks := []struct {
		name     string
		typeflag byte
		mode     int64
		linkname string
		data     []byte
	}{
		{name: "bin/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "bin/busybox", typeflag: tar.TypeReg, mode: 0o755, data: bbData},
		{name: "bin/sh", typeflag: tar.TypeSymlink, mode: 0o777, linkname: "/bin/busybox"},
		{name: "bin/echo", typeflag: tar.TypeSymlink, mode: 0o777, linkname: "/bin/busybox"},
		{name: "bin/sleep", typeflag: tar.TypeSymlink, mode: 0o777, linkname: "/bin/busybox"},
		{name: "etc/passwd", typeflag: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{name: "etc/group", typeflag: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{name: "tmp/", typeflag: tar.TypeDir, mode: 0o1777},
		{name: "root/", typeflag: tar.TypeDir, mode: 0o700},
		{name: "opt/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "opt/hello/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "opt/hello/greeting", typeflag: tar.TypeReg, mode: 0o600, data: []byte("hello\n")},
	}
	for _, c := range checks {
		m, ok := layer[c.name]
		if !ok {
			t.Errorf("layer has no %s", c.name)
			continue
		}
		if m.hdr.Typeflag != c.typeflag || m.hdr.Mode != c.mode || m.hdr.Linkname != c.linkname {
			t.Errorf("%s: type %c mode %o link %q, want %c %o %q",
				c.name, m.hdr.Typeflag, m.hdr.Mode, m.hdr.Linkname, c.typeflag, c.mode, c.linkname)
		}
		if c.data != nil && !bytes.Equal(m.data, c.data) {
			t.Errorf("%s: content %q, want %q", c.name, m.data, c.data)
		}
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	bb, _ := fakeBusybox(t)
	opts := imagebuild.Options{Busybox: bb, Applets: []string{"sh", "ls", "cat"}}
	var a, b bytes.Buffer
	ra, err := imagebuild.Write(&a, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Same applets in another order must give the same bytes.
	opts.Applets = []string{"cat", "sh", "ls"}
	rb, err := imagebuild.Write(&b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) || ra.ManifestDigest != rb.ManifestDigest {
		t.Fatalf("two builds differ: %s vs %s", ra.ManifestDigest, rb.ManifestDigest)
	}
}

func TestWriteFile(t *testing.T) {
	bb, _ := fakeBusybox(t)
	out := filepath.Join(t.TempDir(), "image.tar")
	res, err := imagebuild.WriteFile(out, imagebuild.Options{Busybox: bb, Applets: []string{"sh"}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := imagebuild.Write(&buf, imagebuild.Options{Busybox: bb, Applets: []string{"sh"}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, buf.Bytes()) {
		t.Error("WriteFile and Write produced different bytes")
	}
	if res.Ref != imagebuild.DefaultRef {
		t.Errorf("ref %q, want %q", res.Ref, imagebuild.DefaultRef)
	}
	entries, err := os.ReadDir(filepath.Dir(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("temporary files left beside the output: %v", entries)
	}
}

func TestWriteRejects(t *testing.T) {
	bb, _ := fakeBusybox(t)
	dynamic := dynamicBinary()
	tests := []struct {
		name string
		opts imagebuild.Options
		skip string
	}{
		{name: "missing busybox", opts: imagebuild.Options{Busybox: filepath.Join(t.TempDir(), "nope"), Applets: []string{"sh"}}},
		{name: "applet with slash", opts: imagebuild.Options{Busybox: bb, Applets: []string{"sh", "usr/bin/x"}}},
		{name: "empty applet", opts: imagebuild.Options{Busybox: bb, Applets: []string{""}}},
		{name: "dot-dot applet", opts: imagebuild.Options{Busybox: bb, Applets: []string{".."}}},
		{name: "no applets", opts: imagebuild.Options{Busybox: bb, Applets: []string{}}},
		{name: "file escaping root", opts: imagebuild.Options{Busybox: bb, Applets: []string{"sh"}, Files: []imagebuild.File{{Path: "/"}}}},
		{name: "file replacing a directory", opts: imagebuild.Options{Busybox: bb, Applets: []string{"sh"}, Files: []imagebuild.File{{Path: "etc"}}}},
		{name: "file under a file", opts: imagebuild.Options{Busybox: bb, Applets: []string{"sh"}, Files: []imagebuild.File{{Path: "etc/passwd/x"}}}},
		{
			name: "dynamically linked busybox",
			opts: imagebuild.Options{Busybox: dynamic, Applets: []string{"sh"}},
			skip: skipIf(dynamic == "", "no dynamically linked binary on this machine"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			if _, err := imagebuild.Write(io.Discard, tc.opts); err == nil {
				t.Fatal("Write succeeded, want an error")
			}
		})
	}
}

// dynamicBinary returns a dynamically linked executable of the host, or "".
func dynamicBinary() string {
	for _, p := range []string{"/bin/ls", "/bin/sh", "/usr/bin/env"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				f.Close()
				return p
			}
		}
		f.Close()
	}
	return ""
}

func skipIf(cond bool, reason string) string {
	if cond {
		return reason
	}
	return ""
}

func TestWriteRealBusybox(t *testing.T) {
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		t.Skipf("no busybox to build from (install busybox-static): %v", err)
	}
	var buf bytes.Buffer
	res, err := imagebuild.Write(&buf, imagebuild.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sh", "echo", "sleep", "cat"} {
		if !slices.Contains(res.Applets, want) {
			t.Errorf("applet %s missing from %d applets", want, len(res.Applets))
		}
	}
}
