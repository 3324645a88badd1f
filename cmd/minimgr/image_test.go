package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mineshim/mine/pkg/minimgr"
)

// tarFile is one entry of a tar the test builds.
type tarFile struct {
	name, link string
	data       []byte
	mode       int64
	dir        bool
}

func makeTar(t *testing.T, files []tarFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: time.Unix(0, 0), Uid: 0, Gid: 0}
		switch {
		case f.dir:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case f.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testImage builds a two-layer busybox image: the second layer removes a
// file of the first (a whiteout). It returns the layers and the config.
func testImage(t *testing.T) (layers [][]byte, config []byte) {
	t.Helper()
	bb, err := os.ReadFile(minimgr.BusyboxPath)
	if err != nil {
		t.Skip(err)
	}
	l1 := []tarFile{{name: "bin/", dir: true}, {name: "bin/busybox", data: bb, mode: 0o755}}
	for _, a := range []string{"sh", "id", "test", "sleep", "cat", "pwd"} {
		l1 = append(l1, tarFile{name: "bin/" + a, link: "busybox"})
	}
	l1 = append(l1,
		tarFile{name: "etc/", dir: true},
		tarFile{name: "etc/passwd", data: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")},
		tarFile{name: "etc/group", data: []byte("root:x:0:\napp:x:1000:\n")},
		tarFile{name: "etc/gone", data: []byte("removed by the next layer\n")},
		tarFile{name: "proc/", dir: true}, tarFile{name: "dev/", dir: true}, tarFile{name: "sys/", dir: true},
		tarFile{name: "work/", dir: true},
	)
	l2 := []tarFile{{name: "etc/", dir: true}, {name: "etc/.wh.gone"}, {name: "etc/motd", data: []byte("layer two\n")}}
	layers = [][]byte{makeTar(t, l1), makeTar(t, l2)}
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{
			"Entrypoint": []string{"/bin/sh", "-c"},
			"Cmd":        []string{`echo "$GREETING from $(pwd) as $(id -u)"; test -e /etc/gone || echo gone; cat /etc/motd`},
			"Env":        []string{"PATH=/bin", "GREETING=hello"},
			"WorkingDir": "/work",
			"User":       "app",
			"StopSignal": "SIGUSR1",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + digestOf(layers[0]), "sha256:" + digestOf(layers[1])}},
	}
	if config, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	return layers, config
}

// ociLayout writes the image as an OCI layout into dir, tagged v1, and
// returns its files as tar entries.
func ociLayout(t *testing.T, layers [][]byte, config []byte) []tarFile {
	t.Helper()
	blob := func(b []byte) (tarFile, map[string]any) {
		d := digestOf(b)
		return tarFile{name: "blobs/sha256/" + d, data: b}, map[string]any{"digest": "sha256:" + d, "size": len(b)}
	}
	var files []tarFile
	cf, cdesc := blob(config)
	cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
	files = append(files, cf)
	var ldescs []map[string]any
	for _, l := range layers {
		lf, ld := blob(l)
		ld["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
		files = append(files, lf)
		ldescs = append(ldescs, ld)
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": cdesc, "layers": ldescs,
	})
	mf, mdesc := blob(manifest)
	mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
	mdesc["annotations"] = map[string]string{"org.opencontainers.image.ref.name": "v1"}
	files = append(files, mf)
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{mdesc}})
	files = append(files,
		tarFile{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		tarFile{name: "index.json", data: index},
		tarFile{name: "blobs/", dir: true}, tarFile{name: "blobs/sha256/", dir: true},
	)
	return files
}

