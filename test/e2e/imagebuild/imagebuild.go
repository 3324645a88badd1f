package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

const (
	// DefaultRef is the image reference used when Options.Ref is empty.
	DefaultRef = "docker.io/library/busybox:mine"
	// DefaultBusybox is the busybox binary used when Options.Busybox is empty.
	DefaultBusybox = "/bin/busybox"
	// DefaultPath is the PATH of the image config when Options.Env is nil.
	DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	// AnnotationRefName is the OCI annotation naming a manifest in index.json.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName is containerd's annotation for the full image name.
	AnnotationImageName = "io.containerd.image.name"

	// Media types written by this package.
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	busyboxInImage = "/bin/busybox"
	listTimeout    = 30 * time.Second
)

// epoch is the timestamp of every tar entry and of the image config, so the
// output does not depend on when it was built.
var epoch = time.Unix(0, 0).UTC()

// File is an extra regular file placed in the image layer. Missing parent
// directories are created with mode 0755. A File replaces a generated entry
// of the same path (for example etc/passwd).
type File struct {
	// Path inside the image, for example "etc/hosts" or "/etc/hosts".
	Path string
	// Mode holds the permission bits; zero means 0644.
	Mode fs.FileMode
	// Data is the file content.
	Data []byte
}

// Options describe the image. The zero value builds DefaultRef from
// DefaultBusybox with every applet the binary lists.
type Options struct {
	// Busybox is the path of a statically linked busybox on the host.
	Busybox string
	// Applets are the names linked to /bin/busybox. Nil means the output of
	// `Busybox --list`. The name "busybox" is skipped.
	Applets []string
	// Ref is the full image reference written to index.json.
	Ref string
	// Entrypoint of the image config; empty by default.
	Entrypoint []string
	// Cmd of the image config; nil means ["sh"].
	Cmd []string
	// Env of the image config; nil means [DefaultPath].
	Env []string
	// StopSignal of the image config (for example "SIGUSR1"); empty means
	// none, and the runtime's default (SIGTERM) applies.
	StopSignal string
	// Files are added to the layer after the generated entries.
	Files []File
	// OS and Architecture of the image; empty means "linux" and the
	// architecture of the running program.
	OS, Architecture string
}

