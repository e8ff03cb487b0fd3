package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// writeDockerArchive writes images as a "docker save" tarball.
func writeDockerArchive(t *testing.T, imgs map[string]v1.Image) string {
	t.Helper()
	refs := map[name.Tag]v1.Image{}
	for tag, img := range imgs {
		nt, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[nt] = img
	}
	p := filepath.Join(t.TempDir(), "images.tar")
	if err := tarball.MultiWriteToFile(p, refs); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeLayout writes an OCI image layout holding img, annotated with ref.
func writeLayout(t *testing.T, img v1.Image, ref string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if ref != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}))
	}
	if err := lp.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarTree packs dir into a tar file (an OCI archive, for a layout).
func tarTree(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "archive.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	one := simpleImage(t, "one")
	two := simpleImage(t, "two")
	oci := mutate.ConfigMediaType(mutate.MediaType(simpleImage(t, "oci"), types.OCIManifestSchema1), types.OCIConfigJSON)
	_, oneID := digestOf(t, one)
	_, twoID := digestOf(t, two)
	_, ociID := digestOf(t, oci)

	tests := []struct {
		name     string
		path     func(t *testing.T) string
		wantIDs  []string
		wantTags []string
	}{
		{
			name: "docker archive",
			path: func(t *testing.T) string {
				return writeDockerArchive(t, map[string]v1.Image{"local/one:v1": one, "local/two:v2": two})
			},
			wantIDs:  []string{oneID, twoID},
			wantTags: []string{"local/one:v1", "local/two:v2"},
		},
		{
			name:     "oci layout",
			path:     func(t *testing.T) string { return "oci:" + writeLayout(t, oci, "local/oci:v3") },
			wantIDs:  []string{ociID},
			wantTags: []string{"local/oci:v3"},
		},
		{
			name:    "oci layout with bare tag",
			path:    func(t *testing.T) string { return "oci:" + writeLayout(t, oci, "latest") },
			wantIDs: []string{ociID},
		},
		{
			name:     "oci archive",
			path:     func(t *testing.T) string { return tarTree(t, writeLayout(t, oci, "local/oci:v3")) },
			wantIDs:  []string{ociID},
			wantTags: []string{"local/oci:v3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, nil)
			imgs, err := s.Load(ctx(t), tt.path(t))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var ids []string
			for _, img := range imgs {
				ids = append(ids, img.ID)
			}
			sort.Strings(ids)
			want := append([]string(nil), tt.wantIDs...)
			sort.Strings(want)
			if strings.Join(ids, ",") != strings.Join(want, ",") {
				t.Errorf("loaded IDs %v, want %v", ids, want)
			}
			for _, tag := range tt.wantTags {
				if _, err := s.Get(tag); err != nil {
					t.Errorf("Get(%q): %v", tag, err)
				}
			}
			if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	notTar := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(notTar, []byte(strings.Repeat("junk", 300)), 0o644)
	emptyTar := filepath.Join(t.TempDir(), "empty.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Size: 0, Mode: 0o644})
	tw.Close()
	os.WriteFile(emptyTar, buf.Bytes(), 0o644)

	tests := []struct {
		name string
		path string
		want error
	}{
		{"missing file", filepath.Join(t.TempDir(), "nope.tar"), ErrNotFound},
		{"not a tar", notTar, ErrInvalidArgument},
		{"tar without image", emptyTar, ErrInvalidArgument},
		{"dir without layout", t.TempDir(), ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, nil)
			if _, err := s.Load(ctx(t), tt.path); !errors.Is(err, tt.want) {
				t.Errorf("Load = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPutBlobVerifies(t *testing.T) {
	content := []byte("the real content of a blob")
	sum := sha256.Sum256(content)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	tests := []struct {
		name string
		body []byte
		size int64
		want error
	}{
		{"good", content, int64(len(content)), nil},
		{"good, size unknown", content, -1, nil},
		{"flipped", append([]byte("T"), content[1:]...), int64(len(content)), ErrCorrupt},
		{"truncated", content[:10], int64(len(content)), ErrCorrupt},
		{"overlong", append(append([]byte(nil), content...), 'x'), int64(len(content)), ErrCorrupt},
		{"wrong size declared", content, 3, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, nil)
			err := s.putBlob(ctx(t), d, tt.size, bytes.NewReader(tt.body), nil)
			if !errors.Is(err, tt.want) && !(tt.want == nil && err == nil) {
				t.Fatalf("putBlob = %v, want %v", err, tt.want)
			}
			if got := s.hasBlob(d, -1); got != (tt.want == nil) {
				t.Errorf("blob stored = %v, want %v", got, tt.want == nil)
			}
			if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		s := newStore(t, nil)
		r := io.MultiReader(bytes.NewReader(content[:5]), errReader{})
		if err := s.putBlob(ctx(t), d, int64(len(content)), r, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("putBlob = %v, want ErrCorrupt", err)
		}
	})
	t.Run("sha512 refused", func(t *testing.T) {
		s := newStore(t, nil)
		if err := s.putBlob(ctx(t), v1.Hash{Algorithm: "sha512", Hex: d.Hex}, -1, bytes.NewReader(content), nil); !errors.Is(err, ErrUnsupported) {
			t.Errorf("putBlob = %v, want ErrUnsupported", err)
		}
	})
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// TestLoadArchiveFromReader loads archives streamed as a daemon receives
// them: no path of the sender's is opened, and the label names the source
// in errors.
func TestLoadArchiveFromReader(t *testing.T) {
	one := simpleImage(t, "one")
	_, oneID := digestOf(t, one)
	s := newStore(t, nil)
	for _, p := range []string{
		writeDockerArchive(t, map[string]v1.Image{"example.test/one:v1": one}),
		tarTree(t, writeLayout(t, one, "example.test/one:v1")),
	} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		imgs, err := s.LoadArchive(ctx(t), f, "app.tar")
		f.Close()
		if err != nil || len(imgs) != 1 || imgs[0].ID != oneID || len(imgs[0].RepoTags) != 1 {
			t.Fatalf("LoadArchive(%s) = %+v, %v; want %s tagged", filepath.Base(p), imgs, err, oneID)
		}
	}
	_, err := s.LoadArchive(ctx(t), strings.NewReader("not a tar"), "junk.tar")
	if !errors.Is(err, ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "loading junk.tar: ") {
		t.Errorf("LoadArchive of junk = %v; want an invalid argument naming junk.tar", err)
	}
	if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
		t.Errorf("LoadArchive left %d temporary files", len(left))
	}
}

// compressFile writes p compressed with kind ("gzip", "zstd") to a new
// file whose name says nothing of it.
func compressFile(t *testing.T, p, kind string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	switch kind {
	case "gzip":
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
	case "zstd":
		zw, _ := zstd.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
	default:
		t.Fatalf("compression %q", kind)
	}
	out := filepath.Join(t.TempDir(), "app.tar")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLoadCompressedArchives: a docker-archive or OCI archive compressed
// with gzip ("docker save | gzip") or zstd loads as the plain one does,
// from a file and from a stream, told by its first bytes and not its
// name; the decompressed copy is not left behind.
func TestLoadCompressedArchives(t *testing.T) {
	one := simpleImage(t, "compressed")
	_, oneID := digestOf(t, one)
	archives := map[string]string{
		"docker-archive": writeDockerArchive(t, map[string]v1.Image{"example.test/one:v1": one}),
		"OCI archive":    tarTree(t, writeLayout(t, one, "example.test/one:v1")),
	}
	for what, plain := range archives {
		for _, kind := range []string{"gzip", "zstd"} {
			t.Run(what+" "+kind, func(t *testing.T) {
				p := compressFile(t, plain, kind)
				s := newStore(t, nil)
				imgs, err := s.Load(ctx(t), p)
				if err != nil || len(imgs) != 1 || imgs[0].ID != oneID || !slices.Equal(imgs[0].RepoTags, []string{"example.test/one:v1"}) {
					t.Fatalf("Load = %+v, %v; want %s tagged example.test/one:v1", imgs, err, oneID)
				}
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				s2 := newStore(t, nil)
				if imgs, err := s2.LoadArchive(ctx(t), f, "app.tar.gz"); err != nil || len(imgs) != 1 || imgs[0].ID != oneID {
					t.Fatalf("LoadArchive = %+v, %v; want %s", imgs, err, oneID)
				}
				for _, st := range []*Store{s, s2} {
					if left, _ := os.ReadDir(st.tmpDir()); len(left) != 0 {
						t.Errorf("temporary files left: %v", left)
					}
				}
			})
		}
	}
}

// TestLoadRefusesCompressedBadly: what decompression could be made to
// cost is bounded as a layer's is, and only one decompression is taken.
func TestLoadRefusesCompressedBadly(t *testing.T) {
	plain := writeDockerArchive(t, map[string]v1.Image{"example.test/one:v1": simpleImage(t, "bad")})
	twice := compressFile(t, compressFile(t, plain, "gzip"), "gzip")
	xz := filepath.Join(t.TempDir(), "app.tar.xz")
	os.WriteFile(xz, []byte("\xfd7zXZ\x00 and the rest"), 0o644)
	var zeros bytes.Buffer
	zw := gzip.NewWriter(&zeros)
	zw.Write(make([]byte, 8<<20))
	zw.Close()
	bomb := filepath.Join(t.TempDir(), "bomb.tar")
	os.WriteFile(bomb, zeros.Bytes(), 0o644)
	truncated := filepath.Join(t.TempDir(), "cut.tar.gz")
	b, _ := os.ReadFile(compressFile(t, plain, "gzip"))
	os.WriteFile(truncated, b[:len(b)/2], 0o644)

	tests := []struct {
		name string
		path string
		want error
		says string
	}{
		{"compressed twice", twice, ErrUnsupported, "archive compressed twice (gzip inside)"},
		{"xz", xz, ErrUnsupported, "xz compression; decompress it first"},
		{"gzip of zeros", bomb, ErrTooLarge, "gzip archive expands to"},
		{"truncated gzip", truncated, ErrInvalidArgument, "decompressing gzip archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, nil)
			s.limits.maxRatio, s.limits.ratioFloor = 100, 1<<20
			_, err := s.Load(ctx(t), tt.path)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Errorf("Load = %v, want %v saying %q", err, tt.want, tt.says)
			}
			if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}