func writeTree(t *testing.T, dir string, files []tarFile) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if f.dir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestImages: an image built here (busybox-static, two layers with a
// whiteout) runs from an OCI layout, an OCI archive and a docker archive
// with its own entrypoint, cmd, env, working directory, user and stop
// signal.
func TestImages(t *testing.T) {
	e := newEnv(t, true)
	layers, config := testImage(t)
	files := ociLayout(t, layers, config)
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	writeTree(t, layout, files)
	ociTar := filepath.Join(dir, "oci.tar")
	if err := os.WriteFile(ociTar, makeTar(t, files), 0o644); err != nil {
		t.Fatal(err)
	}
	dockerManifest, _ := json.Marshal([]map[string]any{{
		"Config": "config.json", "RepoTags": []string{"mini:v1"}, "Layers": []string{"l1/layer.tar", "l2/layer.tar"},
	}})
	dockerTar := filepath.Join(dir, "docker.tar")
	if err := os.WriteFile(dockerTar, makeTar(t, []tarFile{
		{name: "config.json", data: config},
		{name: "l1/", dir: true}, {name: "l1/layer.tar", data: layers[0]},
		{name: "l2/", dir: true}, {name: "l2/layer.tar", data: layers[1]},
		{name: "manifest.json", data: dockerManifest},
	}), 0o644); err != nil {
		t.Fatal(err)
	}

	const want = "hello from /work as 1000\ngone\nlayer two\n"
	for i, ref := range []string{layout, layout + ":v1", ociTar + ":v1", dockerTar + ":v1", dockerTar} {
		id := "img" + string(rune('a'+i))
		if r := e.run(nil, "run", "--rm", "--image", ref, id); r.code != 0 || r.stdout != want {
			t.Errorf("run --image %s: exit %d, stdout %q, stderr %q", ref, r.code, r.stdout, r.stderr)
		}
		e.assertNoLeftovers(id)
		if _, err := os.Stat(filepath.Join(e.root, "bundles", e.ns, id)); !os.IsNotExist(err) {
			t.Errorf("the bundle unpacked for %s is left: %v", id, err)
		}
	}
	if r := e.run(nil, "run", "--rm", "--image", layout+":nope", "imgx"); r.code != exitOwnError || !strings.Contains(r.stderr, "not found") {
		t.Errorf("unknown tag: exit %d, stderr %q", r.code, r.stderr)
	}

	// bundle init --image, and the image's stop signal.
	bundle := filepath.Join(dir, "bundle")
	e.mustRun("bundle", "init", "--image", ociTar+":v1", bundle)
	if _, err := os.Stat(filepath.Join(bundle, "rootfs", "etc", "gone")); !os.IsNotExist(err) {
		t.Errorf("whiteout not applied: %v", err)
	}
	e.mustRun("run", "-d", bundle, "sig", "sh", "-c", "trap 'exit 3' USR1; while :; do sleep 0.1; done")
	e.mustRun("stop", "-t", "20", "sig")
	if r := e.run(nil, "wait", "sig"); r.code != 3 {
		t.Errorf("stop did not send the image's stop signal: wait %d", r.code)
	}
	e.mustRun("delete", "sig")
}

// TestRestartImageRelativePath: a container run from an image named by a
// relative path is restarted from another directory: the image is found
// where it was, not relative to the new working directory.
func TestRestartImageRelativePath(t *testing.T) {
	e := newEnv(t, true)
	layers, config := testImage(t)
	dir := t.TempDir()
	writeTree(t, filepath.Join(dir, "layout"), ociLayout(t, layers, config))
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	in := func(wd string, args ...string) {
		t.Helper()
		cmd := e.command(ctx, args...)
		cmd.Dir = wd
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("minimgr %v in %s: %v: %s", args, wd, err, out)
		}
	}
	in(dir, "run", "-d", "--image", "layout:v1", "imgr", "sleep", "1000")
	in("/", "restart", "-t", "1", "imgr")
	if got := e.list()["imgr"]; got.Status != minimgr.StatusRunning {
		t.Fatalf("after the restart: %+v, want running", got)
	}
	// With its image gone, a restart fails before it tears anything down.
	if err := os.Rename(filepath.Join(dir, "layout"), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	if r := e.run(nil, "restart", "-t", "1", "imgr"); r.code == 0 || !strings.Contains(r.stderr, "gone") {
		t.Errorf("restart without its image: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := e.list()["imgr"]; got.Status != minimgr.StatusRunning {
		t.Fatalf("after a restart that could not be done: %+v, want running", got)
	}
	e.mustRun("delete", "-f", "imgr")
	e.assertNoLeftovers("imgr")
}

// TestImageCreatesOfOneID: two runs of one ID from an image at the same
// time. Exactly one wins, and its container has its whole rootfs: the other
// neither unpacks into it nor removes it.
func TestImageCreatesOfOneID(t *testing.T) {
	e := newEnv(t, true)
	layers, config := testImage(t)
	layout := filepath.Join(t.TempDir(), "layout")
	writeTree(t, layout, ociLayout(t, layers, config))
	for round := range 5 {
		results := make(chan result, 2)
		for range 2 {
			go func() { results <- e.run(nil, "run", "-d", "--image", layout, "race", "sleep", "100") }()
		}
		won := 0
		for range 2 {
			if r := <-results; r.code == 0 {
				won++
			} else if !strings.Contains(r.stderr, "already exists") {
				t.Errorf("round %d: the losing run: exit %d, %q", round, r.code, r.stderr)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d runs succeeded, want 1", round, won)
		}
		if got := e.list()["race"]; got.Status != minimgr.StatusRunning {
			t.Fatalf("round %d: %+v, want running", round, got)
		}
		if _, err := os.Stat(filepath.Join(e.root, "bundles", e.ns, "race", "rootfs", "bin", "busybox")); err != nil {
			t.Fatalf("round %d: the winner's rootfs: %v", round, err)
		}
		e.mustRun("delete", "-f", "race")
		e.assertNoLeftovers("race")
	}
	if left, _ := filepath.Glob(filepath.Join(e.root, "bundles", e.ns, "*")); len(left) != 0 {
		t.Errorf("bundles left: %v", left)
	}
}
