package vmm

import "log/slog"

// Backend is one kind of monitor (QEMU; a Firecracker or a
// snapshot-restoring backend would be others): it makes the VMM of each
// run of a VM and finds the monitor of a run started earlier. kiln's
// runtime reaches monitors only through a Backend, so a backend (or a fake
// one in tests, package vmmtest) is chosen in one place.
type Backend interface {
	// Name names the backend, as Info.Backend does.
	Name() string
	// Prepare completes the config of a new VM for this backend, once,
	// when the VM is made: it resolves the monitor binary into Binary
	// (failing with ErrUnavailable and the fix when it is missing), sets
	// the guest kernel's command line the backend's machine needs, and
	// checks that the VM's devices fit that machine.
	Prepare(cfg *Config) error
	// New returns the monitor of a new run of cfg; nothing runs until
	// its Start.
	New(cfg Config, log *slog.Logger) (VMM, error)
	// Attach takes over the running monitor of cfg, started earlier,
	// perhaps by another process; an error wrapping ErrNotRunning when
	// it is gone.
	Attach(cfg Config, log *slog.Logger) (VMM, error)
	// Reap ends the monitor of VM id in dir that no record knows (the
	// daemon died before recording the VM), if one runs, and returns its
	// PID (0 when none ran).
	Reap(dir, id string) (int, error)
}
