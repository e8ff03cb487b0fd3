package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"kiln.dev/kiln/internal/disk"
)

// wantTooLarge checks that err is a limit error (and so an invalid
// argument) whose message holds every one of parts.
func wantTooLarge(t *testing.T, err error, parts ...string) {
	t.Helper()
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrTooLarge (an ErrInvalidArgument)", err)
	}
	t.Log(err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

// TestFlattenBoundsMetadata feeds layers whose names, symlink targets and
// xattrs would otherwise all be held in memory until the tree is written.
func TestFlattenBoundsMetadata(t *testing.T) {
	budget := defaultLimits
	budget.maxMeta = 64 << 10
	longLinks := make([]entry, 100)
	for i := range longLinks {
		longLinks[i] = entry{name: fmt.Sprintf("l%03d", i), typ: tar.TypeSymlink, link: strings.Repeat("t/", 500)}
	}
	bigXattrs := make([]entry, 20)
	for i := range bigXattrs {
		bigXattrs[i] = entry{name: fmt.Sprintf("f%03d", i), xattrs: map[string]string{"user.blob": strings.Repeat("x", 8<<10)}}
	}
	few := defaultLimits
	few.maxEntries = 100
	deep := strings.Repeat("d/", 150) + "f" // one entry, 150 directories no entry declares
	tests := []struct {
		name   string
		lim    limits
		layers [][]byte
		says   []string // the error names the entry, the limit and the value
	}{
		{"symlink target over PATH_MAX", defaultLimits,
			[][]byte{layerTar(t, entry{name: "s", typ: tar.TypeSymlink, link: strings.Repeat("a/", 2100)})},
			[]string{`layer 0`, `entry "s"`, "symlink target of 4200 bytes", "4096-byte limit"}},
		{"xattr over XATTR_SIZE_MAX", defaultLimits,
			[][]byte{layerTar(t, entry{name: "x", xattrs: map[string]string{"user.big": strings.Repeat("v", 100<<10)}})},
			[]string{`entry "x"`, "xattr user.big of 102400 bytes", "64 KiB limit"}},
		{"xattr name over XATTR_NAME_MAX", defaultLimits,
			[][]byte{layerTar(t, entry{name: "x", xattrs: map[string]string{"user." + strings.Repeat("n", 300): "v"}})},
			[]string{`entry "x"`, "xattr name of 305 bytes", "255-byte limit"}},
		{"symlink targets over the budget", budget,
			[][]byte{layerTar(t, longLinks...)},
			[]string{`entry "l065"`, "symlink targets and xattrs of the layers add up to 66", "64 KiB limit"}},
		{"xattrs over the budget, across layers", budget,
			[][]byte{layerTar(t, bigXattrs[:4]...), layerTar(t, bigXattrs[4:]...)},
			[]string{`layer 1`, `entry "f007"`, "64 KiB limit"}},
		{"implied directories count as entries", few,
			[][]byte{layerTar(t, entry{name: deep, body: "x"})},
			[]string{"more than 100 entries"}},
		{"a path made long by a symlink", defaultLimits,
			[][]byte{layerTar(t,
				entry{name: "l", typ: tar.TypeSymlink, link: strings.Repeat("a/", 1500)},
				entry{name: "l/" + strings.Repeat("b/", 1500) + "f", body: "x"})},
			[]string{`entry "l/b/b/`, "lands at a path of 4097 bytes", "4096-byte limit"}},
		{"a long name reached through a symlink", defaultLimits,
			[][]byte{layerTar(t,
				entry{name: "l", typ: tar.TypeSymlink, link: strings.Repeat("n", 300)},
				entry{name: "l/f", body: "x"})},
			[]string{`entry "l/f"`, "path component of 300 bytes", "255-byte limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := flattenTars(t, tt.lim, tt.layers...)
			wantTooLarge(t, err, tt.says...)
		})
	}
	// Under the limits the same shapes flatten.
	ok := budget
	ok.maxMeta = 1 << 20
	if _, err := flattenTars(t, ok, layerTar(t, longLinks...), layerTar(t, bigXattrs...)); err != nil {
		t.Errorf("flatten under the limits: %v", err)
	}
}

// tinyEntries is a layer of n empty files in 100 directories that no
// entry declares, made as it is read: a layer of many entries never sits
// in memory as a tar.
func tinyEntries(n int) layerSource {
	return layerSource{name: "generated", open: func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			var err error
			for i := 0; i < n && err == nil; i++ {
				err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%02d/%d", i%100, i), Mode: 0o644, Format: tar.FormatUSTAR})
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}}
}

// TestFlattenCountsEveryEntry fills a layer with tiny entries up to the
// entry limit (lowered from its 1 Mi default to keep the test fast), the
// directories they imply included: one more is refused.
func TestFlattenCountsEveryEntry(t *testing.T) {
	if defaultLimits.maxEntries != 1<<20 {
		t.Errorf("default entry limit %d; FORMAT.md and docs/architecture.md say 1 Mi", defaultLimits.maxEntries)
	}
	lim := defaultLimits
	lim.maxEntries = 20_000
	n := lim.maxEntries - 100 // the 100 directories count too
	if err := flatten(t.Context(), []layerSource{tinyEntries(n)}, io.Discard, lim, &memSpool{}); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	err := flatten(t.Context(), []layerSource{tinyEntries(n + 1)}, io.Discard, lim, &memSpool{})
	wantTooLarge(t, err, "layer 0 (generated)", fmt.Sprintf("entry %q", fmt.Sprintf("d%02d/%d", n%100, n)), "more than 20000 entries")
}

// TestFlattenMemoryPerEntry states what the entry limit costs: the tree of
// 100,000 small files, held between the passes.
func TestFlattenMemoryPerEntry(t *testing.T) {
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := newTree(defaultLimits, &memSpool{})
	if err := tr.scan(t.Context(), 0, tinyEntries(n)); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	runtime.KeepAlive(tr)
	t.Logf("%d bytes per entry held between the passes", per)
	if per > 600 {
		t.Errorf("%d bytes per entry; FORMAT.md says about 390, 400 MiB at the entry limit", per)
	}
}

// TestRootFSRefusesDecompressionBombs builds images whose gzip layers
// expand far beyond their size, with the layer limits lowered to keep the
// test fast; the header limits stay at their defaults, so only the
// decompressed stream can be what refuses them.
func TestRootFSRefusesDecompressionBombs(t *testing.T) {
	requireTar2sqfs(t)
	small := layerTar(t, entry{name: "ok", body: "fine"})
	tests := []struct {
		name  string
		layer []byte
		zstd  bool // else gzip
		edit  func(*limits)
		says  []string
	}{
		{"zeros after the tar's end", append(small, make([]byte, 8<<20)...), false,
			func(l *limits) { l.maxLayer = 4 << 20 },
			[]string{"uncompresses to more than 4 MiB, the limit for one layer"}},
		{"a file of zeros", layerTar(t, entry{name: "zeros", body: string(make([]byte, 16<<20))}), false,
			func(l *limits) { l.maxRatio, l.ratioFloor = 100, 1<<20 },
			[]string{"more than the 100 times allowed past the first 1 MiB", "decompression bomb"}},
		{"a zstd file of zeros, at the default ratio", layerTar(t, entry{name: "zeros", body: string(make([]byte, 32<<20))}), true,
			func(l *limits) { l.ratioFloor = 1 << 20 },
			[]string{"more than the 1000 times allowed past the first 1 MiB", "decompression bomb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := testImage(t, nil, small)
			var opts []tarball.LayerOption
			if tt.zstd {
				opts = append(opts, tarball.WithCompression(compression.ZStd))
			}
			layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(tt.layer)), nil
			}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if img, err = mutate.AppendLayers(img, layer); err != nil {
				t.Fatal(err)
			}
			s := newStore(t, nil)
			imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/bomb:v1": img}))
			if err != nil {
				t.Fatal(err)
			}
			rec := mustRecord(t, s, imgs[0].ID)
			// The same image builds under the defaults: the lowered limit
			// is what refuses it.
			tt.edit(&s.limits)
			_, err = s.RootFS(ctx(t), imgs[0])
			wantTooLarge(t, err, append(tt.says, imgs[0].ID, "layer 1 ("+rec.Layers[1].Digest+")")...)
			wantNothingBuilt(t, s)
			s.limits = defaultLimits
			if _, err := s.RootFS(ctx(t), imgs[0]); err != nil {
				t.Errorf("under the default limits: %v", err)
			}
		})
	}
}

