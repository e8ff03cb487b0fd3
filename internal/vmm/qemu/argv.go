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
	ConsoleLog = vmm.ConsoleLog
	// ConsolePipe names the serial console's FIFOs (vmm.ConsolePipe).
	ConsolePipe = vmm.ConsolePipe
	StderrLog   = "qemu.log"
)

// Sandbox is QEMU's seccomp filter for kiln's VMs: every group of system
// calls QEMU can deny is denied. spawn=deny rules out what forks (slirp's
// smb=, a tap's scripts), which kiln does not use.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

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
// goes to a FIFO (ConsolePipe); the listeners for QMP and socket ports are made by kiln
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
	}
	if c.Sandbox {
		a = append(a, "-sandbox", Sandbox)
	}
	a = append(a, "-kernel", c.Kernel)
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	a = append(a,
		"-append", c.Cmdline,
		"-chardev", "pipe,id=console,path="+optValue(filepath.Join(c.Dir, ConsolePipe)),
		"-serial", "chardev:console",
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", qmpFD),
		"-mon", "chardev=qmp,mode=control",
	)
	if c.IncomingFD > 0 {
		// Resume a saved guest from the inherited descriptor; QEMU runs
		// it once loaded (no -S).
		a = append(a, "-incoming", "fd:"+strconv.Itoa(c.IncomingFD))
	}
	a = append(a, netArgs(c.Net)...)
	if len(c.Ports) > 0 {
		a = append(a, "-device", "virtio-serial-device,max_ports="+strconv.Itoa(len(c.Ports)+1))
	}
	fd := qmpFD
	for i, p := range c.Ports {
		id := "port" + strconv.Itoa(i)
		if p.File != "" {
			a = append(a, "-chardev", "file,id="+id+",path="+optValue(p.File)+",append=on")
		} else if p.Pipe != "" {
			a = append(a, "-chardev", "pipe,id="+id+",path="+optValue(p.Pipe))
		} else {
			fd++
			a = append(a, "-chardev", fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", id, fd))
		}
		a = append(a, "-device", "virtserialport,chardev="+id+",name="+p.Name)
	}
	var devs [][]string
	for _, d := range c.Drives {
		devs = append(devs, driveArgs(d))
	}
	for _, s := range c.Shares {
		devs = append(devs, shareArgs(s, c.Jail != nil))
	}
	return append(a, skipRTCIRQ(devs, c)...)
}

// netArgs gives the VM its network interface: none ("-nic none", as
// -nodefaults alone would still leave a default NIC on some machines), or a
// virtio-net device on a user-mode (slirp) backend whose hostfwd rules are
// the published ports. A forward with no guest address goes to slirp's
// first DHCP address, 10.0.2.15, which kiln-init gives eth0 statically.
func netArgs(n *vmm.NetConfig) []string {
	if n == nil {
		return []string{"-nic", "none"}
	}
	if n.Mode == vmm.NetTAP {
		return tapArgs(n)
	}
	if n.Mode == vmm.NetUnplugged {
		return []string{
			"-netdev", "hubport,id=net0,hubid=0",
			"-device", "virtio-net-device,netdev=net0,mac=" + optValue(n.MAC),
		}
	}
	netdev := "user,id=net0"
	for _, f := range n.Forwards {
		netdev += ",hostfwd=" + optValue(fmt.Sprintf("%s:%s:%d-:%d", f.Protocol, f.HostIP, f.HostPort, f.GuestPort))
	}
	return []string{
		"-netdev", netdev,
		"-device", "virtio-net-device,netdev=net0,mac=" + optValue(n.MAC),
	}
}

// driveArgs attaches d as a virtio-blk device on virtio-mmio. A read-only
// drive (an image's root filesystem, shared by every VM of the image) goes
// through the host page cache, so VMs of one image share its cached pages;
// a writable one (a VM's own disk) too, with the guest's flushes honoured
// (cache=writeback is QEMU's safe default, unlike cache=unsafe).
func driveArgs(d vmm.Drive) []string {
	opts := "file=" + optValue(d.Path) + ",if=none,id=" + d.ID + ",format=raw"
	if d.ReadOnly {
		opts += ",readonly=on"
	}
	// A write or read error (the host's filesystem full, an I/O error)
	// reaches the guest as an I/O error on that disk, as a failing disk
	// would; QEMU's default stops the whole VM instead, which kiln would
	// show as running while nothing in it runs.
	opts += ",cache=writeback,werror=report,rerror=report"
	dev := "virtio-blk-device,drive=" + d.ID
	if d.Serial != "" {
		dev += ",serial=" + d.Serial
	}
	return []string{"-drive", opts, "-device", dev}
}

// optValue escapes a value inside a QEMU option list, where a comma
// separates options and ",," stands for a literal comma.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Cmdline returns the guest kernel command line. Under TCG the guest is told
// the host's TSC frequency (khz > 0): on a busy host it otherwise often
// fails to calibrate the TSC against the PIT, marks it unstable and hangs.
func Cmdline(accel vmm.Accel, acpi bool, tscKHz int, extra ...string) string {
	// no_timer_check: the kernel's check that the IO-APIC timer ticks
	// fails now and then under TCG on a busy host, and it panics the
	// boot ("IO-APIC + timer doesn't work").
	parts := []string{"console=ttyS0", "reboot=t", "panic=-1", "quiet", "8250.nr_uarts=1", "no_timer_check"}
	if accel == vmm.AccelTCG && tscKHz > 0 {
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(tscKHz), "tsc=reliable")
	}
	if accel == vmm.AccelTCG && !acpi {
		// nolapic_timer: TCG has no TSC-deadline timer, so the kernel
		// calibrates the local APIC timer against jiffies, a tenth of a
		// second of ticks that took 0.24-0.49 s of guest time here (half
		// of the boot to kiln-init). The PIT, which microvm has
		// (pit=on), is the clock event device instead; a guest with more
		// CPUs gets its ticks broadcast. Under KVM the guest has the
		// TSC-deadline timer and never calibrates, and the PIT would cost
		// exits, so KVM guests keep the APIC timer. Only for a guest
		// booted without ACPI: with microvm's ACPI tables and
		// nolapic_timer, kiln's own kernel stops getting timer ticks
		// right after starting /init, and Debian's cloud kernel ran its
		// program but never ended its run (the VM stayed up after the
		// exit record).
		parts = append(parts, "nolapic_timer")
	}
	parts = append(parts, extra...)
	return strings.Join(parts, " ")
}
