package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/disk"
)

// Store is the content-addressed image store under <root>/images. It is
// safe for concurrent use by many goroutines and by many processes sharing
// the same root: every change goes through file locks and renames.
type Store struct {
	root     string // the kiln root directory
	dir      string // root/images
	log      *slog.Logger
	progress func(Progress)
	limits   limits

	// progressMu serialises calls to progress, so a callback need not be
	// safe for concurrent use even though layers download in parallel.
	progressMu sync.Mutex

	// builds counts rootfs conversions this Store actually ran; tests use
	// it to prove that a cached rootfs is not rebuilt.
	builds atomic.Int64
}

// Option configures a Store. Options inject dependencies only; behaviour is
// chosen per call (PullOptions).
type Option func(*Store)

// WithLogger makes the Store log to l. By default it is silent.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// WithProgress makes Pull, Load and Push report per-blob progress to fn.
// Calls are serialised, so fn need not be safe for concurrent use, but it
// runs on the transfer path and should return quickly.
func WithProgress(fn func(Progress)) Option {
	return func(s *Store) { s.progress = fn }
}

// Progress is one progress report for one blob of one image.
type Progress struct {
	// Ref is the reference (or archive path) being transferred.
	Ref string
	// Digest is the blob's digest; empty for Push, which reports totals
	// over all blobs.
	Digest string
	// Complete and Total are bytes done and expected.
	Complete, Total int64
	// Cached is true when the blob was already in the store and nothing was
	// transferred.
	Cached bool
}

// Image describes one image in the store. It is the API's image, so the
// daemon answers with what the store holds and nothing is copied between
// two mirrored types: see api.Image for its fields. Its ID is the digest
// of the image's config blob ("sha256:…"), as docker shows it: it
// identifies the filesystem and runtime config regardless of how the
// layers were compressed or which registry served them, so the same image
// pulled and loaded from an archive is one ID, and the root filesystem is
// cached by it.
type Image = api.Image

// Config is the part of an image config that decides how its process runs.
type Config = api.ImageConfig

// Healthcheck is the image's HEALTHCHECK.
type Healthcheck = api.ImageHealthcheck

// record is one image in index.json.
type record struct {
	ID          string        `json:"id"`
	Manifest    string        `json:"manifest"`
	MediaType   string        `json:"mediaType"`
	ConfigSize  int64         `json:"configSize"`
	ManifestLen int64         `json:"manifestSize"`
	Layers      []layerRecord `json:"layers"`
	RepoDigests []string      `json:"repoDigests,omitempty"`
	Created     time.Time     `json:"created"`
	Added       time.Time     `json:"added"`
	OS          string        `json:"os,omitempty"`
	Arch        string        `json:"architecture,omitempty"`
	Config      Config        `json:"config"`
}

