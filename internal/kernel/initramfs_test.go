package kernel

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cavaliergopher/cpio"
)

func writeFile(t *testing.T, p string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// byName indexes entries and checks that every entry's parent directories
// come before it (the kernel creates no parents while unpacking).
func byName(t *testing.T, es []entry) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	for _, e := range es {
		for d := path.Dir(e.Name); d != "."; d = path.Dir(d) {
			if p, ok := m[d]; !ok || p.Mode&cpio.ModeType != cpio.TypeDir {
				t.Errorf("%s comes before its directory %s", e.Name, d)
			}
		}
		m[e.Name] = e
	}
	return m
}

type statID struct {
	ino   uint64
	mtime int64
}

func stat(t *testing.T, p string) statID {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return statID{st.Sys().(*syscall.Stat_t).Ino, st.ModTime().UnixNano()}
}

func TestBaseInitramfs(t *testing.T) {
	src := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache") // created on demand
	initBin := writeFile(t, filepath.Join(src, "kiln-init"), []byte("\x7fELF init v1"))
	k := &Kernel{Modules: []string{
		writeFile(t, filepath.Join(src, "mods", "virtio_mmio.ko"), []byte("module virtio_mmio")),
		writeFile(t, filepath.Join(src, "mods", "ext4.ko"), []byte("module ext4, a bit longer")),
	}}

	p1, err := BaseInitramfs(cache, initBin, k)
	if err != nil {
		t.Fatalf("BaseInitramfs: %v", err)
	}
	if filepath.Dir(p1) != cache {
		t.Errorf("archive %s is not in the cache dir %s", p1, cache)
	}
	data, err := os.ReadFile(p1)
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%512 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 512", len(data))
	}
	ents := readArchive(t, data)
	m := byName(t, ents)

	checks := []struct {
		name         string
		mode         cpio.FileMode
		data         string
		rmaj, rminor uint32
	}{
		{name: "init", mode: cpio.TypeReg | 0o755, data: "\x7fELF init v1"},
		{name: "dev/console", mode: cpio.TypeChar | 0o600, rmaj: 5, rminor: 1},
		{name: "dev/null", mode: cpio.TypeChar | 0o666, rmaj: 1, rminor: 3},
		{name: "kiln/modules/virtio_mmio.ko", mode: cpio.TypeReg | 0o644, data: "module virtio_mmio"},
		{name: "kiln/modules/ext4.ko", mode: cpio.TypeReg | 0o644, data: "module ext4, a bit longer"},
	}
	for _, c := range checks {
		e, ok := m[c.name]
		if !ok {
			t.Errorf("archive has no %s", c.name)
			continue
		}
		if e.Mode != c.mode || string(e.Data) != c.data || e.RMajor != c.rmaj || e.RMinor != c.rminor {
			t.Errorf("%s: mode %o data %q dev %d:%d; want mode %o data %q dev %d:%d",
				c.name, e.Mode, e.Data, e.RMajor, e.RMinor, c.mode, c.data, c.rmaj, c.rminor)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "kiln", "usr/local/bin", "etc", "root"} {
		if e, ok := m[d]; !ok || e.Mode&cpio.ModeType != cpio.TypeDir {
			t.Errorf("archive has no directory %s", d)
		}
	}
	// GuestModules names the modules where the archive puts them, in load order.
	var inArchive []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name, "kiln/modules/") {
			inArchive = append(inArchive, "/"+e.Name)
		}
	}
	if gm := GuestModules(k); !slices.Equal(gm, inArchive) {
		t.Errorf("GuestModules = %q, archive has %q", gm, inArchive)
	}

	// Same inputs: same path, and the cached file is not rewritten.
	before := stat(t, p1)
	p2, err := BaseInitramfs(cache, initBin, k)
	if err != nil {
		t.Fatal(err)
	}
	if p2 != p1 {
		t.Errorf("same inputs gave %s, then %s", p1, p2)
	}
	if after := stat(t, p1); after != before {
		t.Errorf("cached archive was rewritten: %+v -> %+v", before, after)
	}

	// A new kiln-init gets a new archive.
	writeFile(t, initBin, []byte("\x7fELF init v2"))
	p3, err := BaseInitramfs(cache, initBin, k)
	if err != nil {
		t.Fatal(err)
	}
	if p3 == p1 {
		t.Errorf("changed init content kept path %s", p1)
	}
	if e := byName(t, readArchive(t, mustRead(t, p3)))["init"]; string(e.Data) != "\x7fELF init v2" {
		t.Errorf("new archive's init = %q", e.Data)
	}
	// A changed module too.
	writeFile(t, k.Modules[1], []byte("module ext4 rebuilt"))
	p4, err := BaseInitramfs(cache, initBin, k)
	if err != nil {
		t.Fatal(err)
	}
	if p4 == p3 || p4 == p1 {
		t.Errorf("changed module content kept path %s", p4)
	}
	// No temporary files are left behind.
	ents2, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents2 {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover temporary file %s", e.Name())
		}
	}
}

