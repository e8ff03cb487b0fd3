// Package vmm is the small interface kiln's runtime drives a virtual machine
// monitor through, and the configuration every backend takes. Backends live
// in subpackages (qemu, firecracker); extras such as snapshots are separate
// small interfaces found by type assertion.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// VMM is one virtual machine run by a monitor process.
type VMM interface {
	// Start starts the monitor process and returns once it is up. The
	// process is not tied to ctx: a VM outlives the request that started it.
	Start(ctx context.Context) error
	// Wait blocks until the monitor process has exited, or ctx is done.
	Wait(ctx context.Context) error
	// Stop ends the VM through the monitor, escalating to signals; it
	// returns an error wrapping ErrTimeout when it had to force the VM off.
	Stop(ctx context.Context) error
	// Kill ends the monitor process at once.
	Kill() error
	// Info describes the running VM.
	Info() Info
}

// Info describes a VM's monitor process.
type Info struct {
	Backend string
	PID     int
	Running bool
	Accel   Accel
	Argv    []string // the monitor's command line, for logs and bug reports
}

// Sentinel errors of the VMM layer, checked with errors.Is.
var (
	// ErrTimeout: the VM did not stop within its grace period and was forced.
	ErrTimeout = errors.New("timed out")
	// ErrNotRunning: the VM's monitor process is not running.
	ErrNotRunning = errors.New("not running")
	// ErrUnavailable: the monitor binary or a device it needs is missing.
	ErrUnavailable = errors.New("unavailable")
)

// Accel is a CPU accelerator.
type Accel string

// Accelerators.
const (
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// ParseAccel parses an --accel value.
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(s); a {
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	case "":
		return AccelAuto, nil
	}
	return "", fmt.Errorf("invalid accelerator %q: use kvm, tcg or auto", s)
}

// Port is a host↔guest byte channel, shown to the guest as a virtio-serial
// port (QEMU) named Name. Exactly one of File and Socket is set.
type Port struct {
	Name string
	// File: the guest's writes are appended to this host file, whether or
	// not anyone on the host is reading.
	File string
	// Socket: a unix socket the monitor listens on; the host connects to
	// talk to the guest.
	Socket string
}

// Config describes a VM to a backend.
type Config struct {
	// ID names the VM; the monitor process carries it on its command line
	// so that a reused PID is never taken for this VM.
	ID string
	// Dir is the VM's state directory: the monitor's socket, pidfile,
	// console and log go there.
	Dir       string
	Kernel    string
	Initrd    string
	Cmdline   string
	MemoryMiB int
	CPUs      int
	// Accel must be resolved (kvm or tcg), not auto.
	Accel Accel
	// ACPI gives the guest ACPI tables, where it finds its devices; without
	// them the devices are listed on the kernel command line.
	ACPI  bool
	Ports []Port
	// Binary is the monitor executable; "" lets the backend find it.
	Binary string
	// StopTimeout bounds each escalation step of Stop; 0 means 3 s.
	StopTimeout time.Duration
}

// Validate reports whether c is complete.
func (c *Config) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("vm config: no ID")
	case c.Dir == "":
		return errors.New("vm config: no state directory")
	case c.Kernel == "":
		return errors.New("vm config: no kernel")
	case c.MemoryMiB <= 0:
		return fmt.Errorf("vm config: memory %d MiB: must be positive", c.MemoryMiB)
	case c.CPUs <= 0:
		return fmt.Errorf("vm config: %d CPUs: must be positive", c.CPUs)
	case c.Accel != AccelKVM && c.Accel != AccelTCG:
		return fmt.Errorf("vm config: accelerator %q: must be resolved to kvm or tcg", c.Accel)
	}
	for _, p := range c.Ports {
		if (p.File == "") == (p.Socket == "") {
			return fmt.Errorf("vm config: port %q needs exactly one of file and socket", p.Name)
		}
	}
	return nil
}
