package image

import (
	"archive/tar"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestResolve(t *testing.T) {
	a := "sha256:aaaa1" + strings.Repeat("0", 59)
	b := "sha256:aaaa2" + strings.Repeat("0", 59)
	c := "sha256:c" + strings.Repeat("1", 63)
	manifestC := "sha256:d" + strings.Repeat("2", 63)
	idx := &index{
		Images: map[string]*record{
			a: {ID: a},
			b: {ID: b},
			c: {ID: c, Manifest: manifestC, RepoDigests: []string{"127.0.0.1:5000/app@" + manifestC}},
		},
		// "aaaa" as a reference, canonicalised by the library, without
		// spelling out the default registry here.
		Tags: map[string]string{"127.0.0.1:5000/app:v1": c, name.MustParseReference("aaaa").Name(): b},
	}
	tests := []struct {
		ref     string
		want    string
		wantErr error
	}{
		{a, a, nil},
		{hexOf(a), a, nil},
		{"aaaa1", a, nil},
		{"sha256:aaaa2", b, nil},
		{"aaaa", b, nil}, // a tag wins over an ID prefix, as in docker
		{"aaa", "", ErrAmbiguous},
		{"c1", c, nil},
		{manifestC, c, nil},
		{"127.0.0.1:5000/app:v1", c, nil},
		{"127.0.0.1:5000/app@" + manifestC, c, nil},
		{"127.0.0.1:5000/app:v2", "", ErrNotFound},
		{"e", "", ErrNotFound},
		{"", "", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			r, err := idx.resolve(tt.ref)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("resolve = %v, want %v", err, tt.wantErr)
			}
			if err == nil && r.ID != tt.want {
				t.Errorf("resolve = %s, want %s", r.ID, tt.want)
			}
		})
	}
	if !errors.Is(ErrAmbiguous, ErrInvalidArgument) {
		t.Error("ErrAmbiguous should be an ErrInvalidArgument")
	}
}

func TestRemoveAndPrune(t *testing.T) {
	base := layerTar(t, entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/os-release", body: "ID=kiln\n"})
	imgA := testImage(t, nil, base, layerTar(t, entry{name: "a", body: "only in a"}))
	imgB := testImage(t, nil, base, layerTar(t, entry{name: "b", body: "only in b"}))
	s := newStore(t, nil)
	loaded, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{
		"local/a:v1": imgA, "local/a:also": imgA, "local/b:v1": imgB,
	}))
	if err != nil || len(loaded) != 2 {
		t.Fatalf("Load = %v, %v", loaded, err)
	}
	la, _ := imgA.Layers()
	uniqueA, _ := la[1].Digest()
	shared, _ := la[0].Digest()

	if freed, err := s.Prune(); err != nil || freed != 0 {
		t.Fatalf("Prune with everything referenced = %d, %v; want 0", freed, err)
	}
	// Removing one of two tags keeps the image.
	if err := s.Remove("local/a:also"); err != nil {
		t.Fatal(err)
	}
	a, err := s.Get("local/a:v1")
	if err != nil || len(a.RepoTags) != 1 {
		t.Fatalf("after untag: %+v, %v", a, err)
	}
	// Removing the last tag removes the image.
	if err := s.Remove("local/a:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(removed) = %v, want ErrNotFound", err)
	}
	if err := s.Remove("local/a:v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove twice = %v, want ErrNotFound", err)
	}
	freed, err := s.Prune()
	if err != nil || freed <= 0 {
		t.Fatalf("Prune = %d, %v; want bytes freed", freed, err)
	}
	if s.hasBlob(uniqueA, -1) {
		t.Error("layer only image a used survived Prune")
	}
	if !s.hasBlob(shared, -1) {
		t.Error("layer image b still uses was pruned")
	}
	b, err := s.Get("local/b:v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.v1Image(mustRecord(t, s, b.ID)); err != nil {
		t.Errorf("image b unreadable after Prune: %v", err)
	}
	// Removing by ID prefix drops the image and all its tags.
	if err := s.Remove(hexOf(b.ID)[:10]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	if blobs, _ := os.ReadDir(s.blobDir()); len(blobs) != 0 {
		t.Errorf("blobs left after removing everything: %v", blobs)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("List = %v, want empty", list)
	}
}

