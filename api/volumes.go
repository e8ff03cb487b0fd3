package api

import "time"

// Mount is a filesystem a VM gets besides its root.
type Mount struct {
	// Type is "volume" (a named volume, created when missing), "bind" (a
	// host directory shared live) or "bake" (a host directory copied into
	// the VM when it is created, read-only).
	Type string `json:"type"`
	// Source is the volume's name, or an absolute host path.
	Source string `json:"source"`
	// Target is the absolute path in the guest.
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Anonymous: a volume of the VM's own, with no Source; the daemon
	// names it. It goes with the VM on DELETE ?v=1 and with autoRemove.
	Anonymous bool `json:"anonymous,omitempty"`
}

// Volume is a named volume.
type Volume struct {
	Name    string    `json:"name"`
	SizeMiB int       `json:"sizeMiB"`
	Created time.Time `json:"created"`
	// UsedBytes is what the volume's disk image takes on the host (its
	// allocated blocks: the image is sparse).
	UsedBytes int64 `json:"usedBytes"`
	// Anonymous: made by `-v /path` for one VM, removed with it by
	// `kiln rm -v` and `--rm`.
	Anonymous bool `json:"anonymous,omitempty"`
	// Path is the disk image on the host.
	Path string `json:"path"`
	// Labels are the user's metadata.
	Labels map[string]string `json:"labels,omitempty"`
	// UsedBy are the names of the VMs that refer to the volume, running
	// or not; while there are any it cannot be removed.
	UsedBy []string `json:"usedBy,omitempty"`
	// AttachedTo is the running VM that has the volume, if any.
	AttachedTo string `json:"attachedTo,omitempty"`
}

// VolumeCreateRequest asks for a named volume.
type VolumeCreateRequest struct {
	Name string `json:"name"`
	// SizeMiB is the volume's size; 0 means 10 GiB. The disk image is
	// sparse: it takes only what the guest writes.
	SizeMiB int `json:"sizeMiB,omitempty"`
	// Labels are the user's metadata, shown by inspect, matched by ls's
	// label filter.
	Labels map[string]string `json:"labels,omitempty"`
}

// VolumePruneResponse answers a prune.
type VolumePruneResponse struct {
	Removed []string `json:"removed"`
	// SpaceReclaimed is the bytes the removed volumes took on the host.
	SpaceReclaimed int64 `json:"spaceReclaimed"`
}
