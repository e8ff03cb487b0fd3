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
	if err := Extract(tar.NewReader(bytes.NewReader(archive(t, root, "a", false))), dst, "a", ""); err != nil {
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
	if err := Extract(tar.NewReader(bytes.NewReader(archive(t, root, "a", false))), dst, "a", "b"); err != nil {
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
		top     string
		entries []*tar.Header
		// pre makes what dst holds before the extraction.
		pre     func(dst string)
		wantErr string
	}{
		{name: "dot-dot is cleaned to inside", entries: []*tar.Header{{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{name: "absolute is cleaned to inside", entries: []*tar.Header{{Name: filepath.Join(outside, "abs"), Typeflag: tar.TypeReg, Mode: 0o644}}},
		{name: "through a symlink", entries: []*tar.Header{
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "d/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}, wantErr: "through a symbolic link"},
		{name: "hard link through a symlink", entries: []*tar.Header{
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "h", Typeflag: tar.TypeLink, Linkname: "d/secret"},
		}, wantErr: "through a symbolic link"},
		{name: "directory entry over a symlink", entries: []*tar.Header{
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "d/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}, wantErr: "through a symbolic link"},
		{name: "through a symlink already in the destination", top: "app.log",
			pre:     func(dst string) { os.Symlink(outside, filepath.Join(dst, "app.log")) },
			entries: []*tar.Header{{Name: "app.log/evil", Typeflag: tar.TypeReg, Mode: 0o644}},
			wantErr: "through a symbolic link"},
		{name: "a file replaces a symlink, not its target", top: "app.log",
			pre:     func(dst string) { os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dst, "app.log")) },
			entries: []*tar.Header{{Name: "app.log", Typeflag: tar.TypeReg, Mode: 0o644}}},
		// kiln cp web:/var/log/app.log . run in a home directory: the
		// guest answers with more than app.log.
		{name: "an entry beside what was asked for", top: "app.log",
			entries: []*tar.Header{
				{Name: "app.log", Typeflag: tar.TypeReg, Mode: 0o644},
				{Name: ".ssh/authorized_keys", Typeflag: tar.TypeReg, Mode: 0o600},
			}, wantErr: `refusing archive entry ".ssh/authorized_keys": not under "app.log"`},
		{name: "a name that only starts like what was asked for", top: "app",
			entries: []*tar.Header{{Name: "app.log", Typeflag: tar.TypeReg, Mode: 0o644}},
			wantErr: "not under"},
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := t.TempDir()
			if c.pre != nil {
				c.pre(dst)
			}
			err := Extract(tar.NewReader(bytes.NewReader(hostile(t, c.entries...))), dst, c.top, "")
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("err = %v, want %q", err, c.wantErr)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("something was written outside: %v", ents)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "s" {
				t.Errorf("the file outside was changed: %q", b)
			}
			if _, err := os.Stat(filepath.Join(dst, ".ssh")); err == nil {
				t.Error("an entry beside what was asked for was extracted")
			}
		})
	}
}
