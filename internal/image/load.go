package image

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// Load imports the images in path, which is one of:
//
//   - a docker-archive tarball ("docker save" output), every image in it,
//     tagged with its RepoTags;
//   - an OCI archive tarball (an OCI image layout packed in a tar);
//   - "oci:DIR" (or a directory holding an oci-layout file), an OCI image
//     layout on disk.
//
// From an OCI layout every image (or, for an index, the linux/amd64 image)
// listed in index.json is loaded and tagged from its
// "io.containerd.image.name" annotation, or from
// "org.opencontainers.image.ref.name" when that is a full reference
// ("app:v1"); a bare "latest" names no repository and is ignored.
//
// An archive may be compressed with gzip, zstd or bzip2 ("docker save |
// gzip"), whatever its name: the compression is told by its first bytes,
// and it is decompressed once, into the store's temporary directory,
// within the limits a layer has (see LoadArchive).
func (s *Store) Load(ctx context.Context, path string) ([]*Image, error) {
	unlock, err := s.lockGC(unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	defer unlock()
	imgs, err := s.load(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	return imgs, nil
}

func (s *Store) load(ctx context.Context, p string) ([]*Image, error) {
	if dir, ok := strings.CutPrefix(p, "oci:"); ok {
		return s.loadLayout(ctx, dir, p)
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(p, "oci-layout")); err != nil {
			return nil, fmt.Errorf("directory without an oci-layout file: %w", ErrInvalidArgument)
		}
		return s.loadLayout(ctx, p, p)
	}
	return s.loadArchiveFile(ctx, p, p)
}

// loadArchiveFile loads the docker-archive or OCI archive in the file p,
// decompressing it first if it is compressed; label names it in progress
// and messages.
func (s *Store) loadArchiveFile(ctx context.Context, p, label string) ([]*Image, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	if compressionOf(magic[:n]) == "" {
		return s.loadTar(ctx, p, label)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return s.loadArchive(ctx, f, label)
}

// loadTar loads the uncompressed docker-archive or OCI archive in the
// file p.
func (s *Store) loadTar(ctx context.Context, p, label string) ([]*Image, error) {
	kind, err := sniffArchive(p)
	if err != nil {
		return nil, err
	}
	switch kind {
	case archiveDocker:
		return s.loadDockerArchive(ctx, p, label)
	case archiveOCI:
		dir, err := os.MkdirTemp(s.tmpDir(), "load-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if err := s.extractOCIArchive(ctx, p, dir); err != nil {
			return nil, err
		}
		return s.loadLayout(ctx, dir, label)
	}
	return nil, fmt.Errorf("not a docker-archive or OCI archive (no manifest.json, or no oci-layout and index.json): %w", ErrInvalidArgument)
}

// LoadArchive imports the images of a docker-archive or OCI archive
// tarball read from r, as Load does for a file: a caller such as the
// daemon then needs no access to the client's files. label names the
// archive in progress and messages only; it is never opened. The archive
// is first copied into the store's temporary directory, decompressed if
// its first bytes say gzip, zstd or bzip2, and at most as many bytes as
// an archive's content may hold (the limit on a root filesystem's total
// content); a compressed one is refused as a bomb if it expands more than
// a layer may, and the copy stops when the filesystem gets down to kiln's
// free-space reserve.
func (s *Store) LoadArchive(ctx context.Context, r io.Reader, label string) ([]*Image, error) {
	unlock, err := s.lockGC(unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", label, err)
	}
	defer unlock()
	imgs, err := s.loadArchive(ctx, r, label)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", label, err)
	}
	return imgs, nil
}

func (s *Store) loadArchive(ctx context.Context, r io.Reader, label string) ([]*Image, error) {
	f, err := os.CreateTemp(s.tmpDir(), "load-*.tar")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	in := &countReader{r: &ctxReader{ctx: ctx, r: r}}
	br := bufio.NewReaderSize(in, 256<<10)
	magic, _ := br.Peek(6)
	kind := compressionOf(magic)
	src := io.Reader(br)
	if kind != "" {
		dec, closeDec, err := decompressor(kind, br)
		if errors.Is(err, ErrUnsupported) {
			return nil, fmt.Errorf("archive: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("decompressing %s archive: %w: %w", kind, ErrInvalidArgument, err)
		}
		defer closeDec()
		src = &expander{r: dec, in: in, what: kind + " archive", lim: s.limits}
	}
	dir := filepath.Dir(f.Name())
	guard := &freeGuard{w: f, dir: dir, free: statfsFree}
	sw := &errWriter{w: guard}
	n, err := io.Copy(sw, io.LimitReader(src, s.limits.maxTotal+1))
	switch {
	case sw.err != nil:
		return nil, fmt.Errorf("receiving archive: %w", sw.err)
	case err != nil && (errors.Is(err, ErrTooLarge) || ctx.Err() != nil || kind == ""):
		return nil, fmt.Errorf("receiving archive: %w", err)
	case err != nil:
		return nil, fmt.Errorf("decompressing %s archive: %w: %w", kind, ErrInvalidArgument, err)
	}
	if n > s.limits.maxTotal {
		return nil, fmt.Errorf("archive larger than %d bytes: %w", s.limits.maxTotal, ErrTooLarge)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("receiving archive: %w", err)
	}
	return s.loadTar(ctx, f.Name(), label)
}

type archiveKind int

const (
	archiveUnknown archiveKind = iota
	archiveDocker
	archiveOCI
)

// sniffArchive tells a docker archive from an OCI archive by the metadata
// files it contains. Archives written by docker 25+ hold both; the docker
// manifest.json is preferred because it carries the tags.
func sniffArchive(p string) (archiveKind, error) {
	f, err := os.Open(p)
	if err != nil {
		return archiveUnknown, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(6); compressionOf(magic) != "" {
		// Only ever reached after one decompression: take one, not a
		// chain of them (a gzip file can decompress to itself).
		return archiveUnknown, fmt.Errorf("archive compressed twice (%s inside): %w", compressionOf(magic), ErrUnsupported)
	}
	seen := map[string]bool{}
	tr := tar.NewReader(br)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return archiveUnknown, fmt.Errorf("reading archive: %w: %w", ErrInvalidArgument, err)
		}
		seen[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = true
	}
	switch {
	case seen["manifest.json"]:
		return archiveDocker, nil
	case seen["oci-layout"] && seen["index.json"]:
		return archiveOCI, nil
	}
	return archiveUnknown, nil
}

func (s *Store) loadDockerArchive(ctx context.Context, p, label string) ([]*Image, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(p) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("reading manifest.json: %w: %w", ErrInvalidArgument, err)
	}
	plat, _ := PullOptions{}.platform()
	var out []*Image
	for i, d := range m {
		var (
			first *name.Tag
			tags  []string
		)
		for _, t := range d.RepoTags {
			nt, err := name.NewTag(t)
			if err != nil {
				return nil, fmt.Errorf("image %d: tag %q: %w: %w", i, t, ErrInvalidArgument, err)
			}
			tags = append(tags, nt.Name())
			if first == nil {
				first = &nt
			}
		}
		if first == nil && len(m) > 1 {
			// go-containerregistry finds images in an archive by tag only.
			return nil, fmt.Errorf("image %d is untagged in a multi-image archive: %w", i, ErrUnsupported)
		}
		img, err := tarball.Image(opener, first)
		if err != nil {
			return nil, fmt.Errorf("reading image %d: %w: %w", i, ErrInvalidArgument, err)
		}
		stored, err := s.ingest(ctx, img, source{ref: label, tags: tags, platform: plat})
		if err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
		out = append(out, stored)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("archive holds no image: %w", ErrNotFound)
	}
	return out, nil
}

// layoutTags derives tags from an OCI layout descriptor's annotations.
func layoutTags(ann map[string]string) []string {
	for _, key := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
		v := ann[key]
		if v == "" || !strings.ContainsAny(v, ":/") {
			continue
		}
		if t, err := name.NewTag(v); err == nil {
			return []string{t.Name()}
		}
	}
	return nil
}

