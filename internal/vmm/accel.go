package vmm

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Host is what accelerator detection looks at; tests replace it.
type Host struct {
	// Exists reports whether a path exists (os.Stat by default).
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

// The paths the probe reads.
const (
	devKVM    = "/dev/kvm"
	sysModule = "/sys/module/"
)

// kvmModules are the modules that can back /dev/kvm, in the order doctor
// names them.
var kvmModules = []string{"kvm_intel", "kvm_amd", "kvm_pvm"}

// KVMProbe is what a host presents about KVM: every fact the accelerator
// choice depends on, read once, so that the choice itself is a pure function.
type KVMProbe struct {
	// Dev reports whether /dev/kvm exists.
	Dev bool
	// OpenErr is why /dev/kvm could not be opened read-write (nil when it
	// could, or when it does not exist).
	OpenErr error
	// Modules are the loaded modules of kvmModules that back KVM.
	Modules []string
}

// Probe reads what this host presents about KVM.
func (h Host) Probe() KVMProbe {
	var p KVMProbe
	p.Dev = h.Exists(devKVM)
	if p.Dev {
		p.OpenErr = h.OpenRW(devKVM)
	}
	for _, m := range kvmModules {
		if h.Exists(sysModule + m) {
			p.Modules = append(p.Modules, m)
		}
	}
	return p
}

func (p KVMProbe) has(module string) bool {
	for _, m := range p.Modules {
		if m == module {
			return true
		}
	}
	return false
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

// ChooseAccel picks the accelerator for requested (auto, kvm or tcg) on what
// h presents.
func (h Host) ChooseAccel(requested Accel) (AccelChoice, error) {
	return h.Probe().Choose(requested)
}

// Choose picks the accelerator for requested (auto, kvm or tcg) on a host
// that presents p. It reads nothing.
//
// KVM is used only where it can run kiln's stock guest kernel. /dev/kvm can
// be PVM (the kvm_pvm module), which runs only PVM-patched guest kernels: a
// stock kernel hangs silently after "Probing EDD". auto then takes TCG with a
// warning; an explicit kvm is honoured (a PVM guest kernel may be
// configured) and a hang is caught by the boot deadline.
func (p KVMProbe) Choose(requested Accel) (AccelChoice, error) {
	kvmErr := p.Usable()
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
			return AccelChoice{Accel: AccelKVM, Reason: "/dev/kvm is usable hardware KVM (" + strings.Join(p.Modules, ", ") + ")"}, nil
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

var errPVM = errors.New("/dev/kvm is PVM (module kvm_pvm), which cannot boot kiln's stock guest kernel; kiln uses TCG (for KVM, run on a host with kvm_intel or kvm_amd)")

// Usable reports why KVM cannot run kiln's kernel on a host that presents
// p, or nil when it can. Each message names every fact that led to it and
// what to do.
func (p KVMProbe) Usable() error {
	if !p.Dev {
		switch {
		case p.has("kvm_pvm"):
			return errors.New("/dev/kvm does not exist although module kvm_pvm is loaded (this host is likely itself a VM without nested virtualization; PVM would boot only PVM-patched guest kernels anyway, so kiln uses TCG: nothing to fix unless you want KVM, which needs a host with kvm_intel or kvm_amd and /dev/kvm)")
		case len(p.Modules) > 0:
			return fmt.Errorf("/dev/kvm does not exist although module %s is loaded (create the device node: mknod -m 660 /dev/kvm c 10 232, or reload the module so udev makes it)", p.Modules[0])
		}
		return errors.New("/dev/kvm does not exist and no KVM module is loaded (no KVM on this host: enable virtualization in the firmware or hypervisor, then modprobe kvm_intel or kvm_amd)")
	}
	if p.OpenErr != nil {
		return fmt.Errorf("/dev/kvm cannot be opened (add yourself to the kvm group): %w", p.OpenErr)
	}
	if p.has("kvm_pvm") {
		return errPVM
	}
	if !p.has("kvm_intel") && !p.has("kvm_amd") {
		return errUnknownKVM
	}
	return nil
}
