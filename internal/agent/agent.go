// Package agent is the protocol between the host and kiln-init, the guest's
// PID 1. It is the only package shared by host-side and guest-side code.
//
// Three channels carry it, each a plain byte stream so that any transport
// works (virtio-serial ports on QEMU, vsock on Firecracker):
//
//   - the spec: a JSON Spec at SpecPath inside the initramfs, written by the
//     host before boot (not on the kernel cmdline, which is size-limited);
//   - the status port (PortStatus): JSON lines from the guest (Record), backed
//     on the host by a file so that the exit status survives even when nobody
//     on the host is listening at that moment;
//   - the control port (PortControl): multiplexed frames both ways
//     (ControlVersion 2: frame.go, mux.go, client.go): stop, signal, exec,
//     file copy and stats, many sessions at once.
//
// The program's stdout and stderr go to their own ports (PortStdout,
// PortStderr) untouched, so that its output is kept apart from the kernel's
// serial console.
package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// Version is the protocol version. It is written in every Spec and Record;
// a peer that sees a newer major version it does not know refuses it.
const Version = 1

// Names of the virtio-serial ports (the name attribute the guest reads from
// /sys/class/virtio-ports/*/name).
const (
	PortStatus  = "kiln.exit"
	PortControl = "kiln.agent"
	PortStdout  = "kiln.stdout"
	PortStderr  = "kiln.stderr"
)

// SpecPath is where kiln-init finds its Spec inside the initramfs.
const SpecPath = "/kiln/spec.json"

// Spec is what the host asks kiln-init to run.
type Spec struct {
	Version int `json:"version"`
	// Args is the program and its arguments; Args[0] is looked up in PATH
	// of Env when it has no slash.
	Args []string `json:"args"`
	// Env is the program's environment, KEY=VALUE.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the program's working directory, created when missing
	// (as docker does for WORKDIR). Empty means /.
	WorkingDir string `json:"workingDir,omitempty"`
	// UID and GID the program runs as. AdditionalGIDs are its supplementary
	// groups.
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGIDs []uint32 `json:"additionalGids,omitempty"`
	// Hostname of the guest.
	Hostname string `json:"hostname,omitempty"`
	// Rlimits applied to the program.
	Rlimits []Rlimit `json:"rlimits,omitempty"`
	// Modules are kernel module paths inside the initramfs, in the order
	// they must be loaded (dependencies first).
	Modules []string `json:"modules,omitempty"`
	// StopSignal is sent to the program on a graceful stop; 0 means SIGTERM.
	StopSignal int `json:"stopSignal,omitempty"`
	// Root, when set, makes kiln-init assemble the program's root
	// filesystem from two disks and switch to it before running the
	// program: the image's read-only root as the lower layer of an
	// overlayfs, the VM's own disk as its writable upper layer.
	Root *RootSpec `json:"root,omitempty"`
	// User, when set, is who the program runs as, as docker's --user takes
	// it: a name or uid, optionally ":" and a group name or gid. kiln-init
	// resolves it against /etc/passwd and /etc/group of the program's root
	// (numeric ids need no entry) and adds the user's supplementary groups;
	// it then replaces UID, GID and AdditionalGIDs. A user without a
	// passwd entry gets gid 0, as in docker.
	User string `json:"user,omitempty"`
	// Network, when set, is the guest's network interface to configure:
	// kiln-init brings it up with its static address and default route,
	// and writes /etc/resolv.conf. Without it the guest has loopback only.
	// Either way kiln-init writes /etc/hosts and /etc/hostname.
	Network *Network `json:"network,omitempty"`
	// Hosts are extra lines of /etc/hosts ("ADDRESS\tNAME", --add-host).
	Hosts []string `json:"hosts,omitempty"`
	// Mounts are volumes, host directories and baked directories to mount
	// (mounts.go).
	Mounts []Mount `json:"mounts,omitempty"`
	// Template marks the spec of a template boot: kiln-init loads Modules,
	// writes a KindReady record and waits for the VM's own spec over the
	// control port (OpSpec), which may come in a later run restored from
	// a saved copy of the guest. Nothing else in the spec is used.
	Template bool `json:"template,omitempty"`
}

// Network is the configuration of the guest's one interface.
type Network struct {
	// Interface is the kernel's name for it ("eth0").
	Interface string `json:"interface"`
	// Address is the interface's IPv4 address with its prefix length
	// ("10.0.2.15/24").
	Address string `json:"address"`
	// Gateway is the IPv4 address of the default route; "" means none.
	Gateway string `json:"gateway,omitempty"`
	// DNS are the name servers for /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
	// MAC, when set, is given to the interface before it comes up (a
	// guest restored from a template has the template's MAC until then).
	MAC string `json:"mac,omitempty"`
}

// RootSpec says where kiln-init finds the disks of the program's root.
type RootSpec struct {
	// Lower is the read-only disk holding the image's root filesystem.
	Lower Disk `json:"lower"`
	// Upper is the VM's writable disk; the overlay's upper and work
	// directories are made on it.
	Upper Disk `json:"upper"`
}

// Disk is a block device the guest finds by its serial number (read from
// /sys/block/*/serial: there is no udev in the guest).
type Disk struct {
	Serial string `json:"serial"`
	// FSType is the filesystem on the disk, as mount(2) names it
	// ("squashfs", "ext4").
	FSType string `json:"fsType"`
}

// Rlimit is one resource limit, by its name as in `ulimit` (nofile, nproc,
// core, memlock, stack, ...).
type Rlimit struct {
	Name string `json:"name"`
	Soft uint64 `json:"soft"`
	Hard uint64 `json:"hard"`
}

