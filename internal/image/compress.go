package image

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"kiln.dev/kiln/internal/disk"
)

// compressionOf names the compression its first bytes say a stream has
// ("gzip", "zstd", "bzip2", "xz"), or "" for none of them. Layers and
// archives are told by their content, as docker does, never by a name or
// media type: some registries label layers loosely, and an archive may be
// called anything.
func compressionOf(magic []byte) string {
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return "gzip"
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(magic, []byte("BZh")):
		return "bzip2"
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz"
	}
	return ""
}

// decompressor returns what kind (from compressionOf) decompresses br to,
// and what releases the decoder. A zstd stream may ask for a window of
// at most zstdMaxWindow. xz is refused (ErrUnsupported): kiln has no
// decoder for it.
func decompressor(kind string, br *bufio.Reader) (io.Reader, func(), error) {
	switch kind {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case "zstd":
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	case "bzip2":
		return bzip2.NewReader(br), func() {}, nil
	}
	return nil, nil, fmt.Errorf("%s compression; decompress it first: %w", kind, ErrUnsupported)
}

// checkExpansion stops a decompression bomb: what, having read in
// compressed bytes, gave out bytes, more than lim.maxRatio times as many
// once past lim.ratioFloor. Bytes read ahead count in in, so the ratio
// errs low.
func checkExpansion(what string, in, out int64, lim limits) error {
	if out > lim.ratioFloor && out > lim.maxRatio*max(in, 1) {
		return fmt.Errorf("%s expands to %d bytes out of %d, more than the %d times allowed past the first %s: a decompression bomb: %w",
			what, out, in, lim.maxRatio, disk.SizeName(lim.ratioFloor), ErrTooLarge)
	}
	return nil
}

// expander is a decompressed stream r whose compressed bytes are counted
// by in, refused (ErrTooLarge) once it expands as a bomb does.
type expander struct {
	r    io.Reader
	in   *countReader
	what string
	lim  limits
	out  int64
	err  error
}

func (e *expander) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.r.Read(p)
	e.out += int64(n)
	if cerr := checkExpansion(e.what, e.in.n, e.out, e.lim); cerr != nil {
		e.err = cerr
		return n, cerr
	}
	return n, err
}
