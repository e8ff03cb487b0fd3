package qemu

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"

	"kiln.dev/kiln/internal/vmm"
)

// Backend is the QEMU backend: a microvm machine per run.
type Backend struct{}

var _ vmm.Backend = Backend{}

// Name is "qemu".
func (Backend) Name() string { return "qemu" }

// Prepare resolves QEMU's binary, turns ACPI on for a kernel capable of it
// when the devices need microvm's second IOAPIC, sets the microvm guest's
// kernel command line, and checks the devices fit microvm's virtio-mmio
// transports.
func (Backend) Prepare(cfg *vmm.Config) error {
	bin, err := FindBinary(cfg.Binary)
	if err != nil {
		return err
	}
	cfg.Binary = bin
	if !cfg.ACPI && cfg.ACPICapable && CheckDevices(cfg) != nil {
		cfg.ACPI = true
	}
	cfg.Cmdline = Cmdline(cfg.Accel, cfg.ACPI, TSCKHz())
	if err := CheckDevices(cfg); err != nil {
		return fmt.Errorf("too many mounts: %w", err)
	}
	return nil
}

// New returns the Machine of a new run; log may be nil.
func (Backend) New(cfg vmm.Config, log *slog.Logger) (vmm.VMM, error) {
	return New(cfg, logger(log)...)
}

// Attach takes over a running QEMU (Attach); log may be nil.
func (Backend) Attach(cfg vmm.Config, log *slog.Logger) (vmm.VMM, error) {
	return Attach(cfg, logger(log)...)
}

func logger(log *slog.Logger) []Option {
	if log == nil {
		return nil
	}
	return []Option{WithLogger(log)}
}

// Reap kills the QEMU of VM id in dir, found as FindProcess finds it.
func (Backend) Reap(dir, id string) (int, error) {
	pid, err := FindProcess(dir, id)
	if err != nil {
		return 0, nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return pid, fmt.Errorf("killing QEMU pid %d: %w", pid, err)
	}
	return pid, nil
}

// TSCKHz returns the host's TSC frequency in kHz from /proc/cpuinfo, or 0.
func TSCKHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