// Record kinds written by the guest on the status port.
const (
	// KindStarted: the program has been started (readiness). Uptime is the
	// guest's uptime when kiln-init began, in seconds.
	KindStarted = "started"
	// KindExit: the program ended. ExitCode follows shell convention:
	// the status, or 128+signal when a signal killed it.
	KindExit = "exit"
	// KindError: kiln-init could not run the program (bad spec, missing
	// program, ...). ExitCode is 127 for a missing program, 126 for one
	// that cannot be executed, 125 otherwise, as docker reports them.
	KindError = "error"
	// KindReady: a template boot has done its early setup and waits for
	// its spec on the control port (Spec.Template).
	KindReady = "ready"
)

// Record is one line on the status port.
type Record struct {
	Version  int     `json:"version"`
	Kind     string  `json:"kind"`
	PID      int     `json:"pid,omitempty"`
	Uptime   float64 `json:"uptime,omitempty"`
	ExitCode int     `json:"exitCode"`
	Signal   int     `json:"signal,omitempty"`
	Error    string  `json:"error,omitempty"`
	// OOMKilled (exit records): the kernel's OOM killer ended a process
	// of the guest while the program ran.
	OOMKilled bool `json:"oomKilled,omitempty"`
}

// Operations on the program, sent by the host in an OpenRequest (and
// handed inside kiln-init as a Request).
const (
	// OpStop asks kiln-init for a graceful stop: Signal (0: the spec's
	// StopSignal) to the program, GraceMillis to exit, then SIGKILL, then
	// power-off.
	OpStop = "stop"
	// OpSignal delivers Signal to the program.
	OpSignal = "signal"
)

// Request is a stop or signal request for the program.
type Request struct {
	Version     int    `json:"version"`
	Op          string `json:"op"`
	Signal      int    `json:"signal,omitempty"`
	GraceMillis int64  `json:"graceMillis,omitempty"`
}

// ExitCodeFor returns the shell-convention exit code for a program that
// exited with status (when signal is 0) or was killed by signal.
func ExitCodeFor(status, signal int) int {
	if signal > 0 {
		return 128 + signal
	}
	return status
}

// WriteLine writes v as one JSON line.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", v, err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing %T: %w", v, err)
	}
	return nil
}

// ParseRecords parses the status port's content: JSON lines, the last of
// which may be cut short (the guest died mid-write) and is then ignored.
// Lines from an unknown protocol version are an error.
func ParseRecords(data []byte) ([]Record, error) {
	var out []Record
	for len(data) > 0 {
		i := 0
		for i < len(data) && data[i] != '\n' {
			i++
		}
		line := data[:i]
		complete := i < len(data)
		if i < len(data) {
			data = data[i+1:]
		} else {
			data = nil
		}
		if len(line) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			if !complete {
				break
			}
			return out, fmt.Errorf("parsing status record %q: %w", line, err)
		}
		if r.Version != Version {
			return out, fmt.Errorf("status record has protocol version %d, this kiln speaks %d", r.Version, Version)
		}
		out = append(out, r)
	}
	return out, nil
}

// Validate reports whether s can be run.
func (s *Spec) Validate() error {
	if s.Version != Version {
		return fmt.Errorf("spec has protocol version %d, kiln-init speaks %d", s.Version, Version)
	}
	if s.Template {
		return nil
	}
	if len(s.Args) == 0 || s.Args[0] == "" {
		return fmt.Errorf("spec has no program to run (args is empty)")
	}
	if r := s.Root; r != nil {
		for _, d := range []struct {
			what string
			Disk
		}{{"lower", r.Lower}, {"upper", r.Upper}} {
			if d.Serial == "" || d.FSType == "" {
				return fmt.Errorf("spec root: %s disk needs a serial and a filesystem type", d.what)
			}
		}
		if r.Lower.Serial == r.Upper.Serial {
			return fmt.Errorf("spec root: lower and upper disks have the same serial %q", r.Lower.Serial)
		}
	}
	if n := s.Network; n != nil {
		if n.Interface == "" {
			return fmt.Errorf("spec network: no interface")
		}
		if p, err := netip.ParsePrefix(n.Address); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("spec network: address %q: want an IPv4 address with a prefix length", n.Address)
		}
		if n.MAC != "" {
			if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
				return fmt.Errorf("spec network: MAC %q is not an Ethernet address", n.MAC)
			}
		}
		for _, a := range append([]string{n.Gateway}, n.DNS...) {
			if ip, err := netip.ParseAddr(a); a != "" && (err != nil || !ip.Is4()) {
				return fmt.Errorf("spec network: %q is not an IPv4 address", a)
			}
		}
	}
	for i := range s.Mounts {
		if err := s.Mounts[i].validate(); err != nil {
			return err
		}
	}
	for _, r := range s.Rlimits {
		if _, ok := RlimitResources[r.Name]; !ok {
			return fmt.Errorf("unknown rlimit %q", r.Name)
		}
		if r.Soft > r.Hard {
			return fmt.Errorf("rlimit %s: soft limit %d is above hard limit %d", r.Name, r.Soft, r.Hard)
		}
	}
	return nil
}

// RlimitResources maps rlimit names (as docker's --ulimit takes them) to
// Linux RLIMIT_* numbers.
var RlimitResources = map[string]int{
	"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5,
	"nproc": 6, "nofile": 7, "memlock": 8, "as": 9, "locks": 10,
	"sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
}
