// Package vm turns what a user asks to run into a VM and drives it: it
// prepares the VM's state directory and initrd, starts it on a VMM backend,
// watches that it boots, stops it gracefully through the guest agent and
// reads back the program's exit status.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/vmm/qemu"
	"kiln.dev/kiln/internal/volume"
)

// Factory makes VMs under one kiln root (Create) and opens the ones made
// before (Load); each VM it returns is the handle that runs that VM.
type Factory struct {
	root     string
	kernels  *kernel.Store
	log      *slog.Logger
	host     vmm.Host
	limits   HostLimits
	initPath string
	qemuBin  string
	backend  vmm.Backend
	images   imageStores // see image.go
	confine  *confiner   // see confine.go
	// removeVolume removes a volume a failed Create made; set by the
	// supervisor, which knows whether another VM names it meanwhile.
	removeVolume func(*volume.Store, string) error
	// templatesOn: VMs that can start from a template do (template.go).
	templatesOn bool
	templates   *templates
}

// Option configures a Factory.
type Option func(*Factory)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(r *Factory) { r.log = l } }

// WithInit sets the kiln-init binary (default: FindInit).
func WithInit(path string) Option { return func(r *Factory) { r.initPath = path } }

// WithQEMU sets the QEMU binary (default: from PATH).
func WithQEMU(path string) Option { return func(r *Factory) { r.qemuBin = path } }

// WithBackend sets the monitor backend VMs run on (default: QEMU).
func WithBackend(b vmm.Backend) Option { return func(r *Factory) { r.backend = b } }

// WithHost replaces the host that accelerator detection and limits look at.
func WithHost(h vmm.Host, l HostLimits) Option {
	return func(r *Factory) { r.host, r.limits = h, l }
}

// WithConfinement sets how VMs are jailed (default: the default uid range,
// or $KILN_JAIL_UIDS).
func WithConfinement(c Confinement) Option {
	return func(r *Factory) { r.confine = &confiner{conf: c} }
}

// WithoutJail runs every VM's monitor as the caller, unjailed, and leaves
// the host's cgroups and firewall alone, as a daemon not run by root does
// (but without QEMU's sandbox either): for tests on a fake backend.
func WithoutJail() Option {
	return func(r *Factory) {
		c := &confiner{}
		c.once.Do(func() {}) // probed: not root, no cgroups
		r.confine = c
	}
}

// New returns the factory for the kiln root.
func New(root string, opts ...Option) (*Factory, error) {
	r := &Factory{
		root:    root,
		kernels: kernel.NewStore(root),
		log:     slog.New(slog.DiscardHandler),
		host:    vmm.RealHost,
		limits:  ThisHost(),
		backend: qemu.Backend{},
	}
	for _, o := range opts {
		o(r)
	}
	if r.confine == nil {
		c, err := DefaultConfinement()
		if err != nil {
			return nil, err
		}
		r.confine = &confiner{conf: c}
	}
	if err := os.MkdirAll(r.vmsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("creating kiln root %s: %w", root, err)
	}
	if r.templatesOn {
		r.templates = &templates{dir: filepath.Join(root, templatesDir), log: r.log, backend: r.backend}
		r.templates.sweep()
	}
	return r, nil
}

// Kernels returns the factory's kernel store.
func (r *Factory) Kernels() *kernel.Store { return r.kernels }

func (r *Factory) vmsDir() string   { return filepath.Join(r.root, "vms") }
func (r *Factory) cacheDir() string { return filepath.Join(r.root, "cache") }

// InitEnv names the environment variable that overrides where kiln-init is.
const InitEnv = "KILN_INIT"

