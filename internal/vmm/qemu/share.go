package qemu

import (
	"fmt"

	"kiln.dev/kiln/internal/vmm"
)

// shareArgs shows s to the guest as virtio-9p on virtio-mmio, served by
// QEMU itself (the "local" fsdev): nothing else runs beside QEMU, so there
// is nothing more to supervise or reattach. A read-only share is refused
// writes by QEMU, whatever the guest's mount says.
//
// Unconfined (security_model=none), the guest sees the host's owners and
// modes, and files it creates belong to the user QEMU runs as. Jailed
// (mapped), security_model=mapped-xattr: what the guest sets as owner,
// mode or device number is kept in the file's user.virtfs.* extended
// attributes, never on the host file itself, so no setuid or setgid bit,
// no device node and no change of owner or mode reaches the host. Files
// and directories the guest makes are 0600 and 0700 on the host, owned by
// the directory's owner (the jail id-maps it to QEMU's uid).
func shareArgs(s vmm.Share, mapped bool) []string {
	model := "none"
	if mapped {
		model = "mapped-xattr"
	}
	fsdev := "local,id=" + s.ID + ",path=" + optValue(s.Path) + ",security_model=" + model
	if s.ReadOnly {
		fsdev += ",readonly=on"
	}
	return []string{"-fsdev", fsdev, "-device", "virtio-9p-device,fsdev=" + s.ID + ",mount_tag=" + s.Tag}
}

// rtcSlot is the position (0-based, in the order QEMU creates them) of the
// virtio device that microvm, without ACPI's second IOAPIC, wires to IRQ 8:
// its eight virtio-mmio transports take IRQs 12 down to 5, and IRQ 8 is
// the RTC's, so the guest cannot use a device there ("Flags mismatch irq
// 8"). kiln puts a device no guest driver claims in that slot.
const rtcSlot = 4

// irqFiller is the device that takes rtcSlot: a virtio mouse, which has no
// backend on the host and no driver in kiln's kernel (an imported kernel
// has it as a module that kiln-init does not load).
var irqFiller = []string{"-device", "virtio-mouse-device"}

// skipRTCIRQ returns the argv of devs, the VM's drives and shares, with the
// filler inserted where it takes rtcSlot. The network device and the
// virtio-serial device come before devs.
func skipRTCIRQ(devs [][]string, c *vmm.Config) []string {
	before := 0
	if c.Net != nil {
		before++
	}
	if len(c.Ports) > 0 {
		before++
	}
	var a []string
	for i, d := range devs {
		if !c.ACPI && before+i == rtcSlot {
			a = append(a, irqFiller...)
		}
		a = append(a, d...)
	}
	return a
}

// Virtio-mmio transports of microvm: eight on the first IOAPIC, 24 on the
// second one, which only a guest with ACPI finds.
const (
	transports     = 8
	transportsACPI = 24
)

// CheckDevices reports whether c's virtio devices fit microvm's
// transports; the error says how many mounts are too many.
func CheckDevices(c *vmm.Config) error {
	n, limit := len(c.Drives)+len(c.Shares), transports
	if c.Net != nil {
		n++
	}
	if len(c.Ports) > 0 {
		n++
	}
	if c.ACPI {
		limit = transportsACPI
	} else if n > rtcSlot {
		n++ // the filler
	}
	if n > limit {
		return fmt.Errorf("the VM needs %d virtio devices and microvm has %d: use %d fewer mounts", n, limit, n-limit)
	}
	return nil
}
