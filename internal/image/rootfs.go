// Root filesystem images.
//
// Host requirement: the Debian package squashfs-tools-ng (tar2sqfs).
// Tests that build a rootfs skip without it, naming the package.
//
// Format: squashfs built by tar2sqfs from the flattened tar stream (see
// flatten.go), zstd level 3, 128 KiB blocks. Chosen by measurement on this
// machine (2 vCPU AMD EPYC, one run each) on two ~100 MiB sample trees:
// "small" is 20,000 text-like files of 0.5-9.5 KiB (98 MiB), "large" is
// four 25 MiB files, each half random bytes and half text. Build time and
// allocated image size:
//
//	                               small              large
//	tar2sqfs zstd:3 (chosen)        1.09 s  40.2 MiB   0.48 s  70.4 MiB
//	tar2sqfs zstd:15 (its default) 11.06 s  39.2 MiB   6.60 s  69.9 MiB
//	tar2sqfs lz4                    0.68 s  81.8 MiB   0.19 s  91.7 MiB
//	tar2sqfs gzip:6                 2.72 s  46.4 MiB   2.05 s  73.6 MiB
//	tar2sqfs xz (its default)      24.77 s  38.9 MiB  19.51 s  69.7 MiB
//	mkfs.erofs -zlz4hc (from dir)   1.56 s 100.4 MiB  22.30 s  98.0 MiB
//	mkfs.erofs, uncompressed        1.11 s 100.4 MiB   0.20 s 100.0 MiB
//	mkfs.ext4 -d (from dir)         0.90 s 121.3 MiB   0.39 s 108.4 MiB
//
// The whole production path on "small" (gunzip and flatten a one-layer
// image in Go, streaming into tar2sqfs zstd:3) took 3.0 s when the layer
// was decompressed twice (see FORMAT.md for today's figure).
// Reproduce with
//
//	go test -run '^$' -bench 'BenchmarkRootFS' -benchtime 1x ./internal/image/
//
// Why squashfs through tar2sqfs: it is the only candidate in Debian
// bookworm that reads a tar stream, so ownership, modes, setuid bits,
// device nodes and xattrs come straight from the tar headers with no root
// on the host and nothing ever extracted. mkfs.erofs 1.5 has no tar input
// and compresses poorly here; mkfs.ext4 -d and mkfs.erofs need a real
// directory, whose owners and device nodes only root can create, and the
// figures above leave out that extraction. zstd:3 is within 3% of the
// best size at a tenth of the time of zstd:15 or xz, beats gzip on both,
// and is half the size of lz4 on text. The guest kernel has squashfs with
// zstd built in. FORMAT.md repeats this for readers of the tree.

package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/disk"
)

const (
	// FSTypeSquashfs is the filesystem type of every RootFS this package
	// builds, as the guest's mount(2) calls it.
	FSTypeSquashfs = "squashfs"

	rootfsExt       = ".sqfs"
	tar2sqfsBinary  = "tar2sqfs"
	tar2sqfsPackage = "squashfs-tools-ng"
)

// RootFS is a built, read-only root filesystem image shared by every VM
// of one image. Callers must not modify the file.
type RootFS struct {
	// Path is the image file, to attach as a read-only block device.
	Path string
	// FSType is the filesystem in the file (FSTypeSquashfs).
	FSType string
	// Size is the file's size in bytes.
	Size int64
}

// tar2sqfsArgs is the tar2sqfs command line that writes out. Pure, so a
// test can check it against the exact strings.
func tar2sqfsArgs(out string, jobs int) []string {
	return []string{
		"--quiet",
		"--no-skip", // a tar record it cannot read is an error, not a gap
		"--force",   // out is a fresh temporary file we created
		"--compressor", "zstd",
		"--comp-extra", "level=3",
		"--block-size", "131072",
		"--num-jobs", strconv.Itoa(jobs),
		"--defaults", "uid=0,gid=0,mode=0755",
		out,
	}
}

// RootFS returns the root filesystem of img, building it on first use.
// The build runs once per image ID (the config digest, which fixes the
// layers' uncompressed content): later calls, from this or another
// process, return the cached file without converting anything. Builds of
// one image are serialised by a lock; a failed or cancelled build leaves
// nothing behind.
func (s *Store) RootFS(ctx context.Context, img *Image) (RootFS, error) {
	if img == nil {
		return RootFS{}, fmt.Errorf("building root filesystem: nil image: %w", ErrInvalidArgument)
	}
	r, err := s.rootFS(ctx, img.ID)
	if err != nil {
		return RootFS{}, fmt.Errorf("building root filesystem of %s: %w", img.ID, err)
	}
	return r, nil
}

func (s *Store) rootfsPath(id string) string {
	return filepath.Join(s.rootfsDir(), hexOf(id)+rootfsExt)
}

func statRootFS(p string) (RootFS, bool) {
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return RootFS{}, false
	}
	return RootFS{Path: p, FSType: FSTypeSquashfs, Size: fi.Size()}, true
}

