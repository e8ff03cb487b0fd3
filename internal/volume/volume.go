// Package volume keeps kiln's named volumes: each is a sparse disk image
// holding an ext4 filesystem, in a directory of its own under the kiln
// root, that VMs attach as a virtio-blk drive and that outlives them.
//
//	<root>/volumes/<name>/volume.json   name, size, creation time
//	<root>/volumes/<name>/disk.ext4     the disk image (sparse)
//
// A volume appears and disappears by a rename, so a reader never sees one
// half made or half removed. Which VMs use a volume is not recorded here:
// the VMs' specs say it (see supervisor.Supervisor).
package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
)

// Sizes, in MiB: a volume's disk is sized as a VM's own disk is.
const (
	DefaultSizeMiB = options.DefaultDiskMiB
	MinSizeMiB     = options.MinDiskMiB
	MaxSizeMiB     = options.MaxDiskMiB
)

// File names in a volume's directory.
const (
	metaFile = "volume.json"
	// DiskFile is the volume's disk image.
	DiskFile = "disk.ext4"
	// FSType is the filesystem on a volume's disk.
	FSType = "ext4"
	// DataDir is the directory on the volume's filesystem that the guest
	// mounts at the target: the filesystem's root also holds lost+found,
	// which programs that want an empty directory (initdb) refuse.
	DataDir = "data"
)

// Volume is one named volume.
type Volume struct {
	Name    string    `json:"name"`
	SizeMiB int       `json:"sizeMiB"`
	Created time.Time `json:"created"`
	// Anonymous: made for one VM by `-v /path` (its name is random); it
	// goes with that VM on `kiln rm -v` and with a `--rm` VM.
	Anonymous bool `json:"anonymous,omitempty"`
	// Labels are the user's metadata (docker's volume create --label).
	Labels map[string]string `json:"labels,omitempty"`
	// Dir is the volume's directory on the host (not stored).
	Dir string `json:"-"`
}

// Disk returns the host path of the volume's disk image.
func (v *Volume) Disk() string { return filepath.Join(v.Dir, DiskFile) }

// UsedBytes returns the bytes the volume's disk takes on the host: its
// allocated blocks, not its size (the file is sparse).
func (v *Volume) UsedBytes() int64 {
	var st unix.Stat_t
	if err := unix.Stat(v.Disk(), &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// Store is the volumes under one kiln root.
type Store struct {
	dir string
}

// Open returns the store of volumes under the kiln root, creating its
// directory.
func Open(root string) (*Store, error) {
	dir := filepath.Join(root, "volumes")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating volume directory: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the directory holding the volumes.
func (s *Store) Dir() string { return s.dir }

// Create makes a volume of sizeMiB (0: DefaultSizeMiB) with labels. It
// returns an error wrapping errdefs.ErrConflict when one of that name
// exists.
func (s *Store) Create(ctx context.Context, name string, sizeMiB int, labels map[string]string) (*Volume, error) {
	return s.create(ctx, &Volume{Name: name, SizeMiB: sizeMiB, Labels: labels})
}

// CreateAnonymous makes a volume of the default size with a random name
// of 32 hex digits.
func (s *Store) CreateAnonymous(ctx context.Context) (*Volume, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("naming an anonymous volume: %w", err)
	}
	return s.create(ctx, &Volume{Name: hex.EncodeToString(b), Anonymous: true})
}

func (s *Store) create(ctx context.Context, v *Volume) (*Volume, error) {
	name, sizeMiB := v.Name, v.SizeMiB
	if err := options.ValidateVolumeName(name); err != nil {
		return nil, err
	}
	if sizeMiB == 0 {
		sizeMiB = DefaultSizeMiB
	}
	if sizeMiB < MinSizeMiB || sizeMiB > MaxSizeMiB {
		return nil, errdefs.Invalid(fmt.Sprintf("invalid volume size %dm: allowed %dm to %dm", sizeMiB, MinSizeMiB, MaxSizeMiB))
	}
	final := filepath.Join(s.dir, name)
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("volume %s already exists: %w", name, errdefs.ErrConflict)
	}
	if err := disk.CheckFree(s.dir); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.dir, ".new-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("creating volume %s: %w", name, err)
	}
	defer os.RemoveAll(tmp) // gone after the rename
	v.SizeMiB, v.Created, v.Dir = sizeMiB, time.Now().UTC(), tmp
	if err := disk.MakeExt4(ctx, v.Disk(), sizeMiB, "kiln-volume"); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding volume %s: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(tmp, metaFile), b, 0o600); err != nil {
		return nil, fmt.Errorf("writing volume %s: %w", name, err)
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("creating volume %s: %w", name, err)
	}
	// rename(2) of a directory onto an existing non-empty one fails: two
	// creators of one name cannot both win.
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			return nil, fmt.Errorf("volume %s already exists: %w", name, errdefs.ErrConflict)
		}
		return nil, fmt.Errorf("creating volume %s: %w", name, err)
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return nil, fmt.Errorf("creating volume %s: %w", name, err)
	}
	v.Dir = final
	return v, nil
}

// Get returns the volume called name, or an error wrapping
// errdefs.ErrNotFound.
func (s *Store) Get(name string) (*Volume, error) {
	if err := options.ValidateVolumeName(name); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, name)
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no such volume: %s: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading volume %s: %w", name, err)
	}
	var v Volume
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("parsing volume %s: %w", name, err)
	}
	v.Dir = dir
	return &v, nil
}

// List returns the volumes whose records can be read, sorted by name.
func (s *Store) List() ([]*Volume, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing volumes: %w", err)
	}
	var out []*Volume
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		v, err := s.Get(e.Name())
		if err != nil {
			// Removed meanwhile, not a volume, or a record that cannot be
			// read: one bad volume does not hide the others (inspect
			// names what is wrong with it).
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes the volume called name and its data. Whether a VM uses
// it is for the caller to check first.
func (s *Store) Remove(name string) error {
	v, err := s.Get(name)
	if err != nil {
		return err
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	gone := filepath.Join(s.dir, ".rm-"+name+"-"+hex.EncodeToString(b))
	if err := os.Rename(v.Dir, gone); err != nil {
		return fmt.Errorf("removing volume %s: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("removing volume %s: %w", name, err)
	}
	return nil
}
