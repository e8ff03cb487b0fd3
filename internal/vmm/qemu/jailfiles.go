package qemu

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"kiln.dev/kiln/internal/jail"
)

// Where Debian's QEMU keeps what it loads at run time besides its shared
// libraries: accelerator modules and firmware. A jailed QEMU sees these
// files at the same paths, and nothing else of them.
const (
	moduleDir   = "/usr/lib/x86_64-linux-gnu/qemu"
	firmwareDir = "/usr/share/qemu"
)

// firmware is what a microvm with -kernel reads from firmwareDir: qboot,
// and the option ROM that boots a PVH or bzImage kernel through fw_cfg.
var firmware = []string{"qboot.rom", "bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"}

// modules are the QEMU modules a kiln VM loads: TCG is a module in
// Debian's build. KVM is built in.
var modules = []string{"accel-tcg-x86_64.so"}

// libDirs are the dynamic loader's default directories, searched in order.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// runFiles lists what the QEMU binary bin needs in a jail to run: itself,
// its ELF interpreter and every shared library it and its modules load
// (found as the loader would, from DT_NEEDED), its modules and firmware.
// Each is bound read-only at its host path.
type runFiles struct {
	binds []jail.Bind
	// libPath is LD_LIBRARY_PATH for the jail: there is no ld.so.cache
	// there, so the loader is told every directory a library came from.
	libPath string
}

var (
	runFilesMu    sync.Mutex
	runFilesCache = map[string]*runFiles{}
)

// jailRunFiles returns runFiles of bin, computed once per binary.
func jailRunFiles(bin string) (*runFiles, error) {
	runFilesMu.Lock()
	defer runFilesMu.Unlock()
	if rf := runFilesCache[bin]; rf != nil {
		return rf, nil
	}
	rf, err := findRunFiles(bin, extraLibDirs())
	if err != nil {
		return nil, fmt.Errorf("listing what QEMU %s needs in its jail: %w", bin, err)
	}
	runFilesCache[bin] = rf
	return rf, nil
}

// extraLibDirs are the directories /etc/ld.so.conf.d adds to the loader's.
func extraLibDirs() []string {
	var dirs []string
	confs, _ := filepath.Glob("/etc/ld.so.conf.d/*.conf")
	for _, c := range confs {
		f, err := os.Open(c)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(l, "/") {
				dirs = append(dirs, l)
			}
		}
		f.Close()
	}
	return dirs
}

func findRunFiles(bin string, extra []string) (*runFiles, error) {
	dirs := append(append([]string{}, libDirs...), extra...)
	rf := &runFiles{}
	seen := map[string]bool{}
	used := map[string]bool{}
	var usedOrder []string
	add := func(src, dst string) error {
		if seen[dst] {
			return nil
		}
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			return err
		}
		seen[dst] = true
		rf.binds = append(rf.binds, jail.Bind{Src: real, Dst: dst})
		return nil
	}
	var walk func(file string) error
	walk = func(file string) error {
		f, err := elf.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("reading the interpreter of %s: %w", file, err)
			}
			if err := add(strings.TrimRight(string(b), "\x00"), strings.TrimRight(string(b), "\x00")); err != nil {
				return err
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("reading the libraries of %s: %w", file, err)
		}
		for _, l := range libs {
			found := ""
			for _, d := range dirs {
				p := filepath.Join(d, l)
				if _, err := os.Stat(p); err == nil {
					found = p
					if !used[d] {
						used[d] = true
						usedOrder = append(usedOrder, d)
					}
					break
				}
			}
			if found == "" {
				return fmt.Errorf("library %s of %s not found in %s", l, file, strings.Join(dirs, ":"))
			}
			if seen[found] {
				continue
			}
			if err := add(found, found); err != nil {
				return err
			}
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	if err := add(bin, bin); err != nil {
		return nil, err
	}
	if err := walk(bin); err != nil {
		return nil, err
	}
	for _, m := range modules {
		p := filepath.Join(moduleDir, m)
		if _, err := os.Stat(p); err != nil {
			continue // built in, or a build without modules
		}
		if err := add(p, p); err != nil {
			return nil, err
		}
		if err := walk(p); err != nil {
			return nil, err
		}
	}
	for _, fw := range firmware {
		p := filepath.Join(firmwareDir, fw)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := add(p, p); err != nil {
			return nil, err
		}
	}
	rf.libPath = strings.Join(usedOrder, ":")
	return rf, nil
}
