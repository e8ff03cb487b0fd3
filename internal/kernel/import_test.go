package kernel

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	const fragment = `# kiln fragment
CONFIG_A=y
CONFIG_B=n
  CONFIG_C=m
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_D is not set

CONFIG_NR=64
`
	const good = `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C=m
CONFIG_CMDLINE="console=ttyS0"
CONFIG_NR=64
CONFIG_EXTRA=y
`
	tests := []struct {
		name    string
		config  string
		wantErr []string // substrings; nil means no error
	}{
		{name: "all applied", config: good},
		{name: "=n satisfied by absence", config: strings.Replace(good, "# CONFIG_B is not set\n", "", 1)},
		{name: "=n satisfied by =n", config: strings.Replace(good, "# CONFIG_B is not set", "CONFIG_B=n", 1)},
		{name: "option missing", config: strings.Replace(good, "CONFIG_A=y\n", "", 1), wantErr: []string{"CONFIG_A"}},
		{name: "option not set", config: strings.Replace(good, "CONFIG_A=y", "# CONFIG_A is not set", 1), wantErr: []string{"CONFIG_A"}},
		{name: "y became m", config: strings.Replace(good, "CONFIG_A=y", "CONFIG_A=m", 1), wantErr: []string{"CONFIG_A", "want y"}},
		{name: "m became y", config: strings.Replace(good, "CONFIG_C=m", "CONFIG_C=y", 1), wantErr: []string{"CONFIG_C"}},
		{name: "=n option set", config: strings.Replace(good, "# CONFIG_B is not set", "CONFIG_B=y", 1), wantErr: []string{"CONFIG_B=y", "want n"}},
		{name: "string differs", config: strings.Replace(good, `"console=ttyS0"`, `"console=hvc0"`, 1), wantErr: []string{"CONFIG_CMDLINE"}},
		{name: "number differs", config: strings.Replace(good, "CONFIG_NR=64", "CONFIG_NR=8", 1), wantErr: []string{"CONFIG_NR"}},
		{name: "two missing, both named", config: "CONFIG_B=y\nCONFIG_C=m\n", wantErr: []string{"CONFIG_A", "CONFIG_B", "CONFIG_CMDLINE", "CONFIG_NR"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, filepath.Join(t.TempDir(), ".config"), []byte(tt.config))
			err := checkConfig(p, fragment)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("checkConfig = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("checkConfig = nil, want error")
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "CONFIG_EXTRA") || strings.Contains(err.Error(), "CONFIG_D") {
				t.Errorf("error %q names an option the fragment does not set", err)
			}
		})
	}
	if err := checkConfig(filepath.Join(t.TempDir(), "missing"), fragment); err == nil {
		t.Error("checkConfig of a missing file = nil")
	}
}

// TestFragmentSelfConsistent: a .config equal to kiln's own fragment
// satisfies it; an option set twice to different values would not.
func TestFragmentSelfConsistent(t *testing.T) {
	p := writeFile(t, filepath.Join(t.TempDir(), ".config"), []byte(Fragment))
	if err := checkConfig(p, Fragment); err != nil {
		t.Errorf("the fragment does not satisfy itself: %v", err)
	}
	if !strings.Contains(Fragment, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y") {
		t.Error("the fragment does not enable VIRTIO_MMIO_CMDLINE_DEVICES, which acpi=off boots rely on")
	}
}

// moduleTree makes a fake /lib/modules/<version> and returns its path.
func moduleTree(t *testing.T, files []string, dep string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		writeFile(t, filepath.Join(dir, f), []byte("module "+f))
	}
	if dep != "" {
		writeFile(t, filepath.Join(dir, "modules.dep"), []byte(dep))
	}
	return dir
}

