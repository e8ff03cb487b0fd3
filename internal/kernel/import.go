package kernel

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// GuestModuleNames are the modules kiln's guests need, by name: the
// virtio-mmio transport and devices, and the filesystems kiln mounts. Those
// an imported kernel has built in, or lacks, are skipped.
var GuestModuleNames = []string{
	"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
	"ext4", "erofs", "squashfs", "overlay", "virtiofs", "9pnet_virtio", "9p",
	"vmw_vsock_virtio_transport",
}

// ImportOptions configure Import.
type ImportOptions struct {
	Name string // store name; "" means DefaultName
	// Path is the kernel image: a vmlinux, or a bzImage such as Debian's
	// /boot/vmlinuz-*.
	Path string
	// ModulesDir is the kernel's module tree (/lib/modules/<version>);
	// empty means the kernel needs no modules.
	ModulesDir string
	// Modules are the module names to load; nil means GuestModuleNames.
	Modules []string
	// Config is the kernel's build config (Debian's /boot/config-<version>);
	// "" looks for config-<version> beside a vmlinuz-<version> image. It
	// tells whether the kernel needs ACPI to find its devices; without it,
	// kiln assumes a distribution kernel and boots it with ACPI.
	Config string
}

// Import copies a kernel image (and the modules it needs from ModulesDir,
// with their dependencies, in load order) into the store.
func (s *Store) Import(o ImportOptions) (k *Kernel, err error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if err := ValidateName(o.Name); err != nil {
		return nil, err
	}
	if err := checkKernelImage(o.Path); err != nil {
		return nil, err
	}
	acpi, capable, err := kernelACPI(o.Config, o.Path)
	if err != nil {
		return nil, err
	}
	var mods []string
	if o.ModulesDir != "" {
		want := o.Modules
		if want == nil {
			want = GuestModuleNames
		}
		mods, err = resolveModules(o.ModulesDir, want)
		if err != nil {
			return nil, err
		}
	}
	tmp, err := s.tempDir(o.Name)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	img := filepath.Join(tmp, "kernel")
	size, err := copyFile(o.Path, img, 0o644)
	if err != nil {
		return nil, fmt.Errorf("copying kernel image: %w", err)
	}
	final := filepath.Join(s.dir, o.Name)
	k = &Kernel{
		Name:    o.Name,
		Path:    filepath.Join(final, "kernel"),
		Origin:  "imported from " + o.Path,
		Key:     hashStrings("import", o.Path, time.Now().String()),
		Created: time.Now().UTC(),
		Size:    size,
		ACPI:    acpi,
		// A kernel that needs ACPI has it; one that can do without
		// may have it too.
		ACPICapable: acpi || capable,
	}
	if len(mods) > 0 {
		if err := os.Mkdir(filepath.Join(tmp, "modules"), 0o755); err != nil {
			return nil, fmt.Errorf("creating module dir: %w", err)
		}
	}
	for _, m := range mods {
		base := filepath.Base(m)
		if _, err := copyFile(m, filepath.Join(tmp, "modules", base), 0o644); err != nil {
			return nil, fmt.Errorf("copying module %s: %w", base, err)
		}
		k.Modules = append(k.Modules, filepath.Join(final, "modules", base))
	}
	if err := s.install(tmp, k); err != nil {
		return nil, err
	}
	return k, nil
}

// kernelACPI reads the kernel's config (config, or config-<version> beside
// a vmlinuz-<version> image) and reports whether the kernel lacks
// VIRTIO_MMIO_CMDLINE_DEVICES and so must find virtio-mmio devices through
// ACPI, and whether it has ACPI (CONFIG_ACPI) at all. With no config to
// read it answers that it needs ACPI: distribution kernels have ACPI, and
// a kernel that lists devices on its cmdline wants a config given.
func kernelACPI(config, image string) (needs, capable bool, err error) {
	if config == "" {
		base := filepath.Base(image)
		for _, prefix := range []string{"vmlinuz-", "vmlinux-", "bzImage-"} {
			if v, ok := strings.CutPrefix(base, prefix); ok {
				config = filepath.Join(filepath.Dir(image), "config-"+v)
			}
		}
		if _, err := os.Stat(config); config == "" || err != nil {
			return true, true, nil
		}
	}
	b, err := os.ReadFile(config)
	if err != nil {
		return false, false, fmt.Errorf("reading kernel config: %w", err)
	}
	needs = true
	for _, line := range strings.Split(string(b), "\n") {
		switch strings.TrimSpace(line) {
		case "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y":
			needs = false
		case "CONFIG_ACPI=y":
			capable = true
		}
	}
	return needs, capable, nil
}

// checkKernelImage accepts an ELF vmlinux or an x86 bzImage ("HdrS" at
// 0x202, the boot protocol's magic).
func checkKernelImage(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("opening kernel image: %w", err)
	}
	defer f.Close()
	var hdr [0x206]byte
	n, _ := io.ReadFull(f, hdr[:])
	if n >= 4 && string(hdr[:4]) == "\x7fELF" {
		return nil
	}
	if n == len(hdr) && string(hdr[0x202:0x206]) == "HdrS" {
		return nil
	}
	return fmt.Errorf("%s is not a kernel image: want an ELF vmlinux or an x86 bzImage (vmlinuz)", p)
}

// resolveModules returns the module files for names and their dependencies,
// dependencies first. Names built into the kernel or absent from it are
// skipped. Dependencies come from modules.dep when depmod has made one, and
// otherwise from each module's .modinfo section.
func resolveModules(dir string, names []string) ([]string, error) {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("module directory %s: not a directory", dir)
	}
	files := map[string]string{} // module name -> path
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			if name, ok := moduleName(p); ok {
				files[name] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning modules in %s: %w", dir, err)
	}
	depFile, err := readModulesDep(dir)
	if err != nil {
		return nil, err
	}
	deps := func(name string) ([]string, error) {
		if depFile != nil {
			return depFile[name], nil
		}
		return modinfoDepends(files[name])
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = normalizeModule(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		if _, ok := files[name]; !ok {
			state[name] = 2
			return nil // built in, or not part of this kernel
		}
		state[name] = 1
		ds, err := deps(name)
		if err != nil {
			return err
		}
		for _, d := range ds {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, files[name])
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func normalizeModule(name string) string { return strings.ReplaceAll(name, "-", "_") }

// moduleName returns the module name of a module file path.
func moduleName(p string) (string, bool) {
	base := filepath.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(base, ext) {
			return normalizeModule(strings.TrimSuffix(base, ext)), true
		}
	}
	return "", false
}

// readModulesDep parses dir/modules.dep into name -> dependency names, or
// returns nil when the file does not exist.
func readModulesDep(dir string) (map[string][]string, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name, ok := moduleName(mod)
		if !ok {
			continue
		}
		var ds []string
		for _, d := range strings.Fields(rest) {
			if dn, ok := moduleName(d); ok {
				ds = append(ds, dn)
			}
		}
		out[name] = ds
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	return out, nil
}

// modinfoDepends reads the "depends=" entry of an uncompressed module.
func modinfoDepends(p string) ([]string, error) {
	if !strings.HasSuffix(p, ".ko") {
		return nil, fmt.Errorf("module %s is compressed and there is no modules.dep beside it: run depmod for that kernel first", p)
	}
	f, err := elf.Open(p)
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", p, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", p)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo of %s: %w", p, err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok {
			if v == "" {
				return nil, nil
			}
			ds := strings.Split(v, ",")
			sort.Strings(ds)
			return ds, nil
		}
	}
	return nil, nil
}

func copyFile(src, dst string, perm os.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
