package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

// jailDir is where a jailed QEMU finds its VM's files: the kernel, initrd,
// disks, shares, the files its ports append to and its console's FIFOs.
const jailDir = "/vm"

// jailed returns c as a jailed QEMU sees it, every host path replaced by
// the path it is bound at in the jail, and the binds that put them there.
// It is a pure function of c, so the mapping is tested as a table.
//
// What the VM writes (console, file ports, writable disks, writable
// shares) is bound writable; everything else read-only. Sockets are not
// bound: their listeners are handed over as descriptors.
func jailed(c *vmm.Config) (vmm.Config, []jail.Bind) {
	j := *c
	var binds []jail.Bind
	bind := func(src, dst string, writable bool) string {
		binds = append(binds, jail.Bind{Src: src, Dst: dst, Writable: writable})
		return dst
	}
	j.Dir = jailDir
	for _, end := range []string{".in", ".out"} {
		bind(filepath.Join(c.Dir, ConsolePipe+end), filepath.Join(jailDir, ConsolePipe+end), true)
	}
	j.Kernel = bind(c.Kernel, jailDir+"/kernel", false)
	if c.Initrd != "" {
		j.Initrd = bind(c.Initrd, jailDir+"/initrd", false)
	}
	j.Ports = append([]vmm.Port(nil), c.Ports...)
	for i, p := range j.Ports {
		if p.File != "" {
			j.Ports[i].File = bind(p.File, jailDir+"/port-"+p.Name, true)
		}
		if p.Pipe != "" {
			j.Ports[i].Pipe = jailDir + "/port-" + p.Name
			for _, end := range []string{".in", ".out"} {
				bind(p.Pipe+end, j.Ports[i].Pipe+end, true)
			}
		}
	}
	j.Drives = append([]vmm.Drive(nil), c.Drives...)
	for i, d := range j.Drives {
		j.Drives[i].Path = bind(d.Path, jailDir+"/drive-"+d.ID, !d.ReadOnly)
	}
	j.Shares = append([]vmm.Share(nil), c.Shares...)
	for i, s := range j.Shares {
		j.Shares[i].Path = bind(s.Path, jailDir+"/share-"+s.ID, !s.ReadOnly)
	}
	devices := []string{"/dev/null", "/dev/urandom"}
	if c.Accel == vmm.AccelKVM {
		devices = append(devices, "/dev/kvm")
	}
	for _, d := range devices {
		binds = append(binds, jail.Bind{Src: d, Dst: d, Writable: true, Device: true})
	}
	return j, binds
}

// jailCommand returns the command that starts QEMU in c's jail, with
// files (the QMP and socket-port listeners) as its descriptors from 3 on,
// then the TAP, when the VM has one. It grants the VM's uid the files the
// jail binds: the VM's own files become the uid's, shared read-only ones
// (kernel, image root filesystems) must be readable by all (they sit in
// kiln's root, which only root can enter; the jail is the one way in).
func jailCommand(bin string, c *vmm.Config, files []*os.File, stderr *os.File) (*exec.Cmd, []string, func(), error) {
	rf, err := jailRunFiles(bin)
	if err != nil {
		return nil, nil, nil, err
	}
	j, binds := jailed(c)
	closeTAP := func() {}
	if c.Net != nil && c.Net.Mode == vmm.NetTAP {
		tap, err := openTAP(c.Net)
		if err != nil {
			return nil, nil, nil, err
		}
		closeTAP = func() { tap.Close() }
		files = append(files, tap)
		n := *c.Net
		n.TAPFD = 3 + len(files) - 1
		j.Net = &n
	}
	files = append(files, c.Jail.Hold...)
	var mounts []*os.File
	closeAll := func() {
		closeTAP()
		for _, f := range mounts {
			f.Close()
		}
	}
	for i, b := range binds {
		switch {
		case b.Device:
		case strings.HasPrefix(b.Dst, jailDir+"/share-"):
			// A host directory: never chowned, id-mapped to the VM's uid.
			f, err := jail.IDMapped(c.Jail.Helper, b.Src, c.Jail.UID, c.Jail.GID, b.Writable)
			if err != nil {
				closeAll()
				return nil, nil, nil, err
			}
			mounts = append(mounts, f)
			files = append(files, f)
			binds[i].MountFD = 3 + len(files) - 1
		default:
			if err := grant(b.Src, c, b.Writable); err != nil {
				closeAll()
				return nil, nil, nil, err
			}
		}
	}
	argv := Argv(bin, &j)
	spec := jail.Spec{
		Hostname: "kiln-" + c.ID[:min(len(c.ID), 12)],
		Root:     c.Jail.Root,
		UID:      c.Jail.UID,
		GID:      c.Jail.GID,
		Binds:    append(append([]jail.Bind(nil), rf.binds...), binds...),
		Proc:     true,
		Cgroups:  c.Jail.Cgroups,
		Argv:     argv,
		Env:      append([]string{"LD_LIBRARY_PATH=" + rf.libPath}, c.Jail.Env...),
	}
	cmd, err := jail.Command(c.Jail.Helper, spec)
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.ExtraFiles = files
	return cmd, argv, closeAll, nil
}

// grant makes path usable by the jailed QEMU of c: the VM's own files (in
// its directory) and writable ones (named volumes) become its uid's; a
// shared read-only file is made readable by all if it is not.
func grant(path string, c *vmm.Config, writable bool) error {
	own := writable || strings.HasPrefix(path, c.Dir+string(filepath.Separator))
	if own {
		if err := os.Lchown(path, c.Jail.UID, c.Jail.GID); err != nil {
			return fmt.Errorf("giving %s to the VM's uid %d: %w", path, c.Jail.UID, err)
		}
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if st.IsDir() {
		return nil // a share: reached through its own mapping
	}
	if st.Mode().Perm()&0o004 != 0 {
		return nil
	}
	// Only kiln's own files (under the root the VM's directory is in) are
	// opened up; a file of the user's is theirs to decide on.
	root := filepath.Dir(filepath.Dir(c.Dir))
	if !strings.HasPrefix(path, root+string(filepath.Separator)) {
		return fmt.Errorf("%s is not readable by the VM's jailed uid: make it readable by others (chmod o+r %s), or run the VM with --unconfined", path, path)
	}
	if err := os.Chmod(path, st.Mode().Perm()|0o444); err != nil {
		return fmt.Errorf("making shared read-only %s readable by jailed VMs: %w", path, err)
	}
	return nil
}

// openTAP opens n's persistent TAP for QEMU to inherit (in its network
// namespace, when it has one).
func openTAP(n *vmm.NetConfig) (*os.File, error) {
	if n.NetNS != "" {
		return network.OpenNSTAP(n.NetNS)
	}
	return network.OpenTAP(n.TAP)
}
