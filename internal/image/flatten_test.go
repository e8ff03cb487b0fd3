package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// flatEntry is one name of a flattened tree. A hard link carries its
// target's header and body, and linkTo names the target.
type flatEntry struct {
	hdr    *tar.Header
	body   string
	linkTo string
}

// memSources serves in-memory layer tars.
func memSources(tars ...[]byte) []layerSource {
	out := make([]layerSource, len(tars))
	for i, b := range tars {
		out[i] = layerSource{name: "mem", open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}}
	}
	return out
}

// readTar indexes a tar by cleaned name ("." for the root).
func readTar(t testing.TB, r io.Reader) map[string]flatEntry {
	t.Helper()
	m := map[string]flatEntry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatalf("reading flattened tar: %v", err)
		}
		b, _ := io.ReadAll(tr)
		n := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if n == "" || n == "." {
			n = "."
		}
		if _, dup := m[n]; dup {
			t.Errorf("duplicate entry %q in flattened tar", n)
		}
		if h.Typeflag == tar.TypeLink {
			target := strings.TrimPrefix(h.Linkname, "./")
			e, ok := m[target]
			if !ok {
				t.Errorf("hard link %q to %q, which is not (yet) in the tar", n, target)
				continue
			}
			hh := *e.hdr
			hh.Name = h.Name
			m[n] = flatEntry{hdr: &hh, body: e.body, linkTo: target}
			continue
		}
		m[n] = flatEntry{hdr: h, body: string(b)}
	}
}

func flattenTars(t testing.TB, lim limits, tars ...[]byte) (map[string]flatEntry, error) {
	t.Helper()
	var out bytes.Buffer
	if err := flatten(context.Background(), memSources(tars...), &out, lim, &memSpool{}); err != nil {
		return nil, err
	}
	return readTar(t, &out), nil
}

