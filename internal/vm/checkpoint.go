package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
)

// A VM's checkpoints live in its directory, so they go with it:
//
//	<vm>/checkpoints/<name>/checkpoint.json   name, created, topology, sizes
//	<vm>/checkpoints/<name>/state             the guest's memory and devices
//	<vm>/checkpoints/<name>/disk-<drive>      each writable disk of the VM's own (sparse)
//	<vm>/checkpoints/<name>/status.jsonl      the status records of the run
//	<vm>/checkpoints/.new-<name>-*            one being made (renamed into place)
const (
	checkpointsDir = "checkpoints"
	checkpointMeta = "checkpoint.json"
	checkpointMem  = "state"
)

// Checkpoint describes a saved VM (kiln checkpoint ls).
type Checkpoint struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Topology is a hash of what a run resuming it must match: the
	// monitor, machine, memory, CPUs, kernel and devices.
	Topology string `json:"topology"`
	// Size is what its files take on disk, in bytes.
	Size int64 `json:"size"`
	// StateSize is the size of the memory and device state.
	StateSize int64 `json:"stateSize"`
	// Template: the run saved was restored from a template, so it ran
	// with the template's initrd (kept in the checkpoint as initrd) and
	// the program disk; a restore runs with them again.
	Template bool `json:"template,omitempty"`
}

// CheckpointDir returns where checkpoint name of the VM in dir lives.
func CheckpointDir(vmDir, name string) string {
	return filepath.Join(vmDir, checkpointsDir, name)
}