func TestBaseInitramfsMissingInput(t *testing.T) {
	src := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache")
	initBin := writeFile(t, filepath.Join(src, "init"), []byte("init"))
	for name, tc := range map[string]struct {
		init string
		k    *Kernel
	}{
		"missing init":   {filepath.Join(src, "nope"), &Kernel{}},
		"missing module": {initBin, &Kernel{Modules: []string{filepath.Join(src, "nope.ko")}}},
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := BaseInitramfs(cache, tc.init, tc.k); err == nil {
				t.Fatalf("BaseInitramfs = %s, nil; want error", p)
			}
			if ents, err := os.ReadDir(cache); err == nil && len(ents) > 0 {
				t.Errorf("cache has %d entries after a failure", len(ents))
			}
		})
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteInitrd(t *testing.T) {
	src := t.TempDir()
	base, err := BaseInitramfs(filepath.Join(t.TempDir(), "cache"), writeFile(t, filepath.Join(src, "init"), []byte("init")), &Kernel{})
	if err != nil {
		t.Fatal(err)
	}
	baseData := mustRead(t, base)
	prog := writeFile(t, filepath.Join(src, "hello"), []byte("\x7fELF hello program"))
	spec := []byte(`{"version":1,"args":["/usr/local/bin/hello"]}`)
	files := []File{
		{Path: "/usr/local/bin/hello", Mode: 0o755, Source: prog},
		{Path: "/etc/hostname", Mode: 0o644, Data: []byte("vm1\n")},
		{Path: "/kiln/extra/note", Mode: 0o600, Data: []byte("x")},
		{Path: "/etc/hosts", Mode: 0o644, Data: []byte("127.0.0.1 localhost\n")},
	}
	dst := filepath.Join(t.TempDir(), "initrd")
	if err := WriteInitrd(dst, base, "/kiln/spec.json", spec, files); err != nil {
		t.Fatalf("WriteInitrd: %v", err)
	}
	out := mustRead(t, dst)
	if len(out)%512 != 0 {
		t.Errorf("initrd is %d bytes, not a multiple of 512", len(out))
	}
	if !bytes.HasPrefix(out, baseData) {
		t.Fatal("initrd does not start with the base archive")
	}
	m := byName(t, readArchive(t, out[len(baseData):]))
	want := map[string]struct {
		mode cpio.FileMode
		data string
	}{
		"kiln/spec.json":      {cpio.TypeReg | 0o600, string(spec)},
		"usr/local/bin/hello": {cpio.TypeReg | 0o755, "\x7fELF hello program"},
		"etc/hostname":        {cpio.TypeReg | 0o644, "vm1\n"},
		"etc/hosts":           {cpio.TypeReg | 0o644, "127.0.0.1 localhost\n"},
		"kiln/extra/note":     {cpio.TypeReg | 0o600, "x"},
		"kiln":                {cpio.TypeDir | 0o755, ""},
		"kiln/extra":          {cpio.TypeDir | 0o755, ""},
		"usr":                 {cpio.TypeDir | 0o755, ""},
		"usr/local":           {cpio.TypeDir | 0o755, ""},
		"usr/local/bin":       {cpio.TypeDir | 0o755, ""},
		"etc":                 {cpio.TypeDir | 0o755, ""},
	}
	for name, w := range want {
		e, ok := m[name]
		if !ok {
			t.Errorf("second archive has no %s", name)
			continue
		}
		if e.Mode != w.mode || string(e.Data) != w.data {
			t.Errorf("%s: mode %o data %q, want mode %o data %q", name, e.Mode, e.Data, w.mode, w.data)
		}
	}
	for name := range m {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected entry %s in the second archive", name)
		}
	}
}

func TestWriteInitrdFailureLeavesNoFile(t *testing.T) {
	src := t.TempDir()
	base, err := BaseInitramfs(filepath.Join(t.TempDir(), "cache"), writeFile(t, filepath.Join(src, "init"), []byte("init")), &Kernel{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		base     string
		files    []File
		existing bool // dst exists before the call
	}{
		{name: "missing source", base: base, files: []File{
			{Path: "/etc/hostname", Mode: 0o644, Data: []byte("vm")},
			{Path: "/usr/local/bin/prog", Mode: 0o755, Source: filepath.Join(src, "missing")},
		}},
		{name: "missing source over an old initrd", base: base, existing: true, files: []File{
			{Path: "/usr/local/bin/prog", Mode: 0o755, Source: filepath.Join(src, "missing")},
		}},
		{name: "missing base", base: filepath.Join(src, "nobase.cpio")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "initrd")
			if tt.existing {
				writeFile(t, dst, []byte("old"))
			}
			if err := WriteInitrd(dst, tt.base, "/kiln/spec.json", []byte("{}"), tt.files); err == nil {
				t.Fatal("WriteInitrd succeeded")
			}
			if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after a failure, stat %s = %v; want it gone", dst, err)
			}
		})
	}
}

// A cached archive emptied or torn (a crash before its data reached the
// disk) is found out by its hash and built again, not handed to every VM.
func TestBaseInitramfsRebuildsADamagedCache(t *testing.T) {
	src := t.TempDir()
	cache := t.TempDir()
	initBin := writeFile(t, filepath.Join(src, "kiln-init"), []byte("\x7fELF init v1"))
	k := &Kernel{}
	p, err := BaseInitramfs(cache, initBin, k)
	if err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, damage := range []struct {
		name string
		data []byte
	}{{"emptied", nil}, {"torn", good[:len(good)/2]}, {"changed", append([]byte("x"), good[1:]...)}} {
		if err := os.WriteFile(p, damage.data, 0o644); err != nil {
			t.Fatal(err)
		}
		// Another process (a new daemon) has not checked it yet.
		intact.Delete(p)
		got, err := BaseInitramfs(cache, initBin, k)
		if err != nil {
			t.Fatalf("%s cache: %v", damage.name, err)
		}
		if b, _ := os.ReadFile(got); !bytes.Equal(b, good) {
			t.Errorf("%s cache: BaseInitramfs handed back %d bytes, not the %d-byte archive", damage.name, len(b), len(good))
		}
	}
}