// TestRootFSKeepsTheFreeReserve: a build does not start, and stops, when
// the filesystem it writes to gets down to kiln's free-space reserve.
func TestRootFSKeepsTheFreeReserve(t *testing.T) {
	requireTar2sqfs(t)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/app:v1": simpleImage(t, "reserve")}))
	if err != nil {
		t.Fatal(err)
	}
	free, err := statfsFree(s.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int64) { disk.FreeReserve = old }(disk.FreeReserve)
	disk.FreeReserve = free + 1<<40
	_, err = s.RootFS(ctx(t), imgs[0])
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "--disk-reserve") {
		t.Fatalf("RootFS with the reserve above the free space = %v, want ErrUnavailable naming --disk-reserve", err)
	}
	t.Log(err)
	if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// During the build: the guard looks every freeCheckEvery bytes.
	out := &countWriter{}
	room := int64(3 * freeCheckEvery)
	disk.FreeReserve = 1 << 30
	g := &freeGuard{w: out, dir: "/kiln", free: func(string) (int64, error) { return disk.FreeReserve + room, nil }}
	chunk := make([]byte, freeCheckEvery/2)
	var werr error
	for i := 0; i < 20 && werr == nil; i++ {
		room -= int64(len(chunk)) // what the build took
		_, werr = g.Write(chunk)
	}
	if !errors.Is(werr, ErrUnavailable) || !strings.Contains(werr.Error(), "/kiln has") {
		t.Fatalf("guard = %v, want ErrUnavailable naming the directory", werr)
	}
	if out.n > 3*freeCheckEvery+freeCheckEvery {
		t.Errorf("%d bytes passed the guard after the free space ran out", out.n-3*freeCheckEvery)
	}
}

// countWriter counts and drops what is written to it.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