// layerRecord is one layer of a stored image.
type layerRecord struct {
	Digest    string `json:"digest"`
	DiffID    string `json:"diffID"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

// index is the content of index.json. Tags is the single source of truth
// for tags; an image's RepoTags are derived from it.
type index struct {
	Version int                `json:"version"`
	Images  map[string]*record `json:"images"`
	Tags    map[string]string  `json:"tags"` // canonical tag -> image ID
}

const indexVersion = 1

// Open opens (creating if needed) the image store under root/images.
func Open(root string, opts ...Option) (*Store, error) {
	if root == "" {
		return nil, fmt.Errorf("opening image store: empty root: %w", ErrInvalidArgument)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("opening image store: %w", err)
	}
	s := &Store{
		root:   abs,
		dir:    filepath.Join(abs, "images"),
		log:    slog.New(slog.DiscardHandler),
		limits: defaultLimits,
	}
	for _, o := range opts {
		o(s)
	}
	for _, d := range []string{s.blobDir(), s.rootfsDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("opening image store: %w", err)
		}
	}
	if _, err := s.readIndex(); err != nil {
		return nil, fmt.Errorf("opening image store: %w", err)
	}
	return s, nil
}

func (s *Store) blobDir() string   { return filepath.Join(s.dir, "blobs", "sha256") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }
func (s *Store) tmpDir() string    { return filepath.Join(s.dir, "tmp") }
func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }
func (s *Store) authPath() string  { return filepath.Join(s.root, "auth.json") }

// lockGC takes the garbage-collection lock: shared (unix.LOCK_SH) by anyone
// who writes blobs or builds a rootfs, so Prune (unix.LOCK_EX) never deletes
// something that is about to be referenced.
func (s *Store) lockGC(how int) (func(), error) {
	return lockFile(filepath.Join(s.dir, "gc.lock"), how)
}

// readIndex reads index.json without locking: it is only ever replaced by
// rename, so a reader sees either the old or the new version whole.
func (s *Store) readIndex() (*index, error) {
	b, err := os.ReadFile(s.indexPath())
	if errors.Is(err, fs.ErrNotExist) {
		return &index{Version: indexVersion, Images: map[string]*record{}, Tags: map[string]string{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading image index: %w", err)
	}
	var idx index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("parsing image index %s: %w: %w", s.indexPath(), ErrCorrupt, err)
	}
	if idx.Version != indexVersion {
		return nil, fmt.Errorf("reading image index: version %d: %w", idx.Version, ErrUnsupported)
	}
	if idx.Images == nil {
		idx.Images = map[string]*record{}
	}
	if idx.Tags == nil {
		idx.Tags = map[string]string{}
	}
	return &idx, nil
}

// updateIndex runs fn on the current index under the index lock and, if fn
// succeeds, replaces index.json with the result (temp-then-rename).
func (s *Store) updateIndex(fn func(*index) error) error {
	unlock, err := lockFile(filepath.Join(s.dir, "index.lock"), unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	if err := fn(idx); err != nil {
		return err
	}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding image index: %w", err)
	}
	if err := atomicfile.WriteFile(s.indexPath(), b, 0o600); err != nil {
		return fmt.Errorf("writing image index: %w", err)
	}
	return nil
}

// toImage builds the public view of r.
func (idx *index) toImage(r *record) *Image {
	img := &Image{
		ID:           r.ID,
		RepoDigests:  append([]string(nil), r.RepoDigests...),
		Digest:       r.Manifest,
		Size:         r.size(),
		Created:      r.Created,
		OS:           r.OS,
		Architecture: r.Arch,
		Config:       r.Config,
	}
	for tag, id := range idx.Tags {
		if id == r.ID {
			img.RepoTags = append(img.RepoTags, tag)
		}
	}
	sort.Strings(img.RepoTags)
	return img
}

func (r *record) size() int64 {
	n := r.ConfigSize + r.ManifestLen
	for _, l := range r.Layers {
		n += l.Size
	}
	return n
}

var (
	reFullID   = regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$`)
	reIDPrefix = regexp.MustCompile(`^(sha256:)?[0-9a-f]{1,63}$`)
)

// Get finds an image by, in this order (as docker does): full ID or
// manifest digest ("sha256:<64 hex>" or bare hex), tag or digest reference
// ("app:v1", "registry:5000/app@sha256:…"), or a unique prefix of the ID.
// It returns an error wrapping ErrNotFound if nothing matches, and
// ErrAmbiguous if a prefix matches several images.
func (s *Store) Get(ref string) (*Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	r, err := idx.resolve(ref)
	if err != nil {
		return nil, err
	}
	return idx.toImage(r), nil
}

