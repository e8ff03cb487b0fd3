// Package kernel provides guest kernels and their initramfs: the default
// kernel built from Debian's linux-source package with kiln's microVM config
// fragment, kernels imported from elsewhere (with the modules they need), and
// the initramfs that carries kiln-init, those modules and each VM's spec.
package kernel

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"
)

// Fragment is kiln's microVM kernel config, applied on top of tinyconfig.
//
//go:embed config/microvm-x86_64.config
var Fragment string

// DefaultName is the name of the kernel kiln boots when none is given.
const DefaultName = "default"

// ErrNotFound is returned when a kernel is not in the store.
var ErrNotFound = errors.New("kernel not found")

// Kernel is a guest kernel in the store.
type Kernel struct {
	Name string `json:"name"`
	// Path is the kernel image: an uncompressed vmlinux (booted through
	// PVH) or a bzImage/vmlinuz.
	Path string `json:"path"`
	// Modules are host paths of the modules kiln-init loads, in load order.
	Modules []string `json:"modules,omitempty"`
	// Origin says where the kernel came from ("built from linux-source-6.1
	// 6.1.192-2", "imported from /boot/vmlinuz-…").
	Origin string `json:"origin"`
	// Key identifies what it was made from; for a built kernel, the source
	// version and the config fragment's hash.
	Key string `json:"key"`
	// ACPI says the kernel finds its virtio-mmio devices through ACPI
	// tables rather than the command line (virtio_mmio.device=), as
	// distribution kernels built without VIRTIO_MMIO_CMDLINE_DEVICES do.
	ACPI bool `json:"acpi,omitempty"`
	// ACPICapable says a kernel that takes its devices from the command
	// line can also find them through ACPI (CONFIG_ACPI): a VM with more
	// devices than microvm wires without ACPI boots it with ACPI.
	ACPICapable bool      `json:"acpiCapable,omitempty"`
	Created     time.Time `json:"created"`
	Size        int64     `json:"size"`
	// Objects is how many objects a build compiled (0 for an imported
	// kernel): the next build's progress counts against it.
	Objects int `json:"objects,omitempty"`
}

// Store holds kernels under <root>/kernels/<name>/.
type Store struct {
	dir string
}

// NewStore returns the store of the kiln root.
func NewStore(root string) *Store { return &Store{dir: filepath.Join(root, "kernels")} }

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateName reports whether name can name a kernel.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid kernel name %q: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit", name)
	}
	return nil
}

// Get returns the kernel called name.
func (s *Store) Get(name string) (*Kernel, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.dir, name, "kernel.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kernel %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading kernel %q: %w", name, err)
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("parsing kernel %q: %w", name, err)
	}
	if _, err := os.Stat(k.Path); err != nil {
		return nil, fmt.Errorf("kernel %q image: %w", name, err)
	}
	return &k, nil
}

// List returns the kernels in the store, by name.
func (s *Store) List() ([]*Kernel, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing kernels: %w", err)
	}
	var out []*Kernel
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		k, err := s.Get(e.Name())
		if err != nil {
			continue // a half-removed or foreign directory is not a kernel
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Resolve returns the kernel named by ref: a store name, or a path to a
// kernel image on the host (anything containing a slash), booted without
// modules.
func (s *Store) Resolve(ref string) (*Kernel, error) {
	if ref == "" {
		ref = DefaultName
	}
	if filepath.Base(ref) != ref {
		abs, err := filepath.Abs(ref)
		if err != nil {
			return nil, fmt.Errorf("resolving kernel path %q: %w", ref, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("kernel image: %w", err)
		}
		k := &Kernel{Name: abs, Path: abs, Origin: "file " + abs, Size: st.Size()}
		// A kernel of a store (or a copy with its config) given by path:
		// its config says whether it can boot with ACPI too.
		if config := filepath.Join(filepath.Dir(abs), "config"); fileExists(config) {
			if needs, capable, err := kernelACPI(config, abs); err == nil && !needs {
				k.ACPICapable = capable
			}
		}
		return k, nil
	}
	return s.Get(ref)
}

// Remove deletes the kernel called name.
func (s *Store) Remove(name string) error {
	if _, err := s.Get(name); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("removing kernel %q: %w", name, err)
	}
	return nil
}

// install moves the prepared directory tmp into place as kernel k, replacing
// any kernel of that name. tmp must be inside s.dir.
func (s *Store) install(tmp string, k *Kernel) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding kernel %q: %w", k.Name, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "kernel.json"), b, 0o644); err != nil {
		return fmt.Errorf("writing kernel %q: %w", k.Name, err)
	}
	final := filepath.Join(s.dir, k.Name)
	old := final + ".old"
	os.RemoveAll(old)
	if err := os.Rename(final, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replacing kernel %q: %w", k.Name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Rename(old, final)
		return fmt.Errorf("installing kernel %q: %w", k.Name, err)
	}
	os.RemoveAll(old)
	return nil
}

// tempDir makes a scratch directory in the store for building a kernel.
func (s *Store) tempDir(name string) (string, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return "", fmt.Errorf("creating kernel store: %w", err)
	}
	d, err := os.MkdirTemp(s.dir, "."+name+"-*")
	if err != nil {
		return "", fmt.Errorf("creating kernel scratch dir: %w", err)
	}
	return d, nil
}

func hashStrings(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
