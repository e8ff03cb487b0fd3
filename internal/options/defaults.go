package options

import "time"

// Defaults and bounds of a VM.
const (
	DefaultMemoryMiB   = 256
	MinMemoryMiB       = 64
	DefaultBootTimeout = 60 * time.Second
	DefaultStopGrace   = 10 * time.Second
)

// Disk sizes, in MiB.
const (
	DefaultDiskMiB = 10 << 10
	MinDiskMiB     = 16
	MaxDiskMiB     = 16 << 20 // ext4's limit with 4 KiB blocks
)

// Image modes (--mode).
const (
	ModeFull   = "full"
	ModeBinary = "binary"
	// ModeLabel is the image label that picks the mode when none is given
	// ("binary" or "full").
	ModeLabel = "dev.kiln.mode"
)

// Pull policies (--pull).
const (
	PullMissing = "missing"
	PullAlways  = "always"
	PullNever   = "never"
)