func mustRecord(t *testing.T, s *Store, id string) *record {
	t.Helper()
	idx, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	r, ok := idx.Images[id]
	if !ok {
		t.Fatalf("no record %s", id)
	}
	return r
}

func requireTar2sqfs(t *testing.T) {
	t.Helper()
	for _, bin := range []string{tar2sqfsBinary, "sqfs2tar"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: install the Debian package %s", bin, tar2sqfsPackage)
		}
	}
}

func TestRootFSBuiltOnce(t *testing.T) {
	requireTar2sqfs(t)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/app:v1": simpleImage(t, "once")}))
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.RootFS(ctx(t), imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if first.FSType != FSTypeSquashfs || first.Size <= 0 {
		t.Errorf("RootFS = %+v", first)
	}
	st1 := statT(t, first.Path)
	if st1.Mode&0o222 != 0 {
		t.Errorf("rootfs mode %o is writable", st1.Mode&0o777)
	}
	second, err := s.RootFS(ctx(t), imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	st2 := statT(t, second.Path)
	if n := s.builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	if st1.Ino != st2.Ino || st1.Mtim != st2.Mtim || first != second {
		t.Errorf("second RootFS is a different file: %+v vs %+v", first, second)
	}
	// Another Store on the same root (another process) reuses it too.
	other, err := Open(s.root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.RootFS(ctx(t), imgs[0]); err != nil || other.builds.Load() != 0 {
		t.Errorf("second store rebuilt: builds=%d err=%v", other.builds.Load(), err)
	}
	// Prune keeps it while the image exists, frees it once it is gone.
	if _, err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first.Path); err != nil {
		t.Errorf("Prune removed a used rootfs: %v", err)
	}
	if err := s.Remove(imgs[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rootfs of a removed image survived Prune: %v", err)
	}
}

func statT(t *testing.T, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTar2sqfsArgs(t *testing.T) {
	got := strings.Join(tar2sqfsArgs("/x/y.sqfs", 2), " ")
	want := "--quiet --no-skip --force --compressor zstd --comp-extra level=3 --block-size 131072 --num-jobs 2 --defaults uid=0,gid=0,mode=0755 /x/y.sqfs"
	if got != want {
		t.Errorf("tar2sqfsArgs =\n%s\nwant\n%s", got, want)
	}
}

func TestTag(t *testing.T) {
	imgA := testImage(t, nil, layerTar(t, entry{name: "a", body: "a"}))
	imgB := testImage(t, nil, layerTar(t, entry{name: "b", body: "b"}))
	s := newStore(t, nil)
	if _, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/a:v1": imgA, "local/b:v1": imgB})); err != nil {
		t.Fatal(err)
	}
	a, err := s.Tag("local/a:v1", "local/renamed")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get("local/renamed:latest"); err != nil || got.ID != a.ID || len(got.RepoTags) != 2 {
		t.Errorf("the new tag: %+v, %v", got, err)
	}
	// A tag that named another image moves.
	if _, err := s.Tag("local/b:v1", "local/renamed"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("local/renamed"); got == nil || got.ID == a.ID {
		t.Errorf("local/renamed after moving it: %+v", got)
	}
	if _, err := s.Tag("local/none:v1", "local/x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tagging a missing image: %v, want ErrNotFound", err)
	}
	if _, err := s.Tag("local/a:v1", "Bad Tag!"); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "Bad Tag!") {
		t.Errorf("an invalid tag: %v, want an invalid-argument error naming it", err)
	}
}
