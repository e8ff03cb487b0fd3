package vmm

import (
	"context"
	"os"
)

// Saver is a VMM that can save its running guest (memory and device
// state) to a file, for a later run to resume from it (Config.Incoming).
// Backends that cannot leave it unimplemented; the runtime finds it by
// type assertion.
type Saver interface {
	// Save pauses the guest and writes its state to f. When it returns
	// without error the guest is paused, its disks flushed, and the
	// monitor still runs: the caller copies the disks, then calls
	// Resume or ends the monitor (Stop). On error the guest runs again.
	Save(ctx context.Context, f *os.File) error
	// Resume lets a guest paused by Save run again.
	Resume(ctx context.Context) error
}

// Pauser is a VMM that can freeze its running guest, vCPUs and clock,
// and let it run again (docker's pause and unpause). Backends that cannot
// leave it unimplemented; the runtime finds it by type assertion.
type Pauser interface {
	// Pause freezes the guest; the monitor runs on.
	Pause(ctx context.Context) error
	// Resume lets a paused guest run again.
	Resume(ctx context.Context) error
	// Paused reports whether the guest is paused.
	Paused(ctx context.Context) (bool, error)
}
