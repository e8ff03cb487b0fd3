package image

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// Push uploads the stored image src (any reference Get accepts) to the
// registry reference dst. The stored manifest is sent byte for byte, so the
// image keeps its digest. opts.Platform is ignored.
func (s *Store) Push(ctx context.Context, src, dst string, opts PullOptions) error {
	if err := s.push(ctx, src, dst, opts); err != nil {
		return fmt.Errorf("pushing %s to %s: %w", src, dst, err)
	}
	return nil
}

func (s *Store) push(ctx context.Context, src, dst string, opts PullOptions) error {
	r, err := parseRef(dst, opts.Insecure)
	if err != nil {
		return err
	}
	// Hold the shared GC lock so Prune cannot delete blobs mid-upload.
	unlock, err := s.lockGC(unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	rec, err := idx.resolve(src)
	if err != nil {
		return err
	}
	img, err := s.v1Image(rec)
	if err != nil {
		return err
	}
	var updates chan v1.Update
	done := make(chan struct{})
	ropts := s.remoteOptions(ctx, opts.Insecure)
	if opts.Progress != nil || s.progress != nil {
		updates = make(chan v1.Update, 16)
		ropts = append(ropts, remote.WithProgress(updates))
		go func() {
			defer close(done)
			for u := range updates {
				if u.Error != nil {
					continue // Write returns it too.
				}
				s.report(opts.Progress, Progress{Ref: dst, Complete: u.Complete, Total: u.Total})
			}
		}()
	} else {
		close(done)
	}
	err = remote.Write(r, img, ropts...)
	<-done // go-containerregistry closes updates when Write returns.
	if err != nil {
		return classifyRemote(err)
	}
	s.log.Info("pushed image", "id", rec.ID, "ref", dst)
	return nil
}

// v1Image exposes a stored image to go-containerregistry, reading every
// blob from the store.
func (s *Store) v1Image(rec *record) (v1.Image, error) {
	raw, err := s.readBlob(rec.Manifest)
	if err != nil {
		return nil, err
	}
	cfg, err := s.readBlob(rec.ID)
	if err != nil {
		return nil, err
	}
	img, err := partial.CompressedToImage(&storedImage{s: s, rec: rec, manifest: raw, config: cfg})
	if err != nil {
		return nil, fmt.Errorf("reading stored image %s: %w", rec.ID, err)
	}
	return img, nil
}

// storedImage implements partial.CompressedImageCore over the blob store.
type storedImage struct {
	s        *Store
	rec      *record
	manifest []byte
	config   []byte
}

var _ partial.CompressedImageCore = (*storedImage)(nil)

func (i *storedImage) RawConfigFile() ([]byte, error) { return i.config, nil }
func (i *storedImage) RawManifest() ([]byte, error)   { return i.manifest, nil }
func (i *storedImage) MediaType() (types.MediaType, error) {
	return types.MediaType(i.rec.MediaType), nil
}

func (i *storedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range i.rec.Layers {
		if l.Digest == h.String() {
			return &storedLayer{s: i.s, l: l}, nil
		}
	}
	if h.String() == i.rec.ID {
		return &storedLayer{s: i.s, l: layerRecord{Digest: i.rec.ID, MediaType: string(types.OCIConfigJSON), Size: int64(len(i.config))}}, nil
	}
	return nil, fmt.Errorf("layer %s of image %s: %w", h, i.rec.ID, ErrNotFound)
}

// storedLayer implements partial.CompressedLayer over one stored blob.
type storedLayer struct {
	s *Store
	l layerRecord
}

func (l *storedLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.l.Digest) }
func (l *storedLayer) Size() (int64, error)     { return l.l.Size, nil }
func (l *storedLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.l.MediaType), nil
}
func (l *storedLayer) Compressed() (io.ReadCloser, error) { return l.s.openBlob(l.l.Digest) }
