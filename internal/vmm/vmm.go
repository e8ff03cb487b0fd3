// Package vmm is the small interface kiln's runtime drives a virtual machine
// monitor through, and the configuration every backend takes.
//
// The seam is Backend (backend.go): the runtime is given one (QEMU by
// default, vm.WithBackend otherwise) and makes every run's VMM with
// its New, takes over a running VM after a daemon restart with its Attach,
// and lets it complete a new VM's Config (monitor binary, kernel command
// line, device limits) with its Prepare. The runtime never names a backend
// package beyond choosing the default. What backends and the runtime share
// besides is the layout of a VM's state directory (statedir.go): the
// console FIFO and log, and the FIFOs of pipe ports.
//
// Backends live in subpackages: qemu (a microvm per run, driven over QMP)
// and vmmtest (a fake that plays a scripted guest without any monitor, for
// the runtime's unit tests). Firecracker, or a backend that restores a
// snapshot instead of booting, would be another implementation of Backend;
// extras such as snapshots are separate small interfaces found by type
// assertion.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
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
	// talk to the guest. While no one is connected the guest's writes to
	// the port wait.
	Socket string
	// Pipe: the guest's writes go into the FIFO Pipe+".out" (Pipe+".in"
	// is read, and never written), which holds at most its pipe buffer:
	// while no one on the host reads, the guest's writes wait.
	Pipe string
}

// Drive is a raw disk image shown to the guest as a virtio block device.
// The guest finds it by Serial (in /sys/block/vd*/serial), not by the order
// of its /dev/vd* name.
type Drive struct {
	// ID names the drive on the monitor's command line; unique in a VM,
	// a letter then letters, digits, '-', '_' or '.'.
	ID string
	// Path is the host file holding the disk image.
	Path string
	// ReadOnly attaches the disk read-only: the guest cannot write it, so
	// many VMs may share the file.
	ReadOnly bool
	// Serial is the disk's serial number as the guest sees it: at most
	// MaxSerial bytes of printable ASCII without commas.
	Serial string
}

// MaxSerial is the length of a virtio-blk serial number
// (VIRTIO_BLK_ID_BYTES); the guest sees no more than this.
const MaxSerial = 20

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
	ACPI bool
	// ACPICapable says the kernel finds its devices either way: a backend
	// turns ACPI on (Prepare) when the VM has more devices than it can
	// give the guest without.
	ACPICapable bool `json:",omitempty"`
	Ports       []Port
	// Drives are the VM's disks, in the order the backend attaches them.
	Drives []Drive
	// Shares are host directories shown to the guest (share.go).
	Shares []Share `json:",omitempty"`
	// Net is the VM's network interface; nil means none.
	Net *NetConfig `json:",omitempty"`
	// Binary is the monitor executable; "" lets the backend find it.
	Binary string
	// StopTimeout bounds each escalation step of Stop; 0 means 3 s.
	StopTimeout time.Duration
	// Sandbox turns on the monitor's own system-call filter (QEMU's
	// -sandbox): no obsolete calls, no privilege changes, no new
	// processes, no scheduler or resource changes.
	Sandbox bool `json:",omitempty"`
	// Jail confines the monitor process; nil runs it as the caller,
	// unconfined.
	Jail *Jail `json:",omitempty"`
	// Incoming, when set, is a guest state written by a Saver: the run
	// resumes it instead of booting. The monitor inherits the file; the
	// caller closes its copy once Start returns. IncomingFD is the
	// descriptor number the monitor finds it on, set by the backend.
	Incoming   *os.File `json:"-"`
	IncomingFD int      `json:"-"`
}

// Jail is how a monitor process is confined (package jail): its own uid
// and gid, no capabilities, no_new_privs, its own mount, pid, ipc and uts
// namespaces, a root holding only its VM's files, and its cgroups.
type Jail struct {
	// UID and GID are the monitor's: no other running VM's. They are 0
	// in a VM's record and taken anew for each run; the jail refuses to
	// start a monitor as 0.
	UID int
	GID int
	// Helper is the program that sets the jail up and execs the monitor
	// (kiln's own binary, run as `kiln jail-exec`).
	Helper string
	// Root is an empty host directory the jail's root is mounted on.
	Root string
	// Cgroups are the cgroup directories the monitor runs in.
	Cgroups []string `json:",omitempty"`
	// Env is added to the monitor's environment: marks by which an
	// operator (or a test) tells which kiln root a jailed monitor, whose
	// command line names no host path, belongs to.
	Env []string `json:",omitempty"`
	// Hold are files the monitor keeps open for its whole life, as
	// descriptors after all others: the lock that holds its uid.
	Hold []*os.File `json:"-"`
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
		if n := btoi(p.File != "") + btoi(p.Socket != "") + btoi(p.Pipe != ""); n != 1 {
			return fmt.Errorf("vm config: port %q needs exactly one of file, socket and pipe", p.Name)
		}
	}
	ids := map[string]bool{}
	for _, d := range c.Drives {
		if err := d.validate(); err != nil {
			return err
		}
		if ids[d.ID] {
			return fmt.Errorf("vm config: drive ID %q used twice", d.ID)
		}
		ids[d.ID] = true
	}
	if err := c.validateShares(ids); err != nil {
		return err
	}
	if j := c.Jail; j != nil {
		switch {
		case j.UID < 0 || j.GID < 0:
			return fmt.Errorf("vm config: jail uid %d gid %d: want a uid of kiln's range, or 0 before a run takes one", j.UID, j.GID)
		case j.Helper == "" || j.Root == "":
			return errors.New("vm config: a jail needs its helper and its root directory")
		}
	}
	if c.Net != nil {
		return c.Net.validate()
	}
	return nil
}