func TestFlatten(t *testing.T) {
	d := byte(tar.TypeDir)
	tests := []struct {
		name   string
		layers [][]entry
		check  func(t *testing.T, m map[string]flatEntry)
	}{
		{
			name:   "later layer wins",
			layers: [][]entry{{{name: "a", body: "1"}}, {{name: "a", body: "2"}}},
			check:  func(t *testing.T, m map[string]flatEntry) { wantBody(t, m, "a", "2") },
		},
		{
			name: "whiteout file and nested file",
			layers: [][]entry{
				{{name: "a", body: "a"}, {name: "b/", typ: d}, {name: "b/c", body: "c"}, {name: "b/keep", body: "k"}},
				{{name: ".wh.a"}, {name: "b/.wh.c"}, {name: ".wh.never-existed"}},
			},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantAbsent(t, m, "a", "b/c", ".wh.a", "b/.wh.c", ".wh.never-existed")
				wantBody(t, m, "b/keep", "k")
			},
		},
		{
			name: "whiteout directory",
			layers: [][]entry{
				{{name: "d/", typ: d}, {name: "d/x", body: "x"}, {name: "d/sub/y", body: "y"}},
				{{name: ".wh.d"}},
			},
			check: func(t *testing.T, m map[string]flatEntry) { wantAbsent(t, m, "d", "d/x", "d/sub", "d/sub/y") },
		},
		{
			name: "opaque directory",
			layers: [][]entry{
				{{name: "d/", typ: d}, {name: "d/x", body: "x"}, {name: "d/sub/old", body: "o"}},
				{{name: "d/z", body: "z"}, {name: "d/.wh..wh..opq"}, {name: "d/sub/new", body: "n"}},
			},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantAbsent(t, m, "d/x", "d/sub/old", "d/.wh..wh..opq")
				wantBody(t, m, "d/z", "z")
				wantBody(t, m, "d/sub/new", "n")
			},
		},
		{
			name:   "whiteout does not hide its own layer",
			layers: [][]entry{{{name: "x", body: "1"}, {name: ".wh.x"}}},
			check:  func(t *testing.T, m map[string]flatEntry) { wantBody(t, m, "x", "1") },
		},
		{
			name: "hard link",
			layers: [][]entry{{
				{name: "f", body: "data", uid: 5},
				{name: "h", typ: tar.TypeLink, link: "f"},
				{name: "/abs", typ: tar.TypeLink, link: "/f"},
			}},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantBody(t, m, "f", "data")
				for _, n := range []string{"h", "abs"} {
					wantHdr(t, m, n, tar.TypeReg, 0o644, 5, 0)
					if m[n].linkTo != "f" {
						t.Errorf("%s links to %q, want f (the name the content was given)", n, m[n].linkTo)
					}
				}
			},
		},
		{
			name: "hard link outlives its replaced target",
			layers: [][]entry{
				{{name: "f", body: "old"}, {name: "h", typ: tar.TypeLink, link: "f"}, {name: "g", body: "g"}, {name: "k", typ: tar.TypeLink, link: "g"}},
				{{name: "f", body: "new"}, {name: ".wh.g"}},
			},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantBody(t, m, "f", "new")
				wantBody(t, m, "h", "old")
				wantBody(t, m, "k", "g")
				wantAbsent(t, m, "g")
			},
		},
		{
			name: "symlinks kept and written through inside the root",
			layers: [][]entry{
				{
					{name: "usr/lib/", typ: d},
					{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
					{name: "evil", typ: tar.TypeSymlink, link: "../../../../../"},
					{name: "abs", typ: tar.TypeSymlink, link: "/opt/data"},
				},
				{
					{name: "lib/x.so", body: "so"},
					{name: "evil/etc/passwd", body: "root:x:0:0"},
					{name: "abs/file", body: "dangling target created inside"},
				},
			},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantBody(t, m, "usr/lib/x.so", "so")
				wantBody(t, m, "etc/passwd", "root:x:0:0")
				wantBody(t, m, "opt/data/file", "dangling target created inside")
				for n, target := range map[string]string{"lib": "usr/lib", "evil": "../../../../../", "abs": "/opt/data"} {
					if e := m[n]; e.hdr == nil || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != target {
						t.Errorf("%s is not a symlink to %s", n, target)
					}
				}
			},
		},
		{
			name: "ownership, setuid, devices, xattrs",
			layers: [][]entry{{
				{name: "bin/su", body: "su", mode: 0o4755},
				{name: "tmp/", typ: d, mode: 0o1777},
				{name: "home/u/", typ: d, mode: 0o700, uid: 1000, gid: 1001},
				{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
				{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
				{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
				{name: "bin/ping", body: "ping", mode: 0o755, xattrs: map[string]string{
					"security.capability":     "\x01\x00\x00\x02\x00\x20\x00\x00",
					"user.note":               "hi",
					"system.posix_acl_access": "dropped",
				}},
			}},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantHdr(t, m, "bin/su", tar.TypeReg, 0o4755, 0, 0)
				wantHdr(t, m, "tmp", tar.TypeDir, 0o1777, 0, 0)
				wantHdr(t, m, "home/u", tar.TypeDir, 0o700, 1000, 1001)
				wantHdr(t, m, "home", tar.TypeDir, 0o755, 0, 0) // implicit parent
				wantHdr(t, m, "dev/null", tar.TypeChar, 0o666, 0, 0)
				wantHdr(t, m, "dev/sda", tar.TypeBlock, 0o660, 0, 6)
				wantHdr(t, m, "run/fifo", tar.TypeFifo, 0o600, 0, 0)
				if h := m["dev/null"].hdr; h.Devmajor != 1 || h.Devminor != 3 {
					t.Errorf("dev/null is %d:%d, want 1:3", h.Devmajor, h.Devminor)
				}
				px := m["bin/ping"].hdr.PAXRecords
				if px["SCHILY.xattr.security.capability"] != "\x01\x00\x00\x02\x00\x20\x00\x00" || px["SCHILY.xattr.user.note"] != "hi" {
					t.Errorf("xattrs = %q", px)
				}
				if _, ok := px["SCHILY.xattr.system.posix_acl_access"]; ok {
					t.Error("system.* xattr kept; squashfs cannot store it")
				}
			},
		},
		{
			name: "type clash within one layer: later entry wins",
			layers: [][]entry{{
				{name: "a", body: "file"}, {name: "a/", typ: d}, {name: "a/b", body: "b"},
				{name: "c/", typ: d}, {name: "c/d", body: "d"}, {name: "c", body: "now a file"},
			}},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantHdr(t, m, "a", tar.TypeDir, 0o755, 0, 0)
				wantBody(t, m, "a/b", "b")
				wantBody(t, m, "c", "now a file")
				wantAbsent(t, m, "c/d")
			},
		},
		{
			name: "directory over directory merges",
			layers: [][]entry{
				{{name: "./", typ: d, mode: 0o755}, {name: "d/", typ: d, mode: 0o755}, {name: "d/x", body: "x"}},
				{{name: "./", typ: d, mode: 0o700}, {name: "/d/", typ: d, mode: 0o750, uid: 7}},
			},
			check: func(t *testing.T, m map[string]flatEntry) {
				wantHdr(t, m, ".", tar.TypeDir, 0o700, 0, 0)
				wantHdr(t, m, "d", tar.TypeDir, 0o750, 7, 0)
				wantBody(t, m, "d/x", "x")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tars [][]byte
			for _, l := range tt.layers {
				tars = append(tars, layerTar(t, l...))
			}
			m, err := flattenTars(t, defaultLimits, tars...)
			if err != nil {
				t.Fatalf("flatten: %v", err)
			}
			tt.check(t, m)
		})
	}
}