// FindInit returns the kiln-init binary: $KILN_INIT, else kiln-init beside
// the running executable, else from PATH.
func FindInit() (string, error) {
	if p := os.Getenv(InitEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("kiln-init from $%s: %w", InitEnv, errdefs.ErrUnavailable)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "kiln-init")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("kiln-init"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("kiln-init not found beside kiln, in PATH or in $%s (build it with make, or run scripts/setup): %w", InitEnv, errdefs.ErrUnavailable)
}

// ChooseAccel resolves the accelerator for a request, for run and doctor.
func (r *Factory) ChooseAccel(a vmm.Accel) (vmm.AccelChoice, error) {
	return r.host.ChooseAccel(a)
}

// Names of the files in a VM's directory that this package owns.
const (
	initrdFile = "initrd"
	statusFile = "status.jsonl"
	statusSock = "status.sock"
	// StdoutPipe and StderrPipe name the FIFOs (".in", ".out") the guest's
	// output comes through; StdoutFile and StderrFile are where VMs made
	// by an older kiln have it appended.
	StdoutPipe = "stdout"
	StderrPipe = "stderr"
	StdoutFile = "stdout.log"
	StderrFile = "stderr.log"
	agentSock  = "agent.sock"
	specFile   = "vm.json"
	// portsFile holds the published ports as resolved for the current
	// (or last) run: written at each start, read by inspect and port.
	portsFile = "ports.json"
)

// Create prepares a VM for spec: it fills in its defaults, validates it, resolves the kernel,
// QEMU and kiln-init, and writes the VM's directory and initrd. Nothing runs
// until Start. On error nothing is left behind.
func (r *Factory) Create(ctx context.Context, spec Spec) (*VM, error) {
	spec.Resolve()
	if err := spec.Validate(r.limits); err != nil {
		return nil, err
	}
	if spec.Program != "" {
		if err := CheckProgram(spec.Program); err != nil {
			return nil, err
		}
	}
	if spec.RootDir != "" {
		if err := checkRootDir(spec.RootDir); err != nil {
			return nil, err
		}
	}
	accel, err := r.host.ChooseAccel(vmm.Accel(spec.Accel))
	if err != nil {
		return nil, errdefs.Invalid(err.Error())
	}
	k, err := r.kernels.Resolve(spec.Kernel)
	if err != nil {
		if errors.Is(err, kernel.ErrNotFound) {
			return nil, fmt.Errorf("no guest kernel %q: build one with `kiln kernel build` (or run scripts/setup), or give --kernel: %w", kernelName(spec.Kernel), errdefs.ErrUnavailable)
		}
		return nil, errdefs.Mark(fmt.Errorf("guest kernel: %w", err), errdefs.ErrInvalidArgument)
	}
	// The backend resolves its monitor now, before any slow work: a
	// missing QEMU fails the create at once.
	probe := vmm.Config{Accel: accel.Accel, Binary: r.qemuBin}
	if err := r.backend.Prepare(&probe); err != nil {
		return nil, errdefs.Mark(err, errdefs.ErrUnavailable)
	}
	if err := disk.CheckFree(r.vmsDir()); err != nil {
		return nil, err
	}
	initPath := r.initPath
	if initPath == "" {
		if initPath, err = FindInit(); err != nil {
			return nil, err
		}
	}
	base, err := kernel.BaseInitramfs(r.cacheDir(), initPath, k)
	if err != nil {
		return nil, fmt.Errorf("preparing initramfs: %w", err)
	}
	img, err := r.resolveImage(ctx, &spec) // nil for a program; a root directory's plan for one
	if err != nil {
		return nil, err
	}
	id := spec.ID
	if id == "" {
		if id, err = NewID(); err != nil {
			return nil, err
		}
	}
	if spec.Name == "" {
		spec.Name = id[:12]
	}
	dir := filepath.Join(r.vmsDir(), id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating VM directory: %w", err)
	}
	var undo UndoStack
	defer undo.Run() // on any error below
	undo.Add(func() { os.RemoveAll(dir) })
	guestProg := "/usr/local/bin/" + filepath.Base(spec.Program)
	files := []kernel.File{{Path: guestProg, Mode: 0o755, Source: spec.Program}}
	var drives []vmm.Drive
	if img != nil {
		if files, drives, err = img.attach(ctx, dir, &spec); err != nil {
			return nil, err
		}
	}
	mounts, err := r.planMounts(ctx, dir, &spec)
	if err != nil {
		return nil, err
	}
	undo.Add(mounts.undo)
	drives = append(drives, mounts.drives...)
	as := r.agentSpec(&spec, k, guestProg, img)
	as.Mounts = mounts.mounts
	var nic *vmm.NetConfig
	if spec.Network == network.ModeUser {
		nic = &vmm.NetConfig{Mode: vmm.NetUser, MAC: network.MAC(id)}
		as.Network = &agent.Network{
			Interface: network.UserInterface, Address: network.UserGuestCIDR,
			Gateway: network.UserGateway, DNS: []string{network.UserDNS}, MAC: nic.MAC,
		}
	} else if spec.Attach != nil {
		nic, as.Network = bridgeNIC(id, spec.Attach)
	} else if network.IsNS(spec.Network) {
		// The guest becomes the namespace's interface: its MAC, address
		// and default route. Name servers are not known there.
		if spec.Pod, err = network.InspectNS(network.NSPath(spec.Network)); err != nil {
			return nil, err
		}
		p := spec.Pod
		nic = &vmm.NetConfig{Mode: vmm.NetTAP, MAC: p.MAC, TAP: network.PodTAP, NetNS: p.NS}
		as.Network = &agent.Network{Interface: network.UserInterface, Address: p.Address, Gateway: p.Gateway, MAC: p.MAC}
	}
	if as.Network != nil {
		as.Hosts = spec.guestHosts(as.Network.Gateway)
	}
	specJSON, err := json.Marshal(as)
	if err != nil {
		return nil, fmt.Errorf("encoding guest spec: %w", err)
	}
	initrd := filepath.Join(dir, initrdFile)
	if err := kernel.WriteInitrd(initrd, base, agent.SpecPath, specJSON, files); err != nil {
		return nil, err
	}
	for _, f := range files {
		// What binary mode copied out of the image is in the initrd now.
		if filepath.Dir(f.Source) == dir && strings.HasPrefix(filepath.Base(f.Source), "image-") {
			os.Remove(f.Source)
		}
	}
	cfg := vmm.Config{
		ID:        id,
		Dir:       dir,
		Kernel:    k.Path,
		Initrd:    initrd,
		MemoryMiB: spec.MemoryMiB,
		CPUs:      spec.CPUs,
		Accel:     accel.Accel,
		ACPI:      k.ACPI,
		// ACPICapable: the backend turns ACPI on for a VM whose devices
		// need it (its Prepare, below).
		ACPICapable: k.ACPICapable,
		Binary:      probe.Binary,
		Ports: []vmm.Port{
			// The status records come over a socket, and the program's
			// output through FIFOs: while no daemon takes them, the
			// guest's writes wait (a status record at once, output once
			// a pipe buffer is full) and the host holds no more.
			{Name: agent.PortStatus, Socket: filepath.Join(dir, statusSock)},
			{Name: agent.PortStdout, Pipe: filepath.Join(dir, StdoutPipe)},
			{Name: agent.PortStderr, Pipe: filepath.Join(dir, StderrPipe)},
			{Name: agent.PortControl, Socket: filepath.Join(dir, agentSock)},
		},
		Drives: drives,
		Shares: mounts.shares,
		Net:    nic,
	}
	if cfg.Jail, cfg.Sandbox, err = r.confine.template(dir, spec.Unconfined, nic != nil && nic.Mode == vmm.NetUser); err != nil {
		return nil, err
	}
	for _, p := range cfg.Ports {
		if p.Pipe != "" {
			if err := vmm.MakePipe(p.Pipe); err != nil {
				return nil, err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, statusFile), nil, 0o600); err != nil {
		return nil, fmt.Errorf("creating %s: %w", statusFile, err)
	}
	if err := r.backend.Prepare(&cfg); err != nil {
		if errors.Is(err, vmm.ErrUnavailable) {
			return nil, errdefs.Mark(err, errdefs.ErrUnavailable)
		}
		return nil, errdefs.Invalid(err.Error())
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rec := vmRecord{ID: id, Spec: spec, Accel: accel, Kernel: k, Config: cfg, Guest: as}
	// A template can stand in for the boot of a bare program VM (its
	// program handed over on a disk) and of a full image VM (everything
	// of the image on its disks), when its devices allow (canTemplate
	// decides, at each start). A binary-mode image's files are in its
	// initrd: it boots.
	if img == nil {
		// Its restored runs have a program disk more: only if that fits
		// the machine the VM is made for.
		withDisk := cfg
		withDisk.Drives = append(append([]vmm.Drive(nil), cfg.Drives...), programDrive(filepath.Join(dir, programDiskFile)))
		fits := r.backend.Prepare(&withDisk) == nil && withDisk.ACPI == cfg.ACPI
		if st, err := os.Stat(spec.Program); err == nil && fits {
			rec.Template = &templateInputs{Base: base, Modules: as.Modules, Program: guestProg,
				Source: spec.Program, Size: st.Size(), ModTime: st.ModTime()}
		}
	} else if img.mode == options.ModeFull {
		rec.Template = &templateInputs{Base: base, Modules: as.Modules}
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding VM record: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, specFile), b, 0o600); err != nil {
		return nil, fmt.Errorf("writing VM record: %w", err)
	}
	vm := rec.vm(r)
	vm.undoMounts = mounts.undo
	undo.Release()
	return vm, nil
}

// vmRecord is what a VM's directory says about it (vm.json): enough to
// start it again or to reattach to it after a restart of kiln.
type vmRecord struct {
	ID     string          `json:"id"`
	Spec   Spec            `json:"spec"`
	Accel  vmm.AccelChoice `json:"accel"`
	Kernel *kernel.Kernel  `json:"kernel"`
	Config vmm.Config      `json:"config"`
	Guest  *agent.Spec     `json:"guest"`
	// Template is what starting from a template needs, for a VM that can.
	Template *templateInputs `json:"template,omitempty"`
}

func (rec *vmRecord) vm(r *Factory) *VM {
	return &VM{ID: rec.ID, Name: rec.Spec.Name, Dir: rec.Config.Dir, Spec: rec.Spec, Accel: rec.Accel, Kernel: rec.Kernel, cfg: rec.Config, log: r.log, confine: r.confine, backend: r.backend,
		guest: rec.Guest, tmplIn: rec.Template, templates: r.templates}
}

// MonitorVersion is the first line of the VM monitor's --version ("QEMU
// emulator version 7.2.…"), or why it cannot be had.
func (r *Factory) MonitorVersion() string {
	probe := vmm.Config{Accel: vmm.AccelTCG, Binary: r.qemuBin}
	if err := r.backend.Prepare(&probe); err != nil {
		return "unavailable: " + err.Error()
	}
	out, err := exec.Command(probe.Binary, "--version").Output()
	if err != nil {
		return fmt.Sprintf("unavailable: %s --version: %v", probe.Binary, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// Load returns the VM whose directory is dir, as Create left it. Its
// monitor is not attached: call Attach to take over a running VM, or Start.
func (r *Factory) Load(dir string) (*VM, error) {
	b, err := os.ReadFile(filepath.Join(dir, specFile))
	if err != nil {
		return nil, fmt.Errorf("reading VM record: %w", err)
	}
	var rec vmRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("parsing VM record %s: %w", filepath.Join(dir, specFile), err)
	}
	if rec.Config.Dir != dir {
		return nil, fmt.Errorf("VM record in %s names directory %s: %w", dir, rec.Config.Dir, errdefs.ErrInvalidArgument)
	}
	return rec.vm(r), nil
}

// Rename records name as the name of the VM whose directory is dir, in its
// vm.json. The guest's hostname stays, as a container's does when docker
// renames it; a VM loaded before goes on naming itself by the old name in
// its messages.
func (r *Factory) Rename(dir, name string) error {
	return r.rewrite(dir, func(rec *vmRecord) error {
		rec.Spec.Name = name
		return nil
	})
}

// Resources are what `kiln update` may change of a VM; nil leaves a
// field as it is.
type Resources struct {
	Restart   *api.RestartPolicy
	MemoryMiB *int
	CPUs      *int
}

// Update records new resources of the VM whose directory is dir in its
// vm.json, after checking them as a create would. A VM loaded before
// keeps its own; the next Load has the new ones (the supervisor loads the
// VM again before its next start).
func (r *Factory) Update(dir string, u Resources) (Spec, error) {
	var out Spec
	err := r.rewrite(dir, func(rec *vmRecord) error {
		s := rec.Spec
		if u.Restart != nil {
			s.Restart = *u.Restart
		}
		if u.MemoryMiB != nil {
			s.MemoryMiB = *u.MemoryMiB
		}
		if u.CPUs != nil {
			s.CPUs = *u.CPUs
		}
		if err := s.ValidateResources(ThisHost()); err != nil {
			return err
		}
		rec.Spec = s
		rec.Config.MemoryMiB, rec.Config.CPUs = s.MemoryMiB, s.CPUs
		out = s
		return nil
	})
	return out, err
}

// rewrite changes the vm.json of the VM whose directory is dir through
// fn, atomically.
func (r *Factory) rewrite(dir string, fn func(*vmRecord) error) error {
	p := filepath.Join(dir, specFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("reading VM record: %w", err)
	}
	var rec vmRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("parsing VM record %s: %w", p, err)
	}
	if err := fn(&rec); err != nil {
		return err
	}
	if b, err = json.MarshalIndent(rec, "", "  "); err != nil {
		return fmt.Errorf("encoding VM record: %w", err)
	}
	return atomicfile.WriteFile(p, b, 0o600)
}

// VMDir returns the directory of the VM with the given ID.
func (r *Factory) VMDir(id string) string { return filepath.Join(r.vmsDir(), id) }

// VMIDs lists the IDs of the VM directories under the root.
func (r *Factory) VMIDs() ([]string, error) {
	ents, err := os.ReadDir(r.vmsDir())
	if err != nil {
		return nil, fmt.Errorf("listing VM directories: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

func kernelName(ref string) string {
	if ref == "" {
		return kernel.DefaultName
	}
	return ref
}

// agentSpec is what kiln-init is told to run: guestProg, or img when it is
// not nil.
func (r *Factory) agentSpec(s *Spec, k *kernel.Kernel, guestProg string, img *imagePlan) *agent.Spec {
	if img != nil {
		return img.agentSpec(s, k)
	}
	uid, gid, _ := ParseUser(s.User) // checked by Validate
	args := s.Entrypoint
	if len(args) == 0 {
		args = []string{guestProg}
	}
	args = append(append([]string{}, args...), s.Cmd...)
	home := "/root"
	if uid != 0 {
		home = "/"
	}
	env := options.MergeEnv([]string{"PATH=" + options.DefaultPath, "HOSTNAME=" + s.Name, "HOME=" + home}, s.Env)
	return &agent.Spec{
		Version:    agent.Version,
		Args:       args,
		Env:        env,
		WorkingDir: s.WorkingDir,
		UID:        uid,
		GID:        gid,
		Hostname:   s.Name,
		Rlimits:    s.guestRlimits(),
		Modules:    kernel.GuestModules(k),
		StopSignal: s.StopSignal,
	}
}

// NewID makes a new VM ID: 64 random hex digits. The supervisor takes one
// early for a VM on a bridge network, to lease its address under it.
func NewID() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making VM ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// SetVolumeRemover sets how a failed Create removes a volume it made
// (default: the volume store's Remove). The supervisor sets it, for it
// knows whether another VM names the volume meanwhile.
func (r *Factory) SetVolumeRemover(fn func(st *volume.Store, name string) error) {
	r.removeVolume = fn
}

// RemoveCgroup removes the cgroup the runs of the VM id used, if any is
// left (a VM removed, or one that ended while no daemon watched it).
func (r *Factory) RemoveCgroup(id string) error { return r.confine.removeCgroup(id) }

// SweepCgroups removes, host-wide, the empty VM cgroups that VMs of any
// root left when they ended unseen, and returns how many it removed.
func (r *Factory) SweepCgroups() int { return r.confine.sweepCgroups() }

// Reap ends the monitor of a VM no record knows (id, in the VM directory
// dir) through the backend, and returns its PID if one was running.
func (r *Factory) Reap(dir, id string) (int, error) { return r.backend.Reap(dir, id) }

// CacheBytes is what the factory's caches take on disk: the initramfs
// cache and the booted templates, both made again when needed.
func (r *Factory) CacheBytes() (cache, templates int64) {
	return disk.DirUsage(r.cacheDir()), disk.DirUsage(filepath.Join(r.root, templatesDir))
}
