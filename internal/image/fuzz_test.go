package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"path"
	"strings"
	"testing"
)

// FuzzFlatten feeds arbitrary bytes as two layers. Flattening may fail,
// but must not panic, and whatever it writes must be a tar whose every
// name (and hard link target) is a clean path inside the root, each named
// once, with hard links pointing at names already written.
func FuzzFlatten(f *testing.F) {
	d := byte(tar.TypeDir)
	seeds := [][2][]byte{
		{layerTar(f, entry{name: "a", body: "1"}, entry{name: "d/", typ: d}, entry{name: "d/x", body: "x"}),
			layerTar(f, entry{name: ".wh.a"}, entry{name: "d/.wh..wh..opq"}, entry{name: "d/y", body: "y"})},
		{layerTar(f, entry{name: "evil", typ: tar.TypeSymlink, link: "../../.."}, entry{name: "f", body: "f"}, entry{name: "h", typ: tar.TypeLink, link: "f"}),
			layerTar(f, entry{name: "evil/etc/x", body: "x"}, entry{name: "f", body: "new"})},
		{layerTar(f, entry{name: "../x"}), layerTar(f, entry{name: "/abs/y", body: "y"})},
		{layerTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "/"}, entry{name: "l/l/l/z", body: "z"}), nil},
		{layerTar(f, entry{name: "dev/null", typ: tar.TypeChar, major: 1, minor: 3}), []byte("not a tar at all")},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	lim := defaultLimits
	lim.maxTotal, lim.maxFile, lim.maxEntries = 1<<20, 1<<20, 2000
	f.Fuzz(func(t *testing.T, l1, l2 []byte) {
		var out bytes.Buffer
		err := flatten(context.Background(), memSources(l1, l2), &out, lim, &memSpool{})
		if err != nil {
			return
		}
		seen := map[string]bool{}
		tr := tar.NewReader(&out)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("flatten wrote an unreadable tar: %v", err)
			}
			name := h.Name
			if name != "./" {
				name = strings.TrimSuffix(name, "/")
				if !insideRoot(name) {
					t.Fatalf("entry %q escapes the root", h.Name)
				}
			}
			if seen[name] {
				t.Fatalf("entry %q written twice", name)
			}
			seen[name] = true
			if h.Typeflag == tar.TypeLink && (!insideRoot(h.Linkname) || !seen[h.Linkname]) {
				t.Fatalf("hard link %q -> %q escapes or dangles", h.Name, h.Linkname)
			}
		}
	})
}

// insideRoot reports whether p is a clean, relative path below the root.
func insideRoot(p string) bool {
	return p != "" && p != "." && path.Clean(p) == p && !path.IsAbs(p) &&
		p != ".." && !strings.HasPrefix(p, "../")
}