// resolve implements Get's lookup order on idx.
func (idx *index) resolve(ref string) (*record, error) {
	if ref == "" {
		return nil, fmt.Errorf("looking up image: empty reference: %w", ErrInvalidArgument)
	}
	if reFullID.MatchString(ref) {
		d := "sha256:" + strings.TrimPrefix(ref, "sha256:")
		if r, ok := idx.Images[d]; ok {
			return r, nil
		}
		for _, r := range idx.Images {
			if r.Manifest == d {
				return r, nil
			}
		}
	}
	if pr, err := name.ParseReference(ref); err == nil {
		switch pr := pr.(type) {
		case name.Tag:
			if id, ok := idx.Tags[pr.Name()]; ok {
				if r, ok := idx.Images[id]; ok {
					return r, nil
				}
			}
		case name.Digest:
			for _, r := range idx.Images {
				for _, rd := range r.RepoDigests {
					if rd == pr.Name() {
						return r, nil
					}
				}
			}
		}
	}
	if reIDPrefix.MatchString(ref) {
		p := "sha256:" + strings.TrimPrefix(ref, "sha256:")
		var found *record
		for id, r := range idx.Images {
			if strings.HasPrefix(id, p) {
				if found != nil {
					return nil, fmt.Errorf("looking up image %q: %w", ref, ErrAmbiguous)
				}
				found = r
			}
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("looking up image %q: %w", ref, ErrNotFound)
}

// List returns every image in the store, newest first.
func (s *Store) List() ([]*Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	out := make([]*Image, 0, len(idx.Images))
	for _, r := range idx.Images {
		out = append(out, idx.toImage(r))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Remove removes ref from the store. A tag reference removes that tag, and
// the image record too once no tag is left; any other reference (ID,
// digest, ID prefix) removes the image record and all its tags. Blobs and
// the rootfs stay until Prune. Whether a VM still uses the image is the
// caller's check.
func (s *Store) Remove(ref string) error {
	err := s.updateIndex(func(idx *index) error {
		if pr, err := name.ParseReference(ref); err == nil {
			if tag, ok := pr.(name.Tag); ok {
				if id, ok := idx.Tags[tag.Name()]; ok && !reFullID.MatchString(ref) {
					delete(idx.Tags, tag.Name())
					for _, other := range idx.Tags {
						if other == id {
							return nil
						}
					}
					delete(idx.Images, id)
					return nil
				}
			}
		}
		r, err := idx.resolve(ref)
		if err != nil {
			return err
		}
		delete(idx.Images, r.ID)
		for tag, id := range idx.Tags {
			if id == r.ID {
				delete(idx.Tags, tag)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("removing image %q: %w", ref, err)
	}
	return nil
}

// Prune deletes blobs and rootfs builds that no image references, and any
// leftovers of interrupted transfers, and returns the bytes freed. It waits
// for running pulls, loads and rootfs builds to finish.
func (s *Store) Prune() (freed int64, err error) {
	unlock, err := s.lockGC(unix.LOCK_EX)
	if err != nil {
		return 0, fmt.Errorf("pruning images: %w", err)
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return 0, fmt.Errorf("pruning images: %w", err)
	}
	keepBlobs := map[string]bool{}
	keepRootFS := map[string]bool{}
	for _, r := range idx.Images {
		keepBlobs[hexOf(r.ID)] = true
		keepBlobs[hexOf(r.Manifest)] = true
		for _, l := range r.Layers {
			keepBlobs[hexOf(l.Digest)] = true
		}
		keepRootFS[hexOf(r.ID)] = true
	}
	remove := func(dir string, keep func(name string) bool) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if keep(e.Name()) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			n := diskUsage(p)
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			freed += n
		}
		return nil
	}
	if err := remove(s.blobDir(), func(n string) bool { return keepBlobs[n] }); err != nil {
		return freed, fmt.Errorf("pruning blobs: %w", err)
	}
	if err := remove(s.rootfsDir(), func(n string) bool {
		return keepRootFS[strings.TrimSuffix(strings.TrimSuffix(n, rootfsExt), ".lock")]
	}); err != nil {
		return freed, fmt.Errorf("pruning rootfs builds: %w", err)
	}
	// Holding the exclusive GC lock means no transfer or build is running,
	// so everything in tmp is a leftover of one that died.
	if err := remove(s.tmpDir(), func(string) bool { return false }); err != nil {
		return freed, fmt.Errorf("pruning temporary files: %w", err)
	}
	s.log.Debug("pruned image store", "freed", freed)
	return freed, nil
}

// diskUsage is the apparent size of the file or tree at p.
func diskUsage(p string) int64 {
	var n int64
	_ = filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// hexOf strips the algorithm from a "sha256:<hex>" digest.
func hexOf(digest string) string {
	_, h, ok := strings.Cut(digest, ":")
	if !ok {
		return digest
	}
	return h
}

// RootfsBytes is what the root filesystems made from images for VMs take
// on disk (they are made again when needed).
func (s *Store) RootfsBytes() int64 { return disk.DirUsage(s.rootfsDir()) }

// Tag points the tag dst ("app:v2"; no tag means latest) at the image src
// names (tag, digest or ID), as docker tag: a tag that named another
// image moves.
func (s *Store) Tag(src, dst string) (*Image, error) {
	t, err := name.NewTag(dst)
	if err != nil {
		return nil, fmt.Errorf("invalid tag %q: %v: %w", dst, err, ErrInvalidArgument)
	}
	var out *Image
	err = s.updateIndex(func(idx *index) error {
		r, err := idx.resolve(src)
		if err != nil {
			return err
		}
		idx.Tags[t.Name()] = r.ID
		out = idx.toImage(r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tagging image %q as %s: %w", src, dst, err)
	}
	return out, nil
}
