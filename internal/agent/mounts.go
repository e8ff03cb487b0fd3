package agent

import (
	"fmt"
	"path"
)

// Mount kinds (Mount.Kind).
const (
	// MountDisk is a block device found by serial, holding FSType. With
	// SubDir the guest mounts the disk out of sight and binds SubDir of it
	// at Target (a named volume); without, the disk at Target (a baked
	// directory).
	MountDisk = "disk"
	// Mount9P is a host directory shared over virtio-9p, found by Tag.
	Mount9P = "9p"
)

// Mount is a filesystem kiln-init mounts at Target before the program
// starts: in an image VM on the new root before the switch, in a bare VM
// in the initramfs. Mounts are made in the order given (parents first).
type Mount struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	// Serial and FSType find and mount a disk (MountDisk).
	Serial string `json:"serial,omitempty"`
	FSType string `json:"fsType,omitempty"`
	// SubDir is the directory of the disk's filesystem that is mounted at
	// Target. When it does not exist yet (a volume's first use) kiln-init
	// makes it with the owner and mode of Target in the image and copies
	// Target's content into it, as docker does for an empty volume.
	SubDir string `json:"subDir,omitempty"`
	// Tag is the mount tag of a 9p share (Mount9P).
	Tag      string `json:"tag,omitempty"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

func (m *Mount) validate() error {
	if !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" {
		return fmt.Errorf("spec mount: target %q: want a clean absolute path other than /", m.Target)
	}
	switch m.Kind {
	case MountDisk:
		if m.Serial == "" || m.FSType == "" {
			return fmt.Errorf("spec mount %s: a disk needs a serial and a filesystem type", m.Target)
		}
		if m.SubDir != "" && (path.IsAbs(m.SubDir) || path.Clean(m.SubDir) != m.SubDir || m.SubDir == ".." || len(m.SubDir) > 2 && m.SubDir[:3] == "../") {
			return fmt.Errorf("spec mount %s: subdirectory %q: want a clean relative path inside the disk", m.Target, m.SubDir)
		}
	case Mount9P:
		if m.Tag == "" {
			return fmt.Errorf("spec mount %s: a 9p share needs a tag", m.Target)
		}
	default:
		return fmt.Errorf("spec mount %s: unknown kind %q", m.Target, m.Kind)
	}
	return nil
}