// Checkpointable reports whether the VM can be checkpointed: a host
// directory or a volume holds data outside the VM that goes on changing
// after the checkpoint (and 9p's state is the host's), so a restore could
// not find the guest's files as it left them; both are refused.
func (vm *VM) Checkpointable() error {
	for _, m := range vm.Spec.Mounts {
		switch m.Type {
		case options.MountBind:
			return fmt.Errorf("VM %s shares the host directory %s at %s: its state lives on the host and in QEMU's 9p server, which a checkpoint cannot make consistent; checkpoints are for VMs without host directories: %w",
				vm.Name, m.Source, m.Target, errdefs.ErrInvalidArgument)
		case options.MountVolume:
			return fmt.Errorf("VM %s mounts the volume %s at %s: a volume's data lives outside the VM and changes after a checkpoint, so a restore would not find it as the guest left it; checkpoints are for VMs without volumes: %w",
				vm.Name, m.Source, m.Target, errdefs.ErrInvalidArgument)
		}
	}
	if len(vm.cfg.Shares) > 0 {
		return fmt.Errorf("VM %s shares host directories: checkpoints are for VMs without them: %w", vm.Name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ownDisks are the VM's writable disks that live in its directory (a full
// image's own disk), which a checkpoint copies.
func (vm *VM) ownDisks() []vmm.Drive {
	var ds []vmm.Drive
	for _, d := range vm.cfg.Drives {
		if !d.ReadOnly && strings.HasPrefix(d.Path, vm.Dir+string(filepath.Separator)) {
			ds = append(ds, d)
		}
	}
	return ds
}

// topology hashes what a run resuming a checkpoint must have as the run
// that saved it: the monitor binary, machine, memory, CPUs, kernel,
// initrd and devices. Published ports may differ (resolved at each start).
func (vm *VM) topology() string { return topologyOf(vm.cfg) }

// templateTopology is the topology of a run restored from a template:
// the program disk added (a bare program VM's), the initrd (the
// template's, kept in the checkpoint) not named.
func (vm *VM) templateTopology() string {
	c := vm.cfg
	c.Initrd = ""
	c.Drives = vm.runDrives()
	return topologyOf(c)
}

func topologyOf(c vmm.Config) string {
	type drive struct {
		ID, Serial string
		ReadOnly   bool
	}
	t := struct {
		Binary            string
		BinarySize        int64
		Accel             vmm.Accel
		ACPI              bool
		MemoryMiB, CPUs   int
		Kernel, Cmdline   string
		KernelSize        int64
		Initrd            string
		InitrdSize        int64
		Ports             []string
		Drives            []drive
		Shares            int
		NetMode, MAC, TAP string
	}{Binary: c.Binary, Accel: c.Accel, ACPI: c.ACPI, MemoryMiB: c.MemoryMiB, CPUs: c.CPUs,
		Kernel: c.Kernel, Cmdline: c.Cmdline, Initrd: c.Initrd, Shares: len(c.Shares)}
	size := func(p string) int64 {
		if st, err := os.Stat(p); err == nil {
			return st.Size()
		}
		return -1
	}
	t.BinarySize, t.KernelSize, t.InitrdSize = size(c.Binary), size(c.Kernel), size(c.Initrd)
	for _, p := range c.Ports {
		t.Ports = append(t.Ports, p.Name)
	}
	for _, d := range c.Drives {
		t.Drives = append(t.Drives, drive{d.ID, d.Serial, d.ReadOnly})
	}
	if c.Net != nil {
		t.NetMode, t.MAC, t.TAP = c.Net.Mode, c.Net.MAC, c.Net.TAP
	}
	b, _ := json.Marshal(t)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Checkpoints lists the VM's checkpoints, oldest first.
func (vm *VM) Checkpoints() ([]Checkpoint, error) {
	ents, err := os.ReadDir(filepath.Join(vm.Dir, checkpointsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints of VM %s: %w", vm.Name, err)
	}
	var cps []Checkpoint
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		cp, err := vm.readCheckpoint(e.Name())
		if err != nil {
			continue
		}
		cps = append(cps, *cp)
	}
	sort.Slice(cps, func(i, j int) bool { return cps[i].Created.Before(cps[j].Created) })
	return cps, nil
}

func (vm *VM) readCheckpoint(name string) (*Checkpoint, error) {
	dir := CheckpointDir(vm.Dir, name)
	b, err := os.ReadFile(filepath.Join(dir, checkpointMeta))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("VM %s has no checkpoint %q: %w", vm.Name, name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading checkpoint %q of VM %s: %w", name, vm.Name, err)
	}
	var cp Checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("checkpoint %q of VM %s is damaged (%v): remove it", name, vm.Name, err)
	}
	cp.Name = name
	cp.Size = diskUsage(dir)
	return &cp, nil
}

// diskUsage adds up the blocks the files in dir take.
func diskUsage(dir string) int64 {
	ents, _ := os.ReadDir(dir)
	var n int64
	for _, e := range ents {
		if info, err := e.Info(); err == nil {
			n += allocated(info)
		}
	}
	return n
}

// RemoveCheckpoint deletes checkpoint name.
func (vm *VM) RemoveCheckpoint(name string) error {
	if err := options.ValidateCheckpointName(name); err != nil {
		return err
	}
	dir := CheckpointDir(vm.Dir, name)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("VM %s has no checkpoint %q: %w", vm.Name, name, errdefs.ErrNotFound)
	}
	// Renamed out of place first: a removal cut short leaves no half
	// checkpoint that ls would list.
	gone := filepath.Join(vm.Dir, checkpointsDir, ".rm-"+name)
	if err := os.Rename(dir, gone); err != nil {
		return fmt.Errorf("removing checkpoint %q of VM %s: %w", name, vm.Name, err)
	}
	return os.RemoveAll(gone)
}

// Checkpoint saves the running VM as checkpoint name: the guest is paused,
// its memory and device state written to the checkpoint (QEMU's
// migration, into a file the daemon opened), its own writable disks
// copied while it is paused (sparse), and the status records of the run
// kept. Then the VM ends as if stopped, or with leaveRunning goes on. On
// any error no checkpoint is left and the guest runs on.
func (vm *VM) Checkpoint(ctx context.Context, name string, leaveRunning bool) (err error) {
	if err := options.ValidateCheckpointName(name); err != nil {
		return err
	}
	if err := vm.Checkpointable(); err != nil {
		return err
	}
	m := vm.current()
	if m == nil || !m.Info().Running {
		return fmt.Errorf("VM %s is not running: only a running VM can be checkpointed: %w", vm.Name, errdefs.ErrConflict)
	}
	saver, ok := m.(vmm.Saver)
	if !ok {
		return fmt.Errorf("the %s backend cannot save a VM: %w", m.Info().Backend, errdefs.ErrUnavailable)
	}
	root := filepath.Join(vm.Dir, checkpointsDir)
	final := filepath.Join(root, name)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("VM %s already has a checkpoint %q: remove it first (kiln checkpoint rm %s %s): %w", vm.Name, name, vm.Name, name, errdefs.ErrConflict)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("making the checkpoints directory: %w", err)
	}
	// What a daemon that died while making or removing a checkpoint left
	// (no other checkpoint of this VM is under way: the supervisor sees
	// to that).
	for _, pat := range []string{".new-*", ".rm-*"} {
		left, _ := filepath.Glob(filepath.Join(root, pat))
		for _, p := range left {
			os.RemoveAll(p)
		}
	}
	if err := disk.CheckFree(root); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(root, ".new-"+name+"-")
	if err != nil {
		return fmt.Errorf("making checkpoint %q: %w", name, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, checkpointMem), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("making checkpoint %q: %w", name, err)
	}
	err = saver.Save(ctx, f)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("checkpointing VM %s: %w", vm.Name, err)
	}
	// The guest is paused from here on: resume it on any error.
	defer func() {
		if err != nil {
			if rerr := saver.Resume(context.WithoutCancel(ctx)); rerr != nil {
				vm.log.Warn("resuming a VM after a failed checkpoint", "vm", vm.ID, "err", rerr)
			}
			vm.setClock(ctx)
		}
	}()
	if err := vm.saveCheckpointFiles(tmp, name); err != nil {
		return fmt.Errorf("checkpointing VM %s: %w", vm.Name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("checkpointing VM %s: %w", vm.Name, err)
	}
	syncDir(root)
	if leaveRunning {
		if err := saver.Resume(ctx); err != nil {
			return fmt.Errorf("VM %s was checkpointed as %q, but did not resume: %w", vm.Name, name, err)
		}
		vm.setClock(ctx)
		return nil
	}
	// As a stop: the monitor ends; the guest never runs past the save.
	if err := m.Stop(ctx); err != nil && !errors.Is(err, vmm.ErrTimeout) {
		return fmt.Errorf("VM %s was checkpointed as %q, but did not end: %w", vm.Name, name, err)
	}
	return nil
}

// saveCheckpointFiles writes the disks, status records and metadata of a
// checkpoint into dir, while the guest is paused.
func (vm *VM) saveCheckpointFiles(dir, name string) error {
	for _, d := range vm.ownDisks() {
		if err := disk.CopySparse(filepath.Join(dir, "disk-"+d.ID), d.Path); err != nil {
			return fmt.Errorf("copying disk %s: %w", d.ID, err)
		}
	}
	status, err := vm.readStatus()
	if err != nil {
		return fmt.Errorf("reading the run's status: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, statusFile), status, 0o600); err != nil {
		return err
	}
	var stateSize int64
	if st, err := os.Stat(filepath.Join(dir, checkpointMem)); err == nil {
		stateSize = st.Size()
	}
	cp := Checkpoint{Name: name, Created: time.Now().UTC(), Topology: vm.topology(), StateSize: stateSize}
	if initrd := vm.runTemplateInitrd(); initrd != "" {
		if err := disk.CopySparse(filepath.Join(dir, initrdFile), initrd); err != nil {
			return fmt.Errorf("keeping the template's initrd: %w", err)
		}
		if err := os.Chmod(filepath.Join(dir, initrdFile), 0o644); err != nil {
			return err
		}
		cp.Template, cp.Topology = true, vm.templateTopology()
	}
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, checkpointMeta), b, 0o600)
}

