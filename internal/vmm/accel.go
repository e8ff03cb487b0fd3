package vmm

import (
	"errors"
	"fmt"
	"os"
)

// Host is what accelerator detection looks at; tests replace it.
type Host struct {
	// Stat reports whether a path exists (os.Stat by default).
	Exists func(path string) bool
	// OpenRW reports whether a device can be opened read-write.
	OpenRW func(path string) error
}

// RealHost looks at this machine.
var RealHost = Host{
	Exists: func(p string) bool { _, err := os.Stat(p); return err == nil },
	OpenRW: func(p string) error {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		return f.Close()
	},
}

// AccelChoice is the outcome of choosing an accelerator.
type AccelChoice struct {
	Accel Accel
	// Reason explains the choice, for `kiln doctor`.
	Reason string
	// Warning is set when kiln falls back to TCG on its own: VMs work but
	// run under software emulation. It is shown once per `run`.
	Warning string
}

// ChooseAccel picks the accelerator for requested (auto, kvm or tcg).
//
// KVM is used only where it can run kiln's stock guest kernel. /dev/kvm can
// be PVM (the kvm_pvm module), which runs only PVM-patched guest kernels: a
// stock kernel hangs silently after "Probing EDD". auto then takes TCG with a
// warning; an explicit kvm is honoured (a PVM guest kernel may be
// configured) and a hang is caught by the boot deadline.
func (h Host) ChooseAccel(requested Accel) (AccelChoice, error) {
	kvmErr := h.kvmUsable()
	switch requested {
	case AccelTCG:
		return AccelChoice{Accel: AccelTCG, Reason: "TCG requested (--accel tcg)"}, nil
	case AccelKVM:
		if kvmErr != nil && !errors.Is(kvmErr, errPVM) && !errors.Is(kvmErr, errUnknownKVM) {
			return AccelChoice{}, fmt.Errorf("--accel kvm: %w", kvmErr)
		}
		c := AccelChoice{Accel: AccelKVM, Reason: "KVM requested (--accel kvm)"}
		if errors.Is(kvmErr, errPVM) {
			c.Warning = "KVM here is PVM, which boots only PVM-patched guest kernels; a stock kernel will not reach kiln-init"
		}
		return c, nil
	case AccelAuto, "":
		if kvmErr == nil {
			return AccelChoice{Accel: AccelKVM, Reason: "/dev/kvm is usable hardware KVM"}, nil
		}
		return AccelChoice{
			Accel:   AccelTCG,
			Reason:  "TCG (software emulation): " + kvmErr.Error(),
			Warning: "using TCG software emulation, VMs run slower: " + kvmErr.Error(),
		}, nil
	}
	return AccelChoice{}, fmt.Errorf("invalid accelerator %q: use kvm, tcg or auto", requested)
}

var errUnknownKVM = errors.New("/dev/kvm is not backed by kvm_intel or kvm_amd, so kiln cannot tell whether it boots a stock kernel")

var errPVM = errors.New("/dev/kvm is PVM (module kvm_pvm), which cannot boot kiln's stock guest kernel")

// kvmUsable reports why KVM cannot run kiln's kernel, or nil when it can.
func (h Host) kvmUsable() error {
	if !h.Exists("/dev/kvm") {
		return errors.New("/dev/kvm does not exist (no KVM on this host: enable virtualization, or load kvm_intel/kvm_amd)")
	}
	if err := h.OpenRW("/dev/kvm"); err != nil {
		return fmt.Errorf("/dev/kvm cannot be opened (add yourself to the kvm group): %w", err)
	}
	if h.Exists("/sys/module/kvm_pvm") {
		return errPVM
	}
	if !h.Exists("/sys/module/kvm_intel") && !h.Exists("/sys/module/kvm_amd") {
		return errUnknownKVM
	}
	return nil
}
