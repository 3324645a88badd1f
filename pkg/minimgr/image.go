package minimgr

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	tararchive "github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/moby/sys/user"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AnnotationStopSignal is the annotation of config.json that carries an
// image's stop signal to Create (the container's default for Stop).
const AnnotationStopSignal = "org.opencontainers.image.stopSignal"

// InitImageBundle makes an OCI bundle in dir (created if missing; refused
// when it already holds a config.json or a rootfs) from the image ref:
// PATH[:TAG], PATH an OCI image layout directory, or an OCI or docker
// archive (a tar, as `docker save` and `ctr images export` write them).
// TAG picks the manifest whose reference name is TAG (or ends in :TAG);
// without it the layout must hold one image. The layers for this platform
// are applied in order (whiteouts honoured) to dir/rootfs, and config.json
// runs the image's entrypoint and cmd with its env, working directory and
// user; its stop signal becomes the AnnotationStopSignal annotation.
func InitImageBundle(ctx context.Context, ref, dir string) error {
	for _, name := range []string{configFile, "rootfs"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("bundle %s: %s exists: %w", dir, name, errdefs.ErrAlreadyExists)
		}
	}
	path, tag := splitImageRef(ref)
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("image %s: %w", path, errdefs.ErrNotFound)
	}
	var (
		store content.Store
		idx   ocispec.Index
	)
	if st.IsDir() {
		// An OCI layout keeps its blobs as a content store does.
		if store, err = local.NewStore(path); err != nil {
			return fmt.Errorf("image layout %s: %w", path, err)
		}
		data, err := os.ReadFile(filepath.Join(path, ocispec.ImageIndexFile))
		if err != nil {
			return fmt.Errorf("image layout %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
		if err := json.Unmarshal(data, &idx); err != nil {
			return fmt.Errorf("image layout %s: index.json: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
	} else {
		tmp, err := os.MkdirTemp("", "minimgr-image-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if store, err = local.NewStore(tmp); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		desc, err := archive.ImportIndex(ctx, store, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("image archive %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
		data, err := content.ReadBlob(ctx, store, desc)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, &idx); err != nil {
			return fmt.Errorf("image archive %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
	}
	target, err := pickManifest(idx, tag)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	platform := platforms.Default()
	manifest, err := images.Manifest(ctx, store, target, platform)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	data, err := content.ReadBlob(ctx, store, manifest.Config)
	if err != nil {
		return fmt.Errorf("image %s: config: %w", ref, err)
	}
	var img ocispec.Image
	if err := json.Unmarshal(data, &img); err != nil {
		return fmt.Errorf("image %s: config: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}

	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	for _, l := range manifest.Layers {
		if err := applyLayer(ctx, store, l, rootfs); err != nil {
			return fmt.Errorf("image %s: layer %s: %w", ref, l.Digest, err)
		}
	}
	spec, err := imageSpec(img.Config, rootfs)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return writeBundleSpec(dir, spec)
}

func applyLayer(ctx context.Context, store content.Store, l ocispec.Descriptor, rootfs string) error {
	ra, err := store.ReaderAt(ctx, l)
	if err != nil {
		return err
	}
	defer ra.Close()
	r, err := compression.DecompressStream(content.NewReader(ra))
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = tararchive.Apply(ctx, rootfs, r)
	return err
}

// splitImageRef splits PATH[:TAG]; a path that exists as given has no tag.
func splitImageRef(ref string) (string, string) {
	if _, err := os.Stat(ref); err == nil {
		return ref, ""
	}
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.Contains(ref[i+1:], "/") {
		return ref, ""
	}
	return ref[:i], ref[i+1:]
}

// absImageRef makes the path of PATH[:TAG] absolute: the ref is recorded,
// and a restart from another directory unpacks it again.
func absImageRef(ref string) string {
	path, tag := splitImageRef(ref)
	abs, err := filepath.Abs(path)
	if err != nil {
		return ref
	}
	if tag != "" {
		return abs + ":" + tag
	}
	return abs
}

// pickManifest chooses the image of the index named tag.
func pickManifest(idx ocispec.Index, tag string) (ocispec.Descriptor, error) {
	if tag == "" {
		if len(idx.Manifests) == 1 {
			return idx.Manifests[0], nil
		}
		// Several entries may be one image under several names.
		for _, m := range idx.Manifests[1:] {
			if m.Digest != idx.Manifests[0].Digest {
				return ocispec.Descriptor{}, fmt.Errorf("%d images: name one with :TAG: %w", len(idx.Manifests), errdefs.ErrInvalidArgument)
			}
		}
		if len(idx.Manifests) == 0 {
			return ocispec.Descriptor{}, fmt.Errorf("no image: %w", errdefs.ErrNotFound)
		}
		return idx.Manifests[0], nil
	}
	for _, m := range idx.Manifests {
		for _, name := range []string{m.Annotations[ocispec.AnnotationRefName], m.Annotations[images.AnnotationImageName]} {
			if name != "" && (name == tag || strings.HasSuffix(name, ":"+tag)) {
				return m, nil
			}
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no image tagged %q: %w", tag, errdefs.ErrNotFound)
}

// imageSpec is the default spec (BusyboxSpec's) running the image's
// process.
func imageSpec(c ocispec.ImageConfig, rootfs string) (*specs.Spec, error) {
	spec := BusyboxSpec()
	p := spec.Process
	p.Args = append(append([]string(nil), c.Entrypoint...), c.Cmd...)
	if len(c.Env) > 0 {
		p.Env = append([]string(nil), c.Env...)
		hasPath := false
		for _, e := range p.Env {
			hasPath = hasPath || strings.HasPrefix(e, "PATH=")
		}
		if !hasPath {
			p.Env = append(p.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
		}
	}
	if c.WorkingDir != "" {
		p.Cwd = c.WorkingDir
	}
	if c.User != "" {
		u, err := user.GetExecUserPath(c.User, &user.ExecUser{}, filepath.Join(rootfs, "etc", "passwd"), filepath.Join(rootfs, "etc", "group"))
		if err != nil {
			return nil, fmt.Errorf("user %q: %v: %w", c.User, err, errdefs.ErrInvalidArgument)
		}
		p.User = specs.User{UID: uint32(u.Uid), GID: uint32(u.Gid)}
		for _, g := range u.Sgids {
			p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(g))
		}
	}
	if c.StopSignal != "" {
		spec.Annotations = map[string]string{AnnotationStopSignal: c.StopSignal}
	}
	return spec, nil
}

func writeBundleSpec(dir string, spec *specs.Spec) error {
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, configFile), data, 0o644); err != nil {
		return err
	}
	return nil
}