// Restore starts the VM from checkpoint name instead of booting it: the
// checkpoint's disks are copied back (the checkpoint stays, for another
// restore), the monitor loads the saved state and runs it, and the guest's
// clock is set to the host's. The program goes on where it was.
func (vm *VM) Restore(ctx context.Context, name string) error {
	if err := options.ValidateCheckpointName(name); err != nil {
		return err
	}
	if err := vm.CanRestore(name); err != nil {
		return err
	}
	if m := vm.current(); m != nil && m.Info().Running {
		return fmt.Errorf("VM %s is already running: %w", vm.Name, errdefs.ErrConflict)
	}
	dir := CheckpointDir(vm.Dir, name)
	for _, d := range vm.ownDisks() {
		tmp := d.Path + ".restore"
		if err := disk.CopySparse(tmp, filepath.Join(dir, "disk-"+d.ID)); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("restoring disk %s of VM %s from checkpoint %q: %w", d.ID, vm.Name, name, err)
		}
		if err := os.Rename(tmp, d.Path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("restoring disk %s of VM %s: %w", d.ID, vm.Name, err)
		}
	}
	status, err := os.ReadFile(filepath.Join(dir, statusFile))
	if err != nil {
		return fmt.Errorf("reading checkpoint %q: %w", name, err)
	}
	f, err := os.Open(filepath.Join(dir, checkpointMem))
	if err != nil {
		return fmt.Errorf("reading checkpoint %q: %w", name, err)
	}
	defer f.Close()
	from := runFrom{incoming: f, status: status}
	if cp, err := vm.readCheckpoint(name); err == nil && cp.Template {
		// The guest took its program off the disk long ago: any disk of
		// the size will do, an empty one if the VM's is gone.
		from.drives = vm.templateDrives()
		for _, d := range from.drives {
			if _, err := os.Stat(d.Path); err != nil {
				if err := writeProgramDisk(d.Path, nil, 0); err != nil {
					return err
				}
			}
		}
		from.initrd = filepath.Join(dir, initrdFile)
	}
	t0 := time.Now()
	if err := vm.start(ctx, from); err != nil {
		return err
	}
	t1 := time.Now()
	vm.setClock(ctx)
	vm.log.Info("VM resumed from a checkpoint", "vm", vm.ID, "checkpoint", name, "load", t1.Sub(t0), "clock", time.Since(t1))
	return nil
}

