package tartree

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree makes a small tree: a/f (0640), a/sub/g, a/link -> f, a/hard (a
// hard link to f).
func tree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "a")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("eff"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "sub", "g"), []byte("gee"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	return root
}

func archive(t *testing.T, root, name string, owners bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := Write(tw, root, name, owners); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTripKeepsContentModesAndLinks(t *testing.T) {
	root := tree(t)
	dst := t.TempDir()
	if err := Extract(tar.NewReader(bytes.NewReader(archive(t, root, "a", false))), dst, ""); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"a/f": "eff", "a/sub/g": "gee", "a/link": "eff"} {
		if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
	}
	if st, err := os.Stat(filepath.Join(dst, "a/f")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("a/f mode %v, %v; want 0640", st.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "a/link")); err != nil || l != "f" {
		t.Errorf("a/link -> %q, %v; want f", l, err)
	}
}

func TestOwnersOnlyWhenKept(t *testing.T) {
	root := tree(t)
	uid := os.Getuid()
	for _, keep := range []bool{false, true} {
		tr := tar.NewReader(bytes.NewReader(archive(t, root, "x", keep)))
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			want := 0
			if keep {
				want = uid
			}
			if h.Uid != want || h.Uname != "" {
				t.Errorf("keep=%v: %s has uid %d name %q, want %d and no name", keep, h.Name, h.Uid, h.Uname, want)
			}
		}
	}
}

func TestRenameTakesTheTopEntry(t *testing.T) {
	root := tree(t)
	dst := t.TempDir()
	if err := Extract(tar.NewReader(bytes.NewReader(archive(t, root, "a", false))), dst, "b"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "b/sub/g")); err != nil || string(b) != "gee" {
		t.Errorf("b/sub/g: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "a")); !os.IsNotExist(err) {
		t.Errorf("a was made too: %v", err)
	}
}

// hostile builds an archive from headers with the given bodies.
func hostile(t *testing.T, entries ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = "x"
			h.Size = 1
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

func TestHostileArchivesStayInside(t *testing.T) {
	outside := t.TempDir()
	cases := []struct {
		name    string
		entries []*tar.Header
		wantErr string
	}{
		{"dot-dot is cleaned to inside", []*tar.Header{{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644}}, ""},
		{"absolute is cleaned to inside", []*tar.Header{{Name: filepath.Join(outside, "abs"), Typeflag: tar.TypeReg, Mode: 0o644}}, ""},
		{"through a symlink", []*tar.Header{
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "d/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}, "through the symbolic link"},
		{"hard link through a symlink", []*tar.Header{
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "h", Typeflag: tar.TypeLink, Linkname: "d/secret"},
		}, "through the symbolic link"},
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		dst := t.TempDir()
		err := Extract(tar.NewReader(bytes.NewReader(hostile(t, c.entries...))), dst, "")
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.wantErr)
		}
		ents, _ := os.ReadDir(outside)
		if len(ents) != 1 {
			t.Errorf("%s: something was written outside: %v", c.name, ents)
		}
	}
}