func (s *Store) rootFS(ctx context.Context, id string) (_ RootFS, err error) {
	idx, err := s.readIndex()
	if err != nil {
		return RootFS{}, err
	}
	rec, ok := idx.Images[id]
	if !ok {
		return RootFS{}, fmt.Errorf("image %s: %w", id, ErrNotFound)
	}
	final := s.rootfsPath(id)
	if r, ok := statRootFS(final); ok {
		return r, nil
	}

	unlockGC, err := s.lockGC(unix.LOCK_SH)
	if err != nil {
		return RootFS{}, err
	}
	defer unlockGC()
	unlock, err := lockFile(filepath.Join(s.rootfsDir(), hexOf(id)+".lock"), unix.LOCK_EX)
	if err != nil {
		return RootFS{}, err
	}
	defer unlock()
	if r, ok := statRootFS(final); ok {
		return r, nil // built by whoever held the lock before us
	}

	bin, err := exec.LookPath(tar2sqfsBinary)
	if err != nil {
		return RootFS{}, fmt.Errorf("%s not found (install the Debian package %s): %w", tar2sqfsBinary, tar2sqfsPackage, ErrUnavailable)
	}
	f, err := os.CreateTemp(s.tmpDir(), "rootfs-"+hexOf(id)[:12]+"-*"+rootfsExt)
	if err != nil {
		return RootFS{}, err
	}
	tmp := f.Name()
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()

	start := time.Now()
	sources := make([]layerSource, len(rec.Layers))
	for i, l := range rec.Layers {
		sources[i] = s.layerSource(l)
	}
	if err := s.buildSquashfs(ctx, bin, sources, tmp); err != nil {
		return RootFS{}, err
	}
	if err := syncFile(tmp); err != nil {
		return RootFS{}, err
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return RootFS{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return RootFS{}, err
	}
	s.builds.Add(1)
	r, ok := statRootFS(final)
	if !ok {
		return RootFS{}, fmt.Errorf("rootfs %s vanished after the build: %w", final, ErrNotFound)
	}
	s.log.Info("built root filesystem", "id", id, "size", r.Size, "took", time.Since(start).Round(time.Millisecond))
	return r, nil
}

// buildSquashfs streams the flattened layers into tar2sqfs writing out.
// The build stops when out's filesystem gets down to kiln's free-space
// reserve: a squashfs has no size fixed in advance, it grows with what
// the layers hold (bounded by limits.maxTotal), as does flatten's spool
// beside it, and the VMs' disks share that filesystem.
func (s *Store) buildSquashfs(ctx context.Context, bin string, layers []layerSource, out string) error {
	guard := &freeGuard{dir: filepath.Dir(out), free: statfsFree}
	if err := guard.check(); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, tar2sqfsArgs(out, runtime.NumCPU())...)
	cmd.WaitDelay = 5 * time.Second
	stderr := &tailBuffer{max: 8 << 10}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	guard.w = stdin
	bw := bufio.NewWriterSize(guard, 1<<20)
	// The spool holds the files' contents between flatten's passes. It is
	// unlinked at once: it takes space only while the build runs, and
	// nothing is left of it however the build ends.
	sp, err := os.CreateTemp(filepath.Dir(out), "spool-*")
	if err != nil {
		stdin.Close()
		cmd.Wait()
		return err
	}
	os.Remove(sp.Name())
	defer sp.Close()
	spool := struct {
		io.Writer
		io.ReaderAt
	}{&freeGuard{w: sp, dir: filepath.Dir(out), free: guard.free}, sp}
	werr := flatten(ctx, layers, bw, s.limits, spool)
	if werr == nil {
		werr = bw.Flush()
	}
	// Closing stdin ends tar2sqfs's input: after a flatten error it sees a
	// truncated tar and fails, and the temporary file is removed.
	stdin.Close()
	cerr := cmd.Wait()
	switch {
	case werr != nil && !errors.Is(werr, syscall.EPIPE):
		return werr
	case cerr != nil:
		return fmt.Errorf("running %s: %w: %s", bin, cerr, bytes.TrimSpace(stderr.Bytes()))
	case werr != nil:
		return werr
	}
	return ctx.Err()
}

// freeCheckEvery is how many bytes of tar a build writes between two
// looks at the free space.
const freeCheckEvery = 64 << 20

// freeGuard passes a build's tar to w, and fails it with ErrUnavailable
// once the filesystem of dir has less than kiln's free-space reserve
// (disk.FreeReserve, the daemon's --disk-reserve) free, looking every
// freeCheckEvery bytes.
type freeGuard struct {
	w    io.Writer
	dir  string
	free func(dir string) (int64, error)
	n    int64 // bytes written since the last look
}

func (g *freeGuard) Write(p []byte) (int, error) {
	if g.n += int64(len(p)); g.n >= freeCheckEvery {
		g.n = 0
		if err := g.check(); err != nil {
			return 0, err
		}
	}
	return g.w.Write(p)
}