func wantBody(t *testing.T, m map[string]flatEntry, name, body string) {
	t.Helper()
	e, ok := m[name]
	if !ok {
		t.Errorf("%s missing", name)
		return
	}
	if e.hdr.Typeflag != tar.TypeReg || e.body != body {
		t.Errorf("%s = type %q body %q, want a file with %q", name, e.hdr.Typeflag, e.body, body)
	}
}

func wantAbsent(t *testing.T, m map[string]flatEntry, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, ok := m[n]; ok {
			t.Errorf("%s present, want it gone", n)
		}
	}
}

func wantHdr(t *testing.T, m map[string]flatEntry, name string, typ byte, mode int64, uid, gid int) {
	t.Helper()
	e, ok := m[name]
	if !ok {
		t.Errorf("%s missing", name)
		return
	}
	h := e.hdr
	if h.Typeflag != typ || h.Mode&0o7777 != mode || h.Uid != uid || h.Gid != gid {
		t.Errorf("%s = type %q mode %o owner %d:%d; want %q %o %d:%d", name, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, typ, mode, uid, gid)
	}
}

func TestFlattenRejects(t *testing.T) {
	small := defaultLimits
	small.maxFile, small.maxTotal, small.maxEntries = 1024, 4096, 50
	truncated := layerTar(t, entry{name: "big", body: strings.Repeat("x", 3000)})
	truncated = truncated[:1500]
	many := make([]entry, 60)
	for i := range many {
		many[i] = entry{name: strings.Repeat("n", i+1)}
	}
	tests := []struct {
		name   string
		layers [][]byte
		lim    limits
		want   error
		entry  string // the error must name it
	}{
		{"dotdot", [][]byte{layerTar(t, entry{name: "../escape", body: "x"})}, defaultLimits, ErrInvalidArgument, "../escape"},
		{"dotdot inside", [][]byte{layerTar(t, entry{name: "a/../../escape", body: "x"})}, defaultLimits, ErrInvalidArgument, "a/../../escape"},
		{"hard link escaping", [][]byte{layerTar(t, entry{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"})}, defaultLimits, ErrInvalidArgument, "h"},
		{"hard link to nothing", [][]byte{layerTar(t, entry{name: "h", typ: tar.TypeLink, link: "missing"})}, defaultLimits, ErrInvalidArgument, "h"},
		{"hard link to dir", [][]byte{layerTar(t, entry{name: "d/", typ: tar.TypeDir}, entry{name: "h", typ: tar.TypeLink, link: "d"})}, defaultLimits, ErrInvalidArgument, "h"},
		{"symlink loop", [][]byte{layerTar(t,
			entry{name: "a", typ: tar.TypeSymlink, link: "b"},
			entry{name: "b", typ: tar.TypeSymlink, link: "a"},
			entry{name: "a/x", body: "x"})}, defaultLimits, ErrInvalidArgument, "a/x"},
		{"empty symlink", [][]byte{layerTar(t, entry{name: "s", typ: tar.TypeSymlink})}, defaultLimits, ErrInvalidArgument, "s"},
		{"parent is a file", [][]byte{layerTar(t, entry{name: "f", body: "x"}, entry{name: "f/x", body: "y"})}, defaultLimits, ErrInvalidArgument, "f/x"},
		{"root is a file", [][]byte{layerTar(t, entry{name: ".", body: "x"})}, defaultLimits, ErrInvalidArgument, "root"},
		{"long component", [][]byte{layerTar(t, entry{name: strings.Repeat("a", 256), body: "x"})}, defaultLimits, ErrInvalidArgument, "aaaa"},
		{"file over limit", [][]byte{layerTar(t, entry{name: "big", body: strings.Repeat("x", 2000)})}, small, ErrInvalidArgument, "big"},
		{"total over limit", [][]byte{
			layerTar(t, entry{name: "a", body: strings.Repeat("x", 1000)}, entry{name: "b", body: strings.Repeat("x", 1000)}),
			layerTar(t, entry{name: "c", body: strings.Repeat("x", 1000)}, entry{name: "d", body: strings.Repeat("x", 1000)}, entry{name: "e", body: strings.Repeat("x", 1000)}),
		}, small, ErrInvalidArgument, "e"},
		{"too many entries", [][]byte{layerTar(t, many...)}, small, ErrInvalidArgument, strings.Repeat("n", 51)},
		{"size beyond the stream", [][]byte{truncated}, defaultLimits, ErrCorrupt, "big"},
		{"not a tar", [][]byte{bytes.Repeat([]byte("garbage!"), 200)}, defaultLimits, ErrCorrupt, "start of layer"},
		{"unknown entry type", [][]byte{rawTar(t, &tar.Header{Name: "vol", Typeflag: 'V', Format: tar.FormatGNU})}, defaultLimits, ErrUnsupported, "vol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := flattenTars(t, tt.lim, tt.layers...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("flatten = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.entry) {
				t.Errorf("error %q does not name %q", err, tt.entry)
			}
		})
	}
}

// rawTar writes headers with archive/tar, without the test helper's
// defaults.
func rawTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("writing %q: %v", h.Name, err)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// TestRootFSContent builds a real squashfs and reads it back with sqfs2tar,
// so what the guest will see (owners, modes, devices, xattrs, links,
// whiteouts) is checked end to end.
func TestRootFSContent(t *testing.T) {
	requireTar2sqfs(t)
	d := byte(tar.TypeDir)
	l1 := layerTar(t,
		entry{name: "./", typ: d, mode: 0o755},
		entry{name: "bin/", typ: d},
		entry{name: "bin/su", body: "su", mode: 0o4755},
		entry{name: "bin/ping", body: "ping", mode: 0o755, xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		entry{name: "bin/sh-link", typ: tar.TypeLink, link: "bin/su"},
		entry{name: "home/u/", typ: d, mode: 0o700, uid: 1000, gid: 1000},
		entry{name: "home/u/.profile", body: "export A=1\n", uid: 1000, gid: 1000},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		entry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		entry{name: "usr/lib/", typ: d},
		entry{name: "gone", body: "x"},
		entry{name: "opq/old", body: "x"},
	)
	l2 := layerTar(t,
		entry{name: ".wh.gone"},
		entry{name: "opq/.wh..wh..opq"},
		entry{name: "opq/new", body: "n"},
		entry{name: "lib/libc.so", body: "elf"},
	)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/content:v1": testImage(t, nil, l1, l2)}))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := s.RootFS(ctx(t), imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sqfs2tar", fs.Path).Output()
	if err != nil {
		t.Fatalf("sqfs2tar: %v", err)
	}
	m := readTar(t, bytes.NewReader(out))
	wantHdr(t, m, "bin/su", tar.TypeReg, 0o4755, 0, 0)
	wantHdr(t, m, "home/u", tar.TypeDir, 0o700, 1000, 1000)
	wantHdr(t, m, "home/u/.profile", tar.TypeReg, 0o644, 1000, 1000)
	wantHdr(t, m, "dev/null", tar.TypeChar, 0o666, 0, 0)
	if h := m["dev/null"].hdr; h != nil && (h.Devmajor != 1 || h.Devminor != 3) {
		t.Errorf("dev/null is %d:%d, want 1:3", h.Devmajor, h.Devminor)
	}
	if h := m["lib"].hdr; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "usr/lib" {
		t.Errorf("lib = %+v, want symlink to usr/lib", h)
	}
	wantBody(t, m, "usr/lib/libc.so", "elf")
	wantBody(t, m, "opq/new", "n")
	wantAbsent(t, m, "gone", "opq/old", ".wh.gone", "opq/.wh..wh..opq")
	// squashfs keeps no "first" name, so either may be the link.
	if a, b := m["bin/sh-link"], m["bin/su"]; a.linkTo != "bin/su" && b.linkTo != "bin/sh-link" {
		t.Errorf("bin/sh-link and bin/su are not hard linked: %q, %q", a.linkTo, b.linkTo)
	}
	wantHdr(t, m, "bin/sh-link", tar.TypeReg, 0o4755, 0, 0)
	if cap := m["bin/ping"].hdr.PAXRecords["SCHILY.xattr.security.capability"]; len(cap) != 20 {
		t.Errorf("bin/ping capability xattr = %q, want 20 bytes", cap)
	}
}

// wantNothingBuilt checks that a failed build left no root filesystem, no
// temporary file and no count behind.
func wantNothingBuilt(t *testing.T, s *Store) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(s.rootfsDir(), "*"+rootfsExt)); len(m) != 0 {
		t.Errorf("rootfs left behind: %v", m)
	}
	if left, _ := os.ReadDir(s.tmpDir()); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if s.builds.Load() != 0 {
		t.Error("failed build counted")
	}
}

