package qemu

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/vmm"
)

// File names inside a VM's state directory.
const (
	QMPSocket  = "qmp.sock"
	PIDFile    = "qemu.pid"
	ConsoleLog = "console.log"
	StderrLog  = "qemu.log"
)

// qmpFD is the descriptor number QEMU inherits its pre-made QMP listener on;
// listeners of socket ports follow it in the order of Config.Ports.
const qmpFD = 3

// ProcessName is what QEMU's -name carries for VM id: the mark by which a PID
// found in a pidfile is checked to still be this VM.
func ProcessName(id string) string { return "kiln-" + id }

// Argv returns the QEMU command line for c (which must be valid). It is a
// pure function of its input, so the exact strings are tested as a table.
//
// The machine is microvm, with acpi=off unless the kernel needs ACPI: the
// guest kernel then finds the virtio-mmio devices on its command line, where
// QEMU appends them. No
// device is created implicitly (-nodefaults, -nic none); the serial console
// goes to a file; the listeners for QMP and socket ports are made by kiln
// before QEMU starts and handed over as descriptors, so nothing races to
// connect to them.
func Argv(binary string, c *vmm.Config) []string {
	cpu := "max"
	if c.Accel == vmm.AccelKVM {
		cpu = "host"
	}
	acpi := "off"
	if c.ACPI {
		acpi = "on"
	}
	a := []string{
		binary,
		"-name", ProcessName(c.ID),
		"-M", "microvm,acpi=" + acpi + ",rtc=on,pit=on,pic=on,isa-serial=on",
		"-accel", string(c.Accel),
		"-cpu", cpu,
		"-m", strconv.Itoa(c.MemoryMiB) + "M",
		"-smp", strconv.Itoa(c.CPUs),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", c.Kernel,
	}
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	a = append(a,
		"-append", c.Cmdline,
		"-chardev", "file,id=console,path="+filepath.Join(c.Dir, ConsoleLog)+",append=on",
		"-serial", "chardev:console",
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", qmpFD),
		"-mon", "chardev=qmp,mode=control",
		"-nic", "none",
	)
	if len(c.Ports) > 0 {
		a = append(a, "-device", "virtio-serial-device,max_ports="+strconv.Itoa(len(c.Ports)+1))
	}
	fd := qmpFD
	for i, p := range c.Ports {
		id := "port" + strconv.Itoa(i)
		if p.File != "" {
			a = append(a, "-chardev", "file,id="+id+",path="+p.File+",append=on")
		} else {
			fd++
			a = append(a, "-chardev", fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", id, fd))
		}
		a = append(a, "-device", "virtserialport,chardev="+id+",name="+p.Name)
	}
	return a
}

// Cmdline returns the guest kernel command line. Under TCG the guest is told
// the host's TSC frequency (khz > 0): on a busy host it otherwise often
// fails to calibrate the TSC against the PIT, marks it unstable and hangs.
func Cmdline(accel vmm.Accel, tscKHz int, extra ...string) string {
	parts := []string{"console=ttyS0", "reboot=t", "panic=-1", "quiet", "8250.nr_uarts=1"}
	if accel == vmm.AccelTCG && tscKHz > 0 {
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(tscKHz), "tsc=reliable")
	}
	parts = append(parts, extra...)
	return strings.Join(parts, " ")
}
