package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobPath is where the blob with digest d lives. Preconditions: d is a
// validated sha256 digest (see checkDigest), so the path cannot escape.
func (s *Store) blobPath(d v1.Hash) string {
	return filepath.Join(s.blobDir(), d.Hex)
}

// checkDigest rejects digests this store cannot address: only sha256 with
// 64 lowercase hex digits is accepted, which also keeps the hex safe to use
// as a file name.
func checkDigest(d v1.Hash) error {
	if d.Algorithm != "sha256" || !reFullID.MatchString(d.Hex) || len(d.Hex) != 64 {
		return fmt.Errorf("digest %q: only sha256 is supported: %w", d.String(), ErrUnsupported)
	}
	return nil
}

// hasBlob reports whether the blob d is stored with the expected size
// (size < 0 skips the size check). A blob is only ever stored after its
// digest was verified, so presence is enough to trust it.
func (s *Store) hasBlob(d v1.Hash, size int64) bool {
	if checkDigest(d) != nil {
		return false
	}
	fi, err := os.Stat(s.blobPath(d))
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

// putBlob streams r into the store as blob d. The bytes go to a temporary
// file while being hashed; only if the digest (and size, when size >= 0)
// match is the file renamed into place, so a corrupted or truncated blob is
// never stored. A read error from r that leaves content not matching d is
// reported as ErrCorrupt, since a registry's own checksum error and a cut
// transfer look the same from here. onWrite, if set, is called with the
// running byte count.
func (s *Store) putBlob(ctx context.Context, d v1.Hash, size int64, r io.Reader, onWrite func(int64)) (err error) {
	if err := checkDigest(d); err != nil {
		return err
	}
	f, err := os.CreateTemp(s.tmpDir(), "blob-"+d.Hex[:12]+"-*")
	if err != nil {
		return fmt.Errorf("storing blob %s: %w", d, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	src := r
	if size >= 0 {
		// Read one byte past the declared size so an overlong blob is
		// caught without reading an unbounded stream.
		src = io.LimitReader(r, size+1)
	}
	n, cerr := io.Copy(io.MultiWriter(f, h), &ctxReader{ctx: ctx, r: src, onRead: onWrite})
	if ctx.Err() != nil {
		return fmt.Errorf("storing blob %s: %w", d, ctx.Err())
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	switch {
	case size >= 0 && n != size && cerr == nil:
		return fmt.Errorf("storing blob %s: got %d bytes, want %d: %w", d, n, size, ErrCorrupt)
	case got != d.String() && cerr != nil:
		return fmt.Errorf("storing blob %s: %w: %w", d, ErrCorrupt, cerr)
	case cerr != nil:
		return fmt.Errorf("storing blob %s: %w", d, cerr)
	case got != d.String():
		return fmt.Errorf("storing blob %s: content hashes to %s: %w", d, got, ErrCorrupt)
	}
	if err = f.Chmod(0o444); err != nil {
		return fmt.Errorf("storing blob %s: %w", d, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("storing blob %s: %w", d, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("storing blob %s: %w", d, err)
	}
	// Two pulls of one image may race to here with identical content;
	// rename is atomic, so either winner leaves a correct blob.
	if err = os.Rename(f.Name(), s.blobPath(d)); err != nil {
		return fmt.Errorf("storing blob %s: %w", d, err)
	}
	return nil
}

// putBlobBytes stores an in-memory blob (a manifest or config).
func (s *Store) putBlobBytes(ctx context.Context, d v1.Hash, b []byte) error {
	if s.hasBlob(d, int64(len(b))) {
		return nil
	}
	return s.putBlob(ctx, d, int64(len(b)), bytes.NewReader(b), nil)
}

// readBlob returns the content of a small blob.
func (s *Store) readBlob(digest string) ([]byte, error) {
	d, err := v1.NewHash(digest)
	if err != nil {
		return nil, fmt.Errorf("reading blob %q: %w: %w", digest, ErrCorrupt, err)
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.blobPath(d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading blob %s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", digest, err)
	}
	return b, nil
}

// openBlob opens a stored blob for streaming.
func (s *Store) openBlob(digest string) (*os.File, error) {
	d, err := v1.NewHash(digest)
	if err != nil {
		return nil, fmt.Errorf("opening blob %q: %w: %w", digest, ErrCorrupt, err)
	}
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("opening blob %s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", digest, err)
	}
	return f, nil
}

// ctxReader stops a copy when ctx is cancelled (local sources have no
// other way to notice) and reports the running byte count.
type ctxReader struct {
	ctx    context.Context
	r      io.Reader
	n      int64
	onRead func(int64)
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.onRead != nil && n > 0 {
		c.onRead(c.n)
	}
	return n, err
}