// Result names what Write produced.
type Result struct {
	Ref            string
	ManifestDigest string
	ConfigDigest   string
	LayerDigest    string
	// DiffID is the digest of the uncompressed layer tar.
	DiffID string
	// Applets is the sorted list of applet links in the layer.
	Applets []string
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type imageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
	StopSignal string   `json:"StopSignal,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// entry is one member of the layer tar.
type entry struct {
	name     string // clean relative path, no trailing slash
	typeflag byte
	mode     int64
	linkname string
	data     []byte
}

// Write writes the image as an OCI image layout tar to w.
func Write(w io.Writer, opts Options) (Result, error) {
	o := opts.withDefaults()

	bin, err := readBusybox(o.Busybox)
	if err != nil {
		return Result{}, err
	}
	applets := o.Applets
	if applets == nil {
		if applets, err = listApplets(o.Busybox); err != nil {
			return Result{}, err
		}
	}
	applets, err = cleanApplets(applets)
	if err != nil {
		return Result{}, err
	}
	entries, err := layerEntries(bin, applets, o.Files)
	if err != nil {
		return Result{}, err
	}

	layerTar, err := tarEntries(entries)
	if err != nil {
		return Result{}, fmt.Errorf("write layer tar: %w", err)
	}
	layerGz, err := gzipBytes(layerTar)
	if err != nil {
		return Result{}, fmt.Errorf("compress layer: %w", err)
	}
	diffID := digestOf(layerTar)
	layer := descriptor{MediaType: MediaTypeLayer, Digest: digestOf(layerGz), Size: int64(len(layerGz))}

	created := epoch.Format(time.RFC3339)
	configJSON, err := json.Marshal(imageConfig{
		Created:      created,
		Architecture: o.Architecture,
		OS:           o.OS,
		Config: containerConfig{
			Env:        o.Env,
			Entrypoint: o.Entrypoint,
			Cmd:        o.Cmd,
			WorkingDir: "/",
			StopSignal: o.StopSignal,
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []history{{Created: created, CreatedBy: "imagebuild: busybox rootfs"}},
	})
	if err != nil {
		return Result{}, err
	}
	config := descriptor{MediaType: MediaTypeConfig, Digest: digestOf(configJSON), Size: int64(len(configJSON))}

	manifestJSON, err := json.Marshal(manifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        config,
		Layers:        []descriptor{layer},
	})
	if err != nil {
		return Result{}, err
	}
	man := descriptor{
		MediaType: MediaTypeManifest,
		Digest:    digestOf(manifestJSON),
		Size:      int64(len(manifestJSON)),
		Platform:  &platform{Architecture: o.Architecture, OS: o.OS},
		Annotations: map[string]string{
			AnnotationRefName:   o.Ref,
			AnnotationImageName: o.Ref,
		},
	}
	indexJSON, err := json.Marshal(index{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []descriptor{man}})
	if err != nil {
		return Result{}, err
	}

	blobs := map[string][]byte{
		layer.Digest:  layerGz,
		config.Digest: configJSON,
		man.Digest:    manifestJSON,
	}
	if err := writeLayout(w, indexJSON, blobs); err != nil {
		return Result{}, fmt.Errorf("write image layout tar: %w", err)
	}
	return Result{
		Ref:            o.Ref,
		ManifestDigest: man.Digest,
		ConfigDigest:   config.Digest,
		LayerDigest:    layer.Digest,
		DiffID:         diffID,
		Applets:        applets,
	}, nil
}

// WriteFile writes the image tar to file, replacing it atomically.
func WriteFile(file string, opts Options) (Result, error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return Result{}, err
	}
	res, err := Write(tmp, opts)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return Result{}, err
	}
	return res, nil
}

func (o Options) withDefaults() Options {
	if o.Busybox == "" {
		o.Busybox = DefaultBusybox
	}
	if o.Ref == "" {
		o.Ref = DefaultRef
	}
	if o.Cmd == nil {
		o.Cmd = []string{"sh"}
	}
	if o.Env == nil {
		o.Env = []string{DefaultPath}
	}
	if o.OS == "" {
		o.OS = "linux"
	}
	if o.Architecture == "" {
		o.Architecture = runtime.GOARCH
	}
	return o
}

// readBusybox reads the binary and refuses a dynamically linked ELF file. A
// file that is not ELF at all is taken as is, so tests can use placeholders.
func readBusybox(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return data, nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked and the image has no libc: use a static busybox (Debian package busybox-static)", file)
		}
	}
	return data, nil
}

func listApplets(busybox string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, busybox, "--list")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w: %s", busybox, err, strings.TrimSpace(stderr.String()))
	}
	return strings.Fields(string(out)), nil
}

// cleanApplets validates, sorts and deduplicates applet names.
func cleanApplets(names []string) ([]string, error) {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n == "busybox" || seen[n] {
			continue
		}
		if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
			return nil, fmt.Errorf("invalid applet name %q", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no applets to link")
	}
	sort.Strings(out)
	return out, nil
}

func layerEntries(bin []byte, applets []string, files []File) ([]entry, error) {
	byName := map[string]entry{}
	dir := func(name string, mode int64) {
		byName[name] = entry{name: name, typeflag: tar.TypeDir, mode: mode}
	}
	for _, d := range []string{"bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var"} {
		dir(d, 0o755)
	}
	dir("root", 0o700)
	dir("tmp", 0o1777)
	dir("var/tmp", 0o1777)

	byName["bin/busybox"] = entry{name: "bin/busybox", typeflag: tar.TypeReg, mode: 0o755, data: bin}
	for _, a := range applets {
		name := "bin/" + a
		byName[name] = entry{name: name, typeflag: tar.TypeSymlink, mode: 0o777, linkname: busyboxInImage}
	}
	byName["etc/passwd"] = entry{name: "etc/passwd", typeflag: tar.TypeReg, mode: 0o644, data: []byte(
		"root:x:0:0:root:/root:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")}
	byName["etc/group"] = entry{name: "etc/group", typeflag: tar.TypeReg, mode: 0o644, data: []byte(
		"root:x:0:\n" +
			"nogroup:x:65534:\n")}

	for _, f := range files {
		name := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if name == "" || !fs.ValidPath(name) {
			return nil, fmt.Errorf("invalid file path %q", f.Path)
		}
		mode := int64(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if e, ok := byName[p]; ok {
				if e.typeflag != tar.TypeDir {
					return nil, fmt.Errorf("file %q: parent %q is not a directory", f.Path, p)
				}
				continue
			}
			dir(p, 0o755)
		}
		if e, ok := byName[name]; ok && e.typeflag == tar.TypeDir {
			return nil, fmt.Errorf("file %q would replace a directory", f.Path)
		}
		byName[name] = entry{name: name, typeflag: tar.TypeReg, mode: mode, data: f.Data}
	}

	entries := make([]entry, 0, len(byName))
	for _, e := range byName {
		entries = append(entries, e)
	}
	// A parent is a prefix of its children, so sorting by name puts every
	// directory before its content.
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	return entries, nil
}

func tarEntries(entries []entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Typeflag: e.typeflag,
			Name:     e.name,
			Linkname: e.linkname,
			Mode:     e.mode,
			ModTime:  epoch,
			Size:     int64(len(e.data)),
		}
		if e.typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func gzipBytes(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	// The zero gzip header has no name and a zero mtime.
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeLayout writes the OCI image layout: directories, blobs sorted by
// digest, index.json, oci-layout.
func writeLayout(w io.Writer, indexJSON []byte, blobs map[string][]byte) error {
	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: epoch, Size: int64(len(data)),
		}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range digests {
		if err := file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d]); err != nil {
			return err
		}
	}
	if err := file("index.json", indexJSON); err != nil {
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return tw.Close()
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