func (g *freeGuard) check() error {
	free, err := g.free(g.dir)
	if err != nil {
		return fmt.Errorf("checking free space in %s: %w", g.dir, err)
	}
	if free < disk.FreeReserve {
		return fmt.Errorf("%s has %s free, less than the %s kiln keeps free for the disks of its VMs (--disk-reserve or $%s): %w",
			g.dir, disk.HumanBytes(free), disk.HumanBytes(disk.FreeReserve), disk.FreeReserveEnv, ErrUnavailable)
	}
	return nil
}

// statfsFree is the space of dir's filesystem an unprivileged writer may
// still take.
func statfsFree(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// tailBuffer keeps the last max bytes written to it: enough of a tool's
// stderr to explain a failure without holding an unbounded log.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte { return t.b }

// layerSource reads a stored layer as an uncompressed tar stream.
func (s *Store) layerSource(l layerRecord) layerSource {
	return layerSource{name: l.Digest, open: func() (io.ReadCloser, error) { return s.openLayer(l) }}
}

// openLayer opens a stored layer and decompresses it (gzip or zstd,
// recognised by magic bytes: compressionOf). Read to EOF, Close also checks the compressed bytes
// against the layer digest and the uncompressed ones against the config's
// diff ID, so a blob damaged at rest is caught before its rootfs is used.
// Reads fail with ErrTooLarge once the layer passes the store's limits on
// a layer's uncompressed size and on how many times it expands.
func (s *Store) openLayer(l layerRecord) (io.ReadCloser, error) {
	f, err := s.openBlob(l.Digest)
	if err != nil {
		return nil, err
	}
	lr := &layerReader{f: f, digest: l.Digest, diffID: l.DiffID, ch: sha256.New(), dh: sha256.New(), lim: s.limits}
	lr.comp = bufio.NewReaderSize(io.TeeReader(&lr.read, lr.ch), 256<<10)
	lr.read.r = f
	magic, _ := lr.comp.Peek(6)
	switch kind := compressionOf(magic); kind {
	case "gzip", "zstd":
		dec, closeDec, err := decompressor(kind, lr.comp)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("decompressing layer %s: %w: %w", l.Digest, ErrCorrupt, err)
		}
		lr.dec, lr.closeDec, lr.compressed = dec, closeDec, true
	default:
		// Layers are tar, gzip or zstd (supportedLayer); anything else
		// is read as a tar, and fails as one.
		lr.dec = lr.comp
	}
	return lr, nil
}

// layerReader is a decompressing, digest-checking, bounded layer stream.
type layerReader struct {
	f              *os.File
	read           countReader // the blob's bytes taken so far
	comp           *bufio.Reader
	dec            io.Reader
	closeDec       func()
	compressed     bool
	ch, dh         hash.Hash
	digest, diffID string
	lim            limits
	out            int64 // uncompressed bytes served
	eof            bool
	err            error // a limit passed: every later Read fails with it
}

func (r *layerReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.Read(p)
	r.dh.Write(p[:n])
	r.out += int64(n)
	if err := r.checkLimits(); err != nil {
		r.err = err
		return n, err
	}
	if err == io.EOF {
		r.eof = true
	} else if err != nil {
		err = fmt.Errorf("decompressing layer %s: %w: %w", r.digest, ErrCorrupt, err)
	}
	return n, err
}

// checkLimits stops a decompression bomb: a layer past the size limit, or
// one that expands absurdly. The blob's bytes counted include what the
// buffer read ahead, so the ratio errs low.
func (r *layerReader) checkLimits() error {
	if r.out > r.lim.maxLayer {
		return fmt.Errorf("layer %s uncompresses to more than %s, the limit for one layer: %w", r.digest, disk.SizeName(r.lim.maxLayer), ErrTooLarge)
	}
	if r.compressed {
		return checkExpansion("layer "+r.digest, r.read.n, r.out, r.lim)
	}
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Close releases the layer and, if it was read to the end, verifies it.
func (r *layerReader) Close() error {
	defer r.f.Close()
	if r.closeDec != nil {
		defer r.closeDec()
	}
	if !r.eof {
		return nil
	}
	if _, err := io.Copy(io.Discard, r.comp); err != nil {
		return fmt.Errorf("reading layer %s: %w", r.digest, err)
	}
	if got := "sha256:" + hex.EncodeToString(r.ch.Sum(nil)); got != r.digest {
		return fmt.Errorf("layer %s hashes to %s: %w", r.digest, got, ErrCorrupt)
	}
	if got := "sha256:" + hex.EncodeToString(r.dh.Sum(nil)); r.diffID != "" && got != r.diffID {
		return fmt.Errorf("layer %s uncompresses to %s, config says %s: %w", r.digest, got, r.diffID, ErrCorrupt)
	}
	return nil
}
