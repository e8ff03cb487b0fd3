package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

func TestExt4Args(t *testing.T) {
	want := []string{"-q", "-F", "-m", "0", "-L", "kiln-disk", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", "/vms/a/disk.ext4"}
	if got := Ext4Args("/vms/a/disk.ext4", "kiln-disk"); !slices.Equal(got, want) {
		t.Errorf("Ext4Args = %q, want %q", got, want)
	}
}

func TestMakeExt4IsSparse(t *testing.T) {
	if _, err := FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skipf("%v: run scripts/setup", err)
	}
	p := filepath.Join(t.TempDir(), "disk.ext4")
	if err := MakeExt4(context.Background(), p, 10<<10, "kiln-test"); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 10<<30 {
		t.Errorf("size %d, want 10 GiB", st.Size)
	}
	if used := st.Blocks * 512; used > 64<<20 {
		t.Errorf("a fresh 10 GiB disk takes %d MiB on the host; want it sparse", used>>20)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	if magic := binary.LittleEndian.Uint16(sb[0x38:]); magic != 0xEF53 {
		t.Errorf("no ext4 superblock magic: %#x", magic)
	}
	if label := string(sb[0x78 : 0x78+9]); label != "kiln-test" {
		t.Errorf("label %q, want kiln-test", label)
	}
	// An existing file is never overwritten.
	if err := MakeExt4(context.Background(), p, 64, "other"); err == nil {
		t.Error("MakeExt4 overwrote an existing disk")
	}
}

func TestFindToolNamesThePackage(t *testing.T) {
	_, err := FindTool("kiln-no-such-tool", "kiln-no-such-package")
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if got := err.Error(); got != "kiln-no-such-tool not found (install the Debian package kiln-no-such-package): "+errdefs.ErrUnavailable.Error() {
		t.Errorf("error %q does not name the tool and its package", got)
	}
}

// A disk is not made while its filesystem has less than the reserve free,
// and nothing is left of it.
func TestMakeExt4KeepsTheFreeReserve(t *testing.T) {
	if _, err := FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	defer func(r int64) { FreeReserve = r }(FreeReserve)
	FreeReserve = 1 << 62
	p := filepath.Join(dir, "disk.ext4")
	err := MakeExt4(context.Background(), p, 64, "kiln-disk")
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "--disk-reserve") {
		t.Fatalf("MakeExt4 with a reserve above the free space: %v; want an unavailable error naming %s and --disk-reserve", err, dir)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused disk left %s behind", p)
	}
	FreeReserve = 0
	if err := MakeExt4(context.Background(), p, 64, "kiln-disk"); err != nil {
		t.Fatalf("MakeExt4 with no reserve: %v", err)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{512: "512 B", 1536: "1.5 KiB", 1 << 30: "1.0 GiB", 3 << 40: "3.0 TiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCopySparseKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := dir+"/src", dir+"/dst"
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 10 << 20, size - 5} {
		if _, err := f.WriteAt([]byte("kiln!"), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := os.WriteFile(dst, []byte("old content, longer than nothing"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CopySparse(dst, src); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy differs from its source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 4<<20 {
		t.Errorf("the copy of a 64 MiB file holding 15 bytes uses %d bytes: holes were filled", used)
	}
}
