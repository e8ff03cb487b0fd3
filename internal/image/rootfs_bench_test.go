package image

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// BenchmarkRootFSFormats measures the candidate root filesystem builders on
// two ~100 MiB sample trees (many small text-like files; a few large files
// half incompressible) and reports build time (ns/op) and image size (MiB).
// Run it with -benchtime 1x; FORMAT.md records the figures. The directory
// builders get a ready-made directory, so their figures leave out the
// extraction they would need in production.
func BenchmarkRootFSFormats(b *testing.B) {
	samples := []struct {
		name string
		gen  func(dir string) error
	}{
		{"small", genSmallTree},
		{"large", genLargeTree},
	}
	type builder struct {
		name, bin, pkg string
		run            func(tarPath, dir, out string) error
	}
	tar2sqfs := func(comp ...string) func(tarPath, dir, out string) error {
		return func(tarPath, _, out string) error {
			args := append([]string{"--quiet", "--force", "--num-jobs", "2"}, comp...)
			return runWithStdin(tarPath, tar2sqfsBinary, append(args, out)...)
		}
	}
	builders := []builder{
		{"tar2sqfs-zstd3", tar2sqfsBinary, tar2sqfsPackage, tar2sqfs("-c", "zstd", "-X", "level=3")},
		{"tar2sqfs-zstd15", tar2sqfsBinary, tar2sqfsPackage, tar2sqfs("-c", "zstd")},
		{"tar2sqfs-lz4", tar2sqfsBinary, tar2sqfsPackage, tar2sqfs("-c", "lz4")},
		{"tar2sqfs-gzip6", tar2sqfsBinary, tar2sqfsPackage, tar2sqfs("-c", "gzip", "-X", "level=6")},
		{"tar2sqfs-xz", tar2sqfsBinary, tar2sqfsPackage, tar2sqfs("-c", "xz")},
		{"mkfs.erofs-lz4hc", "mkfs.erofs", "erofs-utils", func(_, dir, out string) error {
			return run("mkfs.erofs", "--quiet", "-zlz4hc", out, dir)
		}},
		{"mkfs.erofs-plain", "mkfs.erofs", "erofs-utils", func(_, dir, out string) error {
			return run("mkfs.erofs", "--quiet", out, dir)
		}},
		{"mkfs.ext4-d", "mkfs.ext4", "e2fsprogs", func(_, dir, out string) error {
			if err := os.WriteFile(out, nil, 0o644); err != nil {
				return err
			}
			if err := os.Truncate(out, 256<<20); err != nil {
				return err
			}
			return run("mkfs.ext4", "-q", "-F", "-d", dir, out)
		}},
	}
	for _, sm := range samples {
		base := b.TempDir()
		dir := filepath.Join(base, "tree")
		if err := sm.gen(dir); err != nil {
			b.Fatal(err)
		}
		tarPath := filepath.Join(base, "tree.tar")
		if err := tarDir(dir, tarPath); err != nil {
			b.Fatal(err)
		}
		for _, bl := range builders {
			b.Run(sm.name+"/"+bl.name, func(b *testing.B) {
				if _, err := exec.LookPath(bl.bin); err != nil {
					b.Skipf("%s not found: install the Debian package %s", bl.bin, bl.pkg)
				}
				out := filepath.Join(b.TempDir(), "img")
				for range b.N {
					os.Remove(out)
					if err := bl.run(tarPath, dir, out); err != nil {
						b.Fatal(err)
					}
				}
				// Allocated bytes, so ext4's sparse, preset-size image
				// counts only what it uses.
				var st unix.Stat_t
				if err := unix.Stat(out, &st); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(st.Blocks*512)/(1<<20), "MiB")
			})
		}
	}
}

func run(bin string, args ...string) error {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running %s: %w: %s", bin, err, out)
	}
	return nil
}

func runWithStdin(in, bin string, args ...string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("running %s: %w: %s", bin, err, out)
	}
	return nil
}

// words is a fixed vocabulary, so generated text compresses about as well
// as source code or configuration does.
func words(r *rand.Rand) []string {
	w := make([]string, 4096)
	for i := range w {
		n := 2 + r.IntN(9)
		var sb strings.Builder
		for range n {
			sb.WriteByte(byte('a' + r.IntN(26)))
		}
		w[i] = sb.String()
	}
	return w
}

func textBytes(r *rand.Rand, vocab []string, n int) []byte {
	out := make([]byte, 0, n+16)
	for len(out) < n {
		out = append(out, vocab[r.IntN(len(vocab))]...)
		if r.IntN(12) == 0 {
			out = append(out, '\n')
		} else {
			out = append(out, ' ')
		}
	}
	return out[:n]
}

// genSmallTree writes ~100 MiB as 20,000 files of 0.5–9.5 KiB in 200 dirs.
func genSmallTree(dir string) error {
	r := rand.New(rand.NewPCG(1, 2))
	vocab := words(r)
	for i := range 20000 {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i%200))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		n := 512 + r.IntN(9*1024)
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.txt", i)), textBytes(r, vocab, n), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// genLargeTree writes four 25 MiB files, each half random (like compressed
// binaries or assets) and half text.
func genLargeTree(dir string) error {
	r := rand.New(rand.NewPCG(3, 4))
	vocab := words(r)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := range 4 {
		buf := make([]byte, 25<<20)
		half := len(buf) / 2
		for j := 0; j < half; j += 8 {
			v := r.Uint64()
			for k := 0; k < 8 && j+k < half; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		copy(buf[half:], textBytes(r, vocab, len(buf)-half))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("big%d.bin", i)), buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// tarDir writes dir as a tar, entries owned by root, like a flattened
// image stream.
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Name: rel, Mode: int64(info.Mode().Perm()), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if d.IsDir() {
			h.Typeflag, h.Name = tar.TypeDir, rel+"/"
			if rel == "." {
				h.Name = "./"
			}
			return tw.WriteHeader(h)
		}
		h.Typeflag, h.Size = tar.TypeReg, info.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// BenchmarkRootFSBuild measures the production path on the small-file
// sample: decompress and flatten a gzip layer in Go, stream it into
// tar2sqfs. Compare with small/tar2sqfs-zstd3 above for the cost of
// flattening.
func BenchmarkRootFSBuild(b *testing.B) {
	if _, err := exec.LookPath(tar2sqfsBinary); err != nil {
		b.Skipf("%s not found: install the Debian package %s", tar2sqfsBinary, tar2sqfsPackage)
	}
	base := b.TempDir()
	dir := filepath.Join(base, "tree")
	if err := genSmallTree(dir); err != nil {
		b.Fatal(err)
	}
	tarPath := filepath.Join(base, "tree.tar")
	if err := tarDir(dir, tarPath); err != nil {
		b.Fatal(err)
	}
	layer, err := tarball.LayerFromFile(tarPath)
	if err != nil {
		b.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		b.Fatal(err)
	}
	archive := filepath.Join(base, "image.tar")
	if err := tarball.MultiWriteToFile(archive, map[name.Tag]v1.Image{name.MustParseReference("local/bench:v1").(name.Tag): img}); err != nil {
		b.Fatal(err)
	}
	s, err := Open(filepath.Join(base, "root"))
	if err != nil {
		b.Fatal(err)
	}
	imgs, err := s.Load(b.Context(), archive)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var size int64
	for range b.N {
		os.Remove(s.rootfsPath(imgs[0].ID))
		r, err := s.RootFS(b.Context(), imgs[0])
		if err != nil {
			b.Fatal(err)
		}
		size = r.Size
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB")
}