func TestRootFSFailureLeavesNothing(t *testing.T) {
	requireTar2sqfs(t)
	bad := testImage(t, nil,
		layerTar(t, entry{name: "ok", body: strings.Repeat("fine ", 10000)}),
		layerTar(t, entry{name: "../../escape", body: "x"}),
	)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/bad:v1": bad}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.RootFS(ctx(t), imgs[0])
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "../../escape") {
		t.Fatalf("RootFS = %v, want ErrInvalidArgument naming the entry", err)
	}
	wantNothingBuilt(t, s)
}

func TestRootFSDetectsDamagedBlob(t *testing.T) {
	requireTar2sqfs(t)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeDockerArchive(t, map[string]v1.Image{"local/app:v1": simpleImage(t, "damaged")}))
	if err != nil {
		t.Fatal(err)
	}
	rec := mustRecord(t, s, imgs[0].ID)
	p := filepath.Join(s.blobDir(), hexOf(rec.Layers[0].Digest))
	b, _ := os.ReadFile(p)
	b[len(b)-5] ^= 0xff // inside the gzip trailer: decompresses, wrong digest
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RootFS(ctx(t), imgs[0]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("RootFS over a damaged blob = %v, want ErrCorrupt", err)
	}
}

// TestRootFSRefusesWrongDiffID: a layer whose uncompressed content is not
// what the config's diff ID says is refused while it is read, the only
// time it is decompressed, with a message naming the layer; the build
// leaves nothing behind.
func TestRootFSRefusesWrongDiffID(t *testing.T) {
	requireTar2sqfs(t)
	wrong := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	img := testImage(t, func(cf *v1.ConfigFile) { cf.RootFS.DiffIDs[1] = wrong },
		layerTar(t, entry{name: "ok", body: "fine"}),
		layerTar(t, entry{name: "app", body: strings.Repeat("not what the config says ", 1000)}),
	)
	s := newStore(t, nil)
	imgs, err := s.Load(ctx(t), writeLayout(t, img, "local/wrong:v1"))
	if err != nil {
		t.Fatal(err)
	}
	rec := mustRecord(t, s, imgs[0].ID)
	_, err = s.RootFS(ctx(t), imgs[0])
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("RootFS = %v, want ErrCorrupt", err)
	}
	for _, want := range []string{"layer 1 (" + rec.Layers[1].Digest + ")", "config says " + wrong.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("RootFS = %v, want it to say %q", err, want)
		}
	}
	t.Log(err)
	wantNothingBuilt(t, s)
}