func TestResolveModules(t *testing.T) {
	files := []string{"kernel/a.ko", "kernel/drivers/b.ko", "kernel/c-d.ko", "kernel/fs/e.ko.xz", "kernel/lonely.ko"}
	const dep = `kernel/a.ko: kernel/drivers/b.ko kernel/c-d.ko
kernel/drivers/b.ko: kernel/c-d.ko
kernel/c-d.ko:
kernel/fs/e.ko.xz: kernel/drivers/b.ko
kernel/lonely.ko:
not a dependency line
`
	tree := moduleTree(t, files, dep)
	p := func(f string) string { return filepath.Join(tree, f) }
	tests := []struct {
		name  string
		names []string
		want  []string
	}{
		{"dependencies first", []string{"a"}, []string{p("kernel/c-d.ko"), p("kernel/drivers/b.ko"), p("kernel/a.ko")}},
		{"dash and underscore are one name", []string{"c-d", "c_d"}, []string{p("kernel/c-d.ko")}},
		{"underscore finds dashed file", []string{"c_d"}, []string{p("kernel/c-d.ko")}},
		{"each module once", []string{"b", "a", "e"}, []string{p("kernel/c-d.ko"), p("kernel/drivers/b.ko"), p("kernel/a.ko"), p("kernel/fs/e.ko.xz")}},
		{"absent names skipped", []string{"virtio_mmio", "lonely", "nope"}, []string{p("kernel/lonely.ko")}},
		{"nothing wanted", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveModules(tree, tt.names)
			if err != nil {
				t.Fatalf("resolveModules: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("resolveModules(%q) =\n %q\nwant\n %q", tt.names, got, tt.want)
			}
		})
	}
}

func TestResolveModulesErrors(t *testing.T) {
	tests := []struct {
		name    string
		dir     func(t *testing.T) string
		names   []string
		wantErr string
	}{
		{"cycle", func(t *testing.T) string {
			return moduleTree(t, []string{"kernel/x.ko", "kernel/y.ko", "kernel/z.ko"},
				"kernel/x.ko: kernel/y.ko\nkernel/y.ko: kernel/z.ko\nkernel/z.ko: kernel/x.ko\n")
		}, []string{"x"}, "cycle"},
		{"self dependency", func(t *testing.T) string {
			return moduleTree(t, []string{"kernel/x.ko"}, "kernel/x.ko: kernel/x.ko\n")
		}, []string{"x"}, "cycle"},
		{"compressed module without modules.dep", func(t *testing.T) string {
			return moduleTree(t, []string{"kernel/x.ko.zst"}, "")
		}, []string{"x"}, "depmod"},
		{"uncompressed module that is not ELF, without modules.dep", func(t *testing.T) string {
			return moduleTree(t, []string{"kernel/x.ko"}, "")
		}, []string{"x"}, "x.ko"},
		{"not a directory", func(t *testing.T) string {
			return writeFile(t, filepath.Join(t.TempDir(), "file"), nil)
		}, []string{"x"}, "not a directory"},
		{"missing", func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "missing")
		}, []string{"x"}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveModules(tt.dir(t), tt.names)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("resolveModules = %q, %v; want error containing %q", got, err, tt.wantErr)
			}
		})
	}
}

