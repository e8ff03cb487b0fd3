package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"kiln.dev/kiln/internal/atomicfile"
)

// ModulesDir is where an imported kernel's modules sit inside the initramfs.
const ModulesDir = "/kiln/modules"

// File is one file for the per-VM part of an initramfs: Data, or the host
// file at Source.
type File struct {
	Path   string // absolute path in the guest
	Mode   uint32 // permission bits
	Data   []byte
	Source string
}

// GuestModules returns the guest paths of k's modules in load order, as
// BaseInitramfs lays them out.
func GuestModules(k *Kernel) []string {
	out := make([]string, 0, len(k.Modules))
	for _, m := range k.Modules {
		out = append(out, path.Join(ModulesDir, filepath.Base(m)))
	}
	return out
}

// BaseInitramfs returns the path of the archive that every VM of kernel k
// shares: kiln-init as /init, the mount points, /dev/console, and k's
// modules. It is cached in cacheDir by the hash of its content, so a new
// kiln-init or a re-imported kernel gets a new archive and an unchanged one
// is built once.
func BaseInitramfs(cacheDir, initPath string, k *Kernel) (p string, err error) {
	inputs := append([]string{initPath}, k.Modules...)
	h := sha256.New()
	for _, in := range inputs {
		f, err := os.Open(in)
		if err != nil {
			return "", fmt.Errorf("reading initramfs input: %w", err)
		}
		fmt.Fprintf(h, "%s\x00", filepath.Base(in))
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hashing %s: %w", in, err)
		}
	}
	p = filepath.Join(cacheDir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:32]+".cpio")
	if cachedIntact(p) {
		return p, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("creating initramfs cache: %w", err)
	}
	tmp, err := os.CreateTemp(cacheDir, ".initramfs-*")
	if err != nil {
		return "", fmt.Errorf("creating initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	w := newCPIOWriter(io.MultiWriter(tmp, sum))
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "kiln", "kiln/modules", "usr", "usr/local", "usr/local/bin", "etc", "root"} {
		if err := w.Dir(d, 0o755); err != nil {
			return "", fmt.Errorf("writing initramfs: %w", err)
		}
	}
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return "", fmt.Errorf("writing initramfs: %w", err)
	}
	if err := w.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return "", fmt.Errorf("writing initramfs: %w", err)
	}
	if err := addHostFile(w, "init", 0o755, initPath); err != nil {
		return "", err
	}
	for _, m := range k.Modules {
		if err := addHostFile(w, path.Join(ModulesDir, filepath.Base(m)), 0o644, m); err != nil {
			return "", err
		}
	}
	if err := w.Close(); err != nil {
		return "", fmt.Errorf("writing initramfs: %w", err)
	}
	// The content's hash first, then the archive: an archive is only
	// used when its hash is there and matches.
	if err := atomicfile.WriteFile(p+sumSuffix, []byte(hex.EncodeToString(sum.Sum(nil))+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("storing initramfs: %w", err)
	}
	if err := atomicfile.Commit(tmp, p); err != nil {
		return "", fmt.Errorf("storing initramfs: %w", err)
	}
	markIntact(p)
	return p, nil
}

// sumSuffix names the file beside a cached archive that holds the SHA-256
// of its content.
const sumSuffix = ".sha256"

// intact remembers the cached archives this process has checked, by path,
// with the size and modification time they had then: each is hashed once
// per process, not once per VM.
var intact sync.Map // path -> fileStamp

type fileStamp struct {
	size  int64
	mtime int64
}

func stampOf(p string) (fileStamp, bool) {
	st, err := os.Stat(p)
	if err != nil {
		return fileStamp{}, false
	}
	return fileStamp{st.Size(), st.ModTime().UnixNano()}, true
}

func markIntact(p string) {
	if s, ok := stampOf(p); ok {
		intact.Store(p, s)
	}
}

// cachedIntact reports whether the archive at p exists and its content
// matches the hash stored beside it. One that does not (torn by a crash,
// emptied, changed by hand) is removed, to be built again.
func cachedIntact(p string) bool {
	s, ok := stampOf(p)
	if !ok {
		return false
	}
	if v, ok := intact.Load(p); ok && v.(fileStamp) == s {
		return true
	}
	want, err := os.ReadFile(p + sumSuffix)
	if err == nil {
		var f *os.File
		if f, err = os.Open(p); err == nil {
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err == nil && hex.EncodeToString(h.Sum(nil)) == strings.TrimSpace(string(want)) {
				intact.Store(p, s)
				return true
			}
		}
	}
	os.Remove(p)
	return false
}

func addHostFile(w *cpioWriter, name string, perm uint32, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("adding %s to initramfs: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("adding %s to initramfs: %w", name, err)
	}
	if err := w.File(name, perm, f, st.Size()); err != nil {
		return fmt.Errorf("adding %s to initramfs: %w", name, err)
	}
	return nil
}

// WriteInitrd writes the initrd of one VM to dst: the shared base archive
// followed by a second archive holding spec at the agent's spec path and
// files. The kernel unpacks both in turn.
func WriteInitrd(dst, base, specPath string, spec []byte, files []File) (err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating initrd: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing initrd: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("opening base initramfs: %w", err)
	}
	_, err = io.Copy(out, in)
	in.Close()
	if err != nil {
		return fmt.Errorf("copying base initramfs: %w", err)
	}
	w := newCPIOWriter(out)
	if err := mkdirs(w, map[string]bool{}, path.Dir(specPath)); err != nil {
		return err
	}
	if err := w.File(specPath, 0o600, bytes.NewReader(spec), int64(len(spec))); err != nil {
		return fmt.Errorf("writing spec to initrd: %w", err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if err := mkdirs(w, seen, path.Dir(f.Path)); err != nil {
			return err
		}
		if f.Source != "" {
			if err := addHostFile(w, f.Path, f.Mode, f.Source); err != nil {
				return err
			}
			continue
		}
		if err := w.File(f.Path, f.Mode, bytes.NewReader(f.Data), int64(len(f.Data))); err != nil {
			return fmt.Errorf("writing %s to initrd: %w", f.Path, err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("writing initrd: %w", err)
	}
	return nil
}

// mkdirs writes directory entries for dir and its parents (the kernel
// creates no parents while unpacking).
func mkdirs(w *cpioWriter, seen map[string]bool, dir string) error {
	if dir == "/" || dir == "." || seen[dir] {
		return nil
	}
	if err := mkdirs(w, seen, path.Dir(dir)); err != nil {
		return err
	}
	seen[dir] = true
	if err := w.Dir(dir, 0o755); err != nil {
		return fmt.Errorf("writing %s to initrd: %w", dir, err)
	}
	return nil
}