func (s *Store) loadLayout(ctx context.Context, dir, label string) ([]*Image, error) {
	lp, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout: %w: %w", ErrInvalidArgument, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout index: %w: %w", ErrInvalidArgument, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout index: %w: %w", ErrInvalidArgument, err)
	}
	plat, _ := PullOptions{}.platform()
	var out []*Image
	for _, d := range im.Manifests {
		var img v1.Image
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading index %s: %w", d.Digest, err)
			}
			img, err = imageForPlatform(child, plat, 0)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
		case d.MediaType.IsImage() && !d.MediaType.IsSchema1():
			if d.Platform != nil && !platformMatches(*d.Platform, plat) {
				continue
			}
			img, err = idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading image %s: %w", d.Digest, err)
			}
		default:
			continue // artifacts, signatures, attestations
		}
		stored, err := s.ingest(ctx, img, source{ref: label, tags: layoutTags(d.Annotations), platform: plat})
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", d.Digest, err)
		}
		out = append(out, stored)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no image for %s in the layout: %w", plat.String(), ErrNotFound)
	}
	return out, nil
}

var reLayoutBlob = regexp.MustCompile(`^blobs/sha256/[0-9a-f]{64}$`)

// extractOCIArchive unpacks the OCI layout in the tarball p into dst. Only
// the files a layout has (oci-layout, index.json, blobs/sha256/<hex>) are
// written, as regular files under dst, so the archive cannot place anything
// elsewhere; blob contents are verified later, when they enter the store.
func (s *Store) extractOCIArchive(ctx context.Context, p, dst string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.MkdirAll(filepath.Join(dst, "blobs", "sha256"), 0o700); err != nil {
		return err
	}
	var total int64
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w: %w", ErrInvalidArgument, err)
		}
		n := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA {
			continue
		}
		if n != "oci-layout" && n != "index.json" && !reLayoutBlob.MatchString(n) {
			continue
		}
		total += hdr.Size
		if total > s.limits.maxTotal {
			return fmt.Errorf("archive entry %q: archive larger than %d bytes: %w", hdr.Name, s.limits.maxTotal, ErrInvalidArgument)
		}
		out, err := os.OpenFile(filepath.Join(dst, filepath.FromSlash(n)), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, &ctxReader{ctx: ctx, r: tr})
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("extracting %q: %w", hdr.Name, err)
		}
	}
}