func TestKernelACPI(t *testing.T) {
	const cmdlineDevices = "#\n# Linux/x86 6.1 Kernel Configuration\n#\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_EXT4_FS=y\n"
	const withoutIt = "#\n# Linux/x86 6.1 Kernel Configuration\n#\nCONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_ACPI=y\n"
	const both = "CONFIG_ACPI=y\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"
	tests := []struct {
		name          string
		image         string            // file name of the image
		files         map[string]string // other files beside it
		config        string            // explicit config file name, "" for none
		want, capable bool
	}{
		{name: "explicit config with cmdline devices", image: "vmlinux", files: map[string]string{"my.config": cmdlineDevices}, config: "my.config", want: false},
		{name: "explicit config without", image: "vmlinux", files: map[string]string{"my.config": withoutIt}, config: "my.config", want: true, capable: true},
		{name: "cmdline devices and ACPI", image: "vmlinux", files: map[string]string{"c": both}, config: "c", want: false, capable: true},
		{name: "config-X beside vmlinuz-X", image: "vmlinuz-6.1.0-9-amd64", files: map[string]string{"config-6.1.0-9-amd64": cmdlineDevices}, want: false},
		{name: "config-X beside vmlinuz-X without it", image: "vmlinuz-6.1.0-9-amd64", files: map[string]string{"config-6.1.0-9-amd64": withoutIt}, want: true, capable: true},
		{name: "config-X beside vmlinux-X", image: "vmlinux-6.6", files: map[string]string{"config-6.6": cmdlineDevices}, want: false},
		{name: "no config beside vmlinuz-X", image: "vmlinuz-6.1.0", want: true, capable: true},
		{name: "config of another version is not used", image: "vmlinuz-6.1.0", files: map[string]string{"config-6.2.0": cmdlineDevices}, want: true, capable: true},
		{name: "no version in image name", image: "bzImage", files: map[string]string{"config-": cmdlineDevices}, want: true, capable: true},
		{name: "option on the first line", image: "vmlinux", files: map[string]string{"c": "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_X=y\n"}, config: "c", want: false},
		{name: "option on an unterminated last line", image: "vmlinux", files: map[string]string{"c": "CONFIG_X=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"}, config: "c", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			img := writeFile(t, filepath.Join(dir, tt.image), []byte("\x7fELF"))
			for name, content := range tt.files {
				writeFile(t, filepath.Join(dir, name), []byte(content))
			}
			config := ""
			if tt.config != "" {
				config = filepath.Join(dir, tt.config)
			}
			got, capable, err := kernelACPI(config, img)
			if err != nil {
				t.Fatalf("kernelACPI: %v", err)
			}
			if got != tt.want || capable != tt.capable {
				t.Errorf("kernelACPI = needs %v, capable %v; want %v, %v", got, capable, tt.want, tt.capable)
			}
		})
	}
	t.Run("explicit config missing", func(t *testing.T) {
		dir := t.TempDir()
		if _, _, err := kernelACPI(filepath.Join(dir, "missing"), filepath.Join(dir, "vmlinux")); err == nil {
			t.Error("kernelACPI with a missing explicit config = nil error")
		}
	})
}

// fakeBzImage returns bytes with the x86 boot protocol's "HdrS" at 0x202.
func fakeBzImage(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i * 7)
	}
	copy(b[0x202:], "HdrS")
	return b
}

func TestCheckKernelImage(t *testing.T) {
	rnd := make([]byte, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	rnd[0] = 0 // not "\x7fELF" whatever the seed gives
	rnd[0x202] = 0
	shifted := fakeBzImage(0x400)
	copy(shifted[0x202:], "xxxx")
	copy(shifted[0x203:], "HdrS")
	tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"ELF vmlinux", append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 100)...), true},
		{"just the ELF magic", []byte("\x7fELF"), true},
		{"bzImage", fakeBzImage(0x1000), true},
		{"bzImage header only", fakeBzImage(0x206), true},
		{"random bytes", rnd, false},
		{"HdrS at the wrong offset", shifted, false},
		{"bzImage cut before the magic", fakeBzImage(0x206)[:0x204], false},
		{"empty", nil, false},
		{"text", []byte("#!/bin/sh\necho not a kernel\n"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, filepath.Join(t.TempDir(), "img"), tt.data)
			err := checkKernelImage(p)
			if tt.ok && err != nil {
				t.Errorf("checkKernelImage = %v, want nil", err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "not a kernel image")) {
				t.Errorf("checkKernelImage = %v, want a not-a-kernel error", err)
			}
		})
	}
	if err := checkKernelImage(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("checkKernelImage of a missing file = nil")
	}
}