// setClockTimeout bounds how long a resumed guest's agent is waited for.
const setClockTimeout = 20 * time.Second

// setClock sets the resumed guest's clock to the host's through its agent,
// trying until the agent answers (it notices the new host connection
// within a second or so). A guest that cannot is logged, not failed: the
// program runs, only its clock lags.
func (vm *VM) setClock(ctx context.Context) {
	deadline := time.Now().Add(setClockTimeout)
	for {
		// A resumed guest may take the first connection for the one it
		// had when saved and drop its hello: a short bound on the hello
		// lets the next attempt come soon.
		var r *agent.Reply
		c, err := vm.agent(time.Second)
		if err == nil {
			r, err = c.Do(agent.OpenRequest{Op: agent.OpSetTime, TimeNanos: time.Now().UnixNano()})
		}
		if err == nil {
			return
		}
		if r != nil || time.Now().After(deadline) || ctx.Err() != nil {
			// r set: the guest answered, and refused (an older kiln-init).
			vm.log.Warn("setting the clock of a resumed guest", "vm", vm.ID, "err", err)
			return
		}
		if m := vm.current(); m == nil || !m.Info().Running {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// allocated is what a file takes on disk.
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// CheckpointInfo returns checkpoint name of the VM; an ErrNotFound when
// there is none.
func (vm *VM) CheckpointInfo(name string) (*Checkpoint, error) {
	if err := options.ValidateCheckpointName(name); err != nil {
		return nil, err
	}
	return vm.readCheckpoint(name)
}

// CanRestore reports whether checkpoint name exists and was made by a VM
// of this VM's configuration.
func (vm *VM) CanRestore(name string) error {
	cp, err := vm.CheckpointInfo(name)
	if err != nil {
		return err
	}
	want := vm.topology()
	if cp.Template {
		want = vm.templateTopology()
	}
	if cp.Topology != want {
		return fmt.Errorf("checkpoint %q was made by a VM %s of another configuration (monitor, kernel, memory or devices changed since): it cannot be resumed: %w", name, vm.Name, errdefs.ErrConflict)
	}
	return nil
}

// RecoverCheckpoint finishes what a daemon that died while checkpointing
// the VM left: the half-made checkpoint is removed and, if the VM still
// runs, its guest (perhaps left paused by the save) is continued. It
// reports whether there was anything to recover; call it after Attach.
func (vm *VM) RecoverCheckpoint(ctx context.Context) (bool, error) {
	left, _ := filepath.Glob(filepath.Join(vm.Dir, checkpointsDir, ".new-*"))
	if len(left) == 0 {
		return false, nil
	}
	for _, p := range left {
		os.RemoveAll(p)
	}
	m := vm.current()
	if m == nil || !m.Info().Running {
		return true, nil
	}
	saver, ok := m.(vmm.Saver)
	if !ok {
		return true, nil
	}
	if err := saver.Resume(ctx); err != nil {
		return true, fmt.Errorf("continuing VM %s after a checkpoint cut short: %w", vm.Name, err)
	}
	return true, nil
}
