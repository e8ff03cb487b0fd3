//go:build linux

package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// firstUse copies the target's tree into a new data directory with owners,
// modes and links, and the directory takes the target's owner and mode.
func TestFirstUseCopiesTheImagesDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files other owners")
	}
	base := t.TempDir()
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o750))
	must(t, os.Chown(target, 1000, 1001))
	must(t, os.Chmod(target, os.ModeSetgid|0o750)) // after chown, which clears setgid
	must(t, os.WriteFile(filepath.Join(target, "seed"), []byte("seed\n"), 0o640))
	must(t, os.Chown(filepath.Join(target, "seed"), 1000, 1000))
	must(t, os.Mkdir(filepath.Join(target, "sub"), 0o700))
	must(t, os.Symlink("../seed", filepath.Join(target, "sub", "link")))
	must(t, unix.Mkfifo(filepath.Join(target, "fifo"), 0o600))

	data := filepath.Join(base, "vol", "data")
	must(t, os.Mkdir(filepath.Dir(data), 0o700))
	must(t, firstUse(target, data))

	checkOwner(t, data, 1000, 1001, os.ModeDir|os.ModeSetgid|0o750)
	checkOwner(t, filepath.Join(data, "seed"), 1000, 1000, 0o640)
	// sub inherited the group and setgid of its parent in the image.
	checkOwner(t, filepath.Join(data, "sub"), 0, 1001, os.ModeDir|os.ModeSetgid|0o700)
	if b, err := os.ReadFile(filepath.Join(data, "seed")); err != nil || string(b) != "seed\n" {
		t.Errorf("seed: %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(data, "sub", "link")); err != nil || l != "../seed" {
		t.Errorf("link: %q, %v", l, err)
	}
	if st, err := os.Lstat(filepath.Join(data, "fifo")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v, %v", st, err)
	}
	if _, err := os.Stat(data + ".new"); !os.IsNotExist(err) {
		t.Errorf("the temporary copy is left: %v", err)
	}

	// No such directory in the root: an empty one, root's, 0755.
	empty := filepath.Join(base, "vol", "empty")
	must(t, firstUse(filepath.Join(base, "missing"), empty))
	checkOwner(t, empty, 0, 0, os.ModeDir|0o755)
}

func checkOwner(t *testing.T, p string, uid, gid uint32, mode os.FileMode) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Lstat(p)
	if st.Uid != uid || st.Gid != gid || fi.Mode() != mode {
		t.Errorf("%s: %d:%d %v, want %d:%d %v", p, st.Uid, st.Gid, fi.Mode(), uid, gid, mode)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