func TestStoreGet(t *testing.T) {
	s := NewStore(t.TempDir())
	if _, err := s.Get("default"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(default) in an empty store = %v, want ErrNotFound", err)
	}
	for _, name := range []string{"", "../x", "a/b", ".hidden", "-dash", "with space", strings.Repeat("a", 64), strings.Repeat("k", 70)} {
		_, err := s.Get(name)
		if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "invalid kernel name") {
			t.Errorf("Get(%q) = %v, want an invalid-name error", name, err)
		}
	}
	if err := ValidateName(strings.Repeat("a", 63)); err != nil {
		t.Errorf("ValidateName(63 chars) = %v", err)
	}
	if ks, err := s.List(); err != nil || len(ks) != 0 {
		t.Errorf("List of an empty store = %v, %v", ks, err)
	}
}

func TestStoreImport(t *testing.T) {
	root := t.TempDir()
	s := NewStore(root)
	src := t.TempDir()
	imgData := fakeBzImage(0x800)
	img := writeFile(t, filepath.Join(src, "vmlinuz-6.1.0-test"), imgData)
	writeFile(t, filepath.Join(src, "config-6.1.0-test"), []byte("#\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n#\n"))
	tree := moduleTree(t, []string{"kernel/a.ko", "kernel/b.ko", "kernel/c-d.ko"},
		"kernel/a.ko: kernel/b.ko kernel/c-d.ko\nkernel/b.ko: kernel/c-d.ko\nkernel/c-d.ko:\n")

	k, err := s.Import(ImportOptions{Name: "test", Path: img, ModulesDir: tree, Modules: []string{"a"}})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	final := filepath.Join(root, "kernels", "test")
	wantMods := []string{
		filepath.Join(final, "modules", "c-d.ko"),
		filepath.Join(final, "modules", "b.ko"),
		filepath.Join(final, "modules", "a.ko"),
	}
	if k.Name != "test" || k.Path != filepath.Join(final, "kernel") || k.Size != int64(len(imgData)) || k.ACPI ||
		!slices.Equal(k.Modules, wantMods) || !strings.Contains(k.Origin, img) {
		t.Errorf("Import = %+v", k)
	}
	if got := mustRead(t, k.Path); string(got) != string(imgData) {
		t.Error("stored image differs from the imported one")
	}
	for _, m := range k.Modules {
		want := "module kernel/" + filepath.Base(m)
		if got := mustRead(t, m); string(got) != want {
			t.Errorf("module %s = %q, want %q", m, got, want)
		}
	}

	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v; want one kernel", list, err)
	}
	if l := list[0]; l.Name != "test" || !slices.Equal(l.Modules, wantMods) || l.Path != k.Path || l.ACPI {
		t.Errorf("List()[0] = %+v", l)
	}
	got, err := s.Get("test")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.Path != k.Path || !slices.Equal(got.Modules, k.Modules) || got.Key != k.Key || !got.Created.Equal(k.Created) {
		t.Errorf("Get = %+v, want %+v", got, k)
	}

	// Re-importing under the same name replaces the kernel and leaves no
	// scratch or .old directories.
	k2, err := s.Import(ImportOptions{Name: "test", Path: img})
	if err != nil {
		t.Fatalf("re-Import: %v", err)
	}
	if len(k2.Modules) != 0 || k2.ACPI {
		t.Errorf("re-Import = %+v", k2)
	}
	if _, err := os.Stat(filepath.Join(final, "modules")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old modules survive the re-import: %v", err)
	}
	if names := dirNames(t, filepath.Join(root, "kernels")); !slices.Equal(names, []string{"test"}) {
		t.Errorf("kernels dir holds %q, want just test", names)
	}

	// A second kernel, default name, no config beside it: needs ACPI.
	plain := writeFile(t, filepath.Join(src, "vmlinux"), []byte("\x7fELF kernel"))
	k3, err := s.Import(ImportOptions{Path: plain})
	if err != nil {
		t.Fatal(err)
	}
	if k3.Name != DefaultName || !k3.ACPI {
		t.Errorf("Import without name/config = %+v, want %s with ACPI", k3, DefaultName)
	}
	list, err = s.List()
	if err != nil || len(list) != 2 || list[0].Name != DefaultName || list[1].Name != "test" {
		t.Errorf("List = %v, %v; want [default test]", list, err)
	}

	if err := s.Remove("test"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := s.Get("test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove = %v, want ErrNotFound", err)
	}
	if err := s.Remove("test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestStoreImportFailureLeavesNothing(t *testing.T) {
	src := t.TempDir()
	img := writeFile(t, filepath.Join(src, "vmlinux"), []byte("\x7fELF kernel"))
	notKernel := writeFile(t, filepath.Join(src, "notes.txt"), []byte("just some text, long enough to not be anything"))
	// A module that modules.dep lists but that cannot be copied (a dangling
	// symlink): Import fails after it has made its scratch directory.
	brokenTree := moduleTree(t, nil, "kernel/a.ko:\n")
	if err := os.MkdirAll(filepath.Join(brokenTree, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(src, "gone.ko"), filepath.Join(brokenTree, "kernel", "a.ko")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    ImportOptions
	}{
		{"not a kernel", ImportOptions{Name: "bad", Path: notKernel}},
		{"missing image", ImportOptions{Name: "bad", Path: filepath.Join(src, "missing")}},
		{"invalid name", ImportOptions{Name: "../bad", Path: img}},
		{"missing modules dir", ImportOptions{Name: "bad", Path: img, ModulesDir: filepath.Join(src, "nomods")}},
		{"module cannot be copied", ImportOptions{Name: "bad", Path: img, ModulesDir: brokenTree, Modules: []string{"a"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			s := NewStore(root)
			if k, err := s.Import(tt.o); err == nil {
				t.Fatalf("Import = %+v, want error", k)
			}
			if names := dirNames(t, filepath.Join(root, "kernels")); len(names) != 0 {
				t.Errorf("kernels dir holds %q after a failed import", names)
			}
		})
	}
}

func TestStoreResolve(t *testing.T) {
	s := NewStore(t.TempDir())
	img := writeFile(t, filepath.Join(t.TempDir(), "vmlinux"), []byte("\x7fELF abc"))
	k, err := s.Resolve(img)
	if err != nil {
		t.Fatalf("Resolve(path): %v", err)
	}
	if k.Path != img || k.Size != 8 || len(k.Modules) != 0 || k.ACPI || k.ACPICapable {
		t.Errorf("Resolve(path) = %+v", k)
	}
	// A store's kernel by path: its config beside it tells it can boot
	// with ACPI as well.
	dir := t.TempDir()
	built := writeFile(t, filepath.Join(dir, "vmlinux"), []byte("\x7fELF abc"))
	writeFile(t, filepath.Join(dir, "config"), []byte("CONFIG_ACPI=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"))
	if k, err := s.Resolve(built); err != nil || k.ACPI || !k.ACPICapable {
		t.Errorf("Resolve(path with a config) = %+v, %v; want ACPI-capable", k, err)
	}
	if _, err := s.Resolve(""); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve(\"\") in an empty store = %v, want ErrNotFound for the default", err)
	}
	if _, err := s.Resolve(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Resolve of a missing path = nil")
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name    string
		o       BuildOptions
		wantErr string
	}{
		{"missing source", BuildOptions{Source: filepath.Join(t.TempDir(), "linux-source-6.1.tar.xz")}, "apt-get install linux-source-6.1"},
		{"negative jobs", BuildOptions{Jobs: -1}, "job count -1"},
		{"invalid name", BuildOptions{Name: "../k"}, "invalid kernel name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			k, built, err := NewStore(root).Build(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build = %v, %v, %v; want error containing %q", k, built, err, tt.wantErr)
			}
			if names := dirNames(t, filepath.Join(root, "kernels")); len(names) != 0 {
				t.Errorf("kernels dir holds %q after a failed build", names)
			}
		})
	}
}