// NetConfig is a VM's one network interface, shown to the guest as a
// virtio-net device (eth0).
type NetConfig struct {
	// Mode is NetUser, NetTAP or NetUnplugged.
	Mode string
	// MAC is the interface's address, "52:54:00:xx:xx:xx".
	MAC string
	// Forwards are user-mode port forwards from the host into the guest,
	// resolved: every HostIP and HostPort set.
	Forwards []Forward `json:",omitempty"`
	// TAP is the host TAP device of NetTAP, made beforehand.
	TAP string `json:",omitempty"`
	// NetNS, when set, is the path of the network namespace the TAP is
	// in (a pod's), where the monitor's descriptor for it is opened.
	NetNS string `json:",omitempty"`
	// TAPFD, when not 0, is the descriptor the monitor inherits the TAP
	// open on, instead of opening it by name (which needs CAP_NET_ADMIN):
	// a jailed monitor is handed it.
	TAPFD int `json:"-"`
}

// NetUser is user-mode networking: the monitor itself NATs the guest's
// traffic and listens on the host for the forwards.
const NetUser = "user"

// NetTAP connects the guest to an existing host TAP device (on a bridge);
// the host's firewall does the rest.
const NetTAP = "tap"

// NetUnplugged is a NIC whose backend goes nowhere (a hub port alone):
// a template's, which each restore replaces with the VM's own backend,
// user-mode or TAP. Unlike user-mode networking it puts nothing of its
// own in a saved guest's state, so the state loads with either backend.
const NetUnplugged = "unplugged"

// Forward sends connections to HostIP:HostPort on the host to GuestPort on
// the guest's interface.
type Forward struct {
	Protocol  string // "tcp" or "udp"
	HostIP    string
	HostPort  int
	GuestPort int
}

var macRE = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

func (n *NetConfig) validate() error {
	switch {
	case n.Mode == NetTAP && (n.TAP == "" || len(n.TAP) > 15 || strings.ContainsAny(n.TAP, ",= /")):
		return fmt.Errorf("vm config: TAP name %q: want 1-15 characters without ',', '=', ' ' or '/'", n.TAP)
	case n.Mode == NetTAP && len(n.Forwards) > 0:
		return fmt.Errorf("vm config: a TAP network has no forwards: publish its ports with the host's firewall")
	case n.Mode == NetUnplugged && len(n.Forwards) > 0:
		return fmt.Errorf("vm config: an unplugged NIC has no forwards")
	case n.Mode != NetUser && n.Mode != NetTAP && n.Mode != NetUnplugged:
		return fmt.Errorf("vm config: network mode %q: want %q, %q or %q", n.Mode, NetUser, NetTAP, NetUnplugged)
	}
	if !macRE.MatchString(n.MAC) {
		return fmt.Errorf("vm config: MAC %q: want six lower-case hex pairs separated by ':'", n.MAC)
	}
	for _, f := range n.Forwards {
		switch {
		case f.Protocol != "tcp" && f.Protocol != "udp":
			return fmt.Errorf("vm config: forward protocol %q: want tcp or udp", f.Protocol)
		case f.HostIP == "" || strings.ContainsAny(f.HostIP, ",:-"):
			return fmt.Errorf("vm config: forward host address %q: want an IPv4 address", f.HostIP)
		case f.HostPort < 1 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535:
			return fmt.Errorf("vm config: forward %d->%d: ports must be 1-65535", f.HostPort, f.GuestPort)
		}
	}
	return nil
}

var driveIDRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_.-]{0,31}$`)

func (d *Drive) validate() error {
	switch {
	case !driveIDRE.MatchString(d.ID):
		return fmt.Errorf("vm config: drive ID %q: want a letter, then up to 31 letters, digits, '-', '_' or '.'", d.ID)
	case d.Path == "":
		return fmt.Errorf("vm config: drive %q has no path", d.ID)
	case len(d.Serial) > MaxSerial:
		return fmt.Errorf("vm config: drive %q: serial %q is longer than %d bytes", d.ID, d.Serial, MaxSerial)
	}
	for _, c := range d.Serial {
		if c <= ' ' || c > '~' || c == ',' {
			return fmt.Errorf("vm config: drive %q: serial %q: want printable ASCII without spaces or commas", d.ID, d.Serial)
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
