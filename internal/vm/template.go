package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/unixsock"
	"kiln.dev/kiln/internal/vmm"
)

// Templates: a guest booted once up to where kiln-init waits for its spec
// (agent.Spec.Template), saved with the checkpoint machinery, from which
// later VMs of the same kernel, kiln-init, QEMU, memory, CPUs and devices
// start instead of booting:
//
//	<root>/templates/<key>/template.json   what the key hashes, the state's size
//	<root>/templates/<key>/initrd          the base initramfs and a template spec
//	<root>/templates/<key>/state           the guest's memory and devices
//	<root>/templates/<key>/console.log     the template boot's console
//	<root>/templates/.new-<key>-*          one being made (renamed into place)
//
// A VM starts from one when its initrd holds nothing the restored guest
// cannot be handed over the control port: a bare program VM (its program
// goes on a disk of its own) and a full image VM; a VM with host
// directories, or a binary-mode image (files in its initrd), boots.
// Disks are stand-ins in the template, probed again by kiln-init once the
// spec arrives; the NIC's backend is a hub port, replaced by the VM's own
// (user-mode or TAP).

// TemplatesEnv, set to 0, turns templates off for a daemon started
// without --templates.
const TemplatesEnv = "KILN_TEMPLATES"

const (
	templatesDir = "templates"
	templateMeta = "template.json"
	templateMAC  = "52:54:00:00:00:01"
	// A VM restored from a template finds its program at the start of a
	// read-only disk of programDiskSize bytes (a template boots with an
	// empty one in its place, so the guest's view of the disk, its
	// capacity, holds for every VM): programDiskFile in the VM's
	// directory, sparse. A program of more cannot start from a template.
	programDiskFile = "program.disk"
	programDiskSize = 1 << 30
	programSerial   = "kiln-program"
	// standInSize is the size of the empty disks a template boots with in
	// the place of a VM's.
	standInSize = 1 << 20
	// handoverTimeout bounds handing a restored template its spec.
	handoverTimeout = 15 * time.Second
)

// WithTemplates turns templates on (or off).
func WithTemplates(on bool) Option { return func(r *Factory) { r.templatesOn = on } }

// templateInputs is what Create records of a VM that can start from a
// template: the base initramfs its initrd was made from, and the program
// to hand the guest.
type templateInputs struct {
	// Base is the cached base initramfs (kiln-init and the kernel's
	// modules), named by its content's hash.
	Base    string   `json:"base"`
	Modules []string `json:"modules,omitempty"`
	// Program is a bare program VM's program's path in the guest; Source
	// its file on the host, as it was when the VM was made (a changed file
	// means a cold boot, whose initrd has the program as it was). An
	// image VM has none.
	Program string    `json:"program,omitempty"`
	Source  string    `json:"source,omitempty"`
	Size    int64     `json:"size,omitempty"`
	ModTime time.Time `json:"modTime,omitzero"`
}

// hasProgram reports whether the VM's program goes to it on a program disk.
func (in *templateInputs) hasProgram() bool { return in.Source != "" }

// templateKeyOf is what a template's key hashes: everything the saved
// guest depends on.
type templateKeyOf struct {
	Binary          string
	BinarySize      int64
	BinaryTime      time.Time
	Kernel          string
	KernelSize      int64
	KernelTime      time.Time
	Base            string
	BaseSize        int64
	Modules         []string
	Cmdline         string
	Accel           vmm.Accel
	ACPI            bool
	MemoryMiB, CPUs int
	Ports           []string
	// Drives are the VM's disks (ID, serial, read-only: what QEMU offers
	// the guest as features), program disk included.
	Drives            []string
	Net               bool
	Sandbox           bool
	Jailed            bool
	TemplateMAC       string
	KilnInitProtocols [2]int
}

// templateRecord is template.json.
type templateRecord struct {
	Key       string        `json:"key"`
	Inputs    templateKeyOf `json:"inputs"`
	Created   time.Time     `json:"created"`
	StateSize int64         `json:"stateSize"`
	// BootTime is how long the template's boot and save took.
	BootTime time.Duration `json:"bootTime"`
}

// templates is a root's template cache.
type templates struct {
	dir     string
	log     *slog.Logger
	backend vmm.Backend
	mu      sync.Mutex
	making  map[string]*sync.Mutex // one maker per key
}

func (t *templates) keyLock(key string) *sync.Mutex {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.making == nil {
		t.making = map[string]*sync.Mutex{}
	}
	l := t.making[key]
	if l == nil {
		l = &sync.Mutex{}
		t.making[key] = l
	}
	return l
}

// canTemplate reports whether the VM can start from a template.
func (vm *VM) canTemplate() bool {
	return vm.templates != nil && vm.tmplIn != nil && !vm.Spec.Cold &&
		len(vm.cfg.Shares) == 0 && vm.guest != nil && vm.guestKnowsItsMAC()
}

// guestKnowsItsMAC reports whether kiln-init is told the VM's MAC (a
// restored guest's NIC has the template's until it sets it): a bridge VM
// made by an older kiln is not, and boots.
func (vm *VM) guestKnowsItsMAC() bool {
	if vm.cfg.Net == nil {
		return true
	}
	return vm.guest.Network != nil && vm.guest.Network.MAC == vm.cfg.Net.MAC
}

// templateDrives are the drives a run restored from a template has beside
// the VM's own: the program disk of a bare program VM.
func (vm *VM) templateDrives() []vmm.Drive {
	if vm.tmplIn == nil || !vm.tmplIn.hasProgram() {
		return nil
	}
	return []vmm.Drive{programDrive(filepath.Join(vm.Dir, programDiskFile))}
}

// runDrives are the drives of a run restored from a template.
func (vm *VM) runDrives() []vmm.Drive {
	return append(append([]vmm.Drive(nil), vm.cfg.Drives...), vm.templateDrives()...)
}

// templateKey returns the key of the VM's template and what it hashes.
func (vm *VM) templateKey() (string, templateKeyOf, error) {
	c := vm.cfg
	k := templateKeyOf{Binary: c.Binary, Kernel: c.Kernel, Base: vm.tmplIn.Base, Modules: vm.tmplIn.Modules,
		Cmdline: c.Cmdline, Accel: c.Accel, ACPI: c.ACPI, MemoryMiB: c.MemoryMiB, CPUs: c.CPUs,
		Net: c.Net != nil, Sandbox: c.Sandbox, Jailed: c.Jail != nil, TemplateMAC: templateMAC,
		KilnInitProtocols: [2]int{agent.Version, agent.ControlVersion}}
	for _, d := range vm.runDrives() {
		k.Drives = append(k.Drives, fmt.Sprintf("%s:%s:ro=%t", d.ID, d.Serial, d.ReadOnly))
	}
	for _, p := range c.Ports {
		kind := "socket"
		switch {
		case p.Pipe != "":
			kind = "pipe"
		case p.File != "":
			kind = "file"
		}
		k.Ports = append(k.Ports, p.Name+":"+kind)
	}
	for _, f := range []struct {
		path string
		size *int64
		mod  *time.Time
	}{{c.Binary, &k.BinarySize, &k.BinaryTime}, {c.Kernel, &k.KernelSize, &k.KernelTime}, {vm.tmplIn.Base, &k.BaseSize, nil}} {
		st, err := os.Stat(f.path)
		if err != nil {
			return "", k, fmt.Errorf("template input: %w", err)
		}
		*f.size = st.Size()
		if f.mod != nil {
			*f.mod = st.ModTime().UTC()
		}
	}
	return k.key(), k, nil
}

// key is the template key of k: a hash of it (a kiln whose key holds
// other inputs finds other keys).
func (k *templateKeyOf) key() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// errTemplateInputs: the VM's program changed since it was made.
var errProgramChanged = errors.New("the program changed since the VM was made")

// startFromTemplate starts the VM restored from its template, made first
// if there is none. It reports whether a template was made.
func (vm *VM) startFromTemplate(ctx context.Context) (made bool, err error) {
	in := vm.tmplIn
	if in.hasProgram() {
		prog, err := os.Open(in.Source)
		if err != nil {
			return false, fmt.Errorf("opening the program: %w", err)
		}
		defer prog.Close()
		if st, err := prog.Stat(); err != nil || st.Size() != in.Size || !st.ModTime().Equal(in.ModTime) {
			return false, errProgramChanged
		}
		if err := writeProgramDisk(filepath.Join(vm.Dir, programDiskFile), prog, in.Size); err != nil {
			return false, err
		}
	}
	key, inputs, err := vm.templateKey()
	if err != nil {
		return false, err
	}
	t := vm.templates
	dir := filepath.Join(t.dir, key)
	lock := t.keyLock(key)
	lock.Lock()
	rec, err := readTemplate(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		// Damaged (a truncated state, say): this start boots, the next
		// makes the template again.
		os.RemoveAll(dir)
		lock.Unlock()
		return false, fmt.Errorf("template %s is damaged (discarded): %w", key, err)
	}
	if err != nil {
		if rec, err = t.make(ctx, vm, key, inputs); err != nil {
			lock.Unlock()
			return false, fmt.Errorf("making template %s: %w", key, err)
		}
		made = true
	}
	lock.Unlock()
	state, err := os.Open(filepath.Join(dir, checkpointMem))
	if err != nil {
		return made, err
	}
	defer state.Close()
	t0 := time.Now()
	vm.log.Debug("restoring a template", "vm", vm.ID, "template", key)
	err = vm.start(ctx, runFrom{incoming: state, initrd: filepath.Join(dir, initrdFile),
		drives:   vm.templateDrives(),
		handover: func() error { return vm.handover(in) }})
	if err != nil {
		// The template is suspect: made again next time.
		lock.Lock()
		if cur, rerr := readTemplate(dir); rerr == nil && cur.Created.Equal(rec.Created) {
			os.RemoveAll(dir)
		}
		lock.Unlock()
		return made, fmt.Errorf("restoring template %s (discarded): %w", key, err)
	}
	vm.log.Info("VM started from a template", "vm", vm.ID, "template", key, "made", made, "restore", time.Since(t0))
	return made, nil
}

// readTemplate reads and checks template.json and the state's size.
func readTemplate(dir string) (*templateRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, templateMeta))
	if err != nil {
		return nil, err
	}
	var r templateRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reading %s: %w", templateMeta, err)
	}
	st, err := os.Stat(filepath.Join(dir, checkpointMem))
	if err != nil {
		return nil, fmt.Errorf("template state: %v", err)
	}
	if st.Size() != r.StateSize {
		return nil, fmt.Errorf("template state is %d bytes, %d were saved", st.Size(), r.StateSize)
	}
	if _, err := os.Stat(filepath.Join(dir, initrdFile)); err != nil {
		return nil, fmt.Errorf("template initrd: %v", err)
	}
	return &r, nil
}

// make boots a template for key as vm would boot, up to where kiln-init
// waits for its spec, and saves it. Its QEMU is confined as the VM's
// would be (jail, cgroup, uid of the closed half, sandbox), though it
// runs only kiln's own kiln-init: the guest's state it saves is what
// every VM of the key starts from.
func (t *templates) make(ctx context.Context, vm *VM, key string, in templateKeyOf) (*templateRecord, error) {
	t0 := time.Now()
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, err
	}
	if err := disk.CheckFree(t.dir); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(t.dir, ".new-"+key[:12]+"-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	spec, _ := json.Marshal(agent.Spec{Version: agent.Version, Template: true, Modules: in.Modules})
	initrd := filepath.Join(tmp, initrdFile)
	if err := kernel.WriteInitrd(initrd, in.Base, agent.SpecPath, spec, nil); err != nil {
		return nil, err
	}
	// A jailed VM's QEMU reads it as the VM's uid.
	if err := os.Chmod(initrd, 0o644); err != nil {
		return nil, err
	}
	c := vm.cfg
	cfg := vmm.Config{ID: "template-" + key, Dir: tmp, Kernel: c.Kernel, Initrd: initrd, Cmdline: c.Cmdline,
		MemoryMiB: c.MemoryMiB, CPUs: c.CPUs, Accel: c.Accel, ACPI: c.ACPI, Binary: c.Binary, Sandbox: c.Sandbox}
	for _, p := range c.Ports {
		q := vmm.Port{Name: p.Name}
		switch {
		case p.Pipe != "":
			q.Pipe = filepath.Join(tmp, filepath.Base(p.Pipe))
			if err := vmm.MakePipe(q.Pipe); err != nil {
				return nil, err
			}
		case p.File != "":
			q.File = filepath.Join(tmp, filepath.Base(p.File))
		default:
			q.Socket = filepath.Join(tmp, filepath.Base(p.Socket))
		}
		cfg.Ports = append(cfg.Ports, q)
	}
	if c.Net != nil {
		cfg.Net = &vmm.NetConfig{Mode: vmm.NetUnplugged, MAC: templateMAC}
	}
	// Stand-ins for the VM's disks: empty, sparse, each with the drive's
	// ID, serial and mode (what the guest's driver negotiated); the
	// restored guest probes the VM's own again.
	for _, d := range vm.runDrives() {
		d.Path = filepath.Join(tmp, "drive-"+d.ID)
		if err := makeStandIn(d.Path); err != nil {
			return nil, err
		}
		cfg.Drives = append(cfg.Drives, d)
	}
	if err := vmm.MakeConsole(tmp); err != nil {
		return nil, err
	}
	con, err := startConsole(tmp, 1<<20, t.log)
	if err != nil {
		return nil, err
	}
	defer con.stop()
	var cl *cell
	if c.Jail != nil {
		cfg.Jail = &vmm.Jail{Helper: c.Jail.Helper, Root: filepath.Join(tmp, jailRootDir), Env: c.Jail.Env}
		var s Spec
		s.MemoryMiB, s.CPUs = c.MemoryMiB, c.CPUs
		if cfg, cl, err = vm.confine.enter(cfg, &s); err != nil {
			return nil, fmt.Errorf("confining the template boot: %w", err)
		}
	}
	m, err := t.backend.New(cfg, t.log)
	if err != nil {
		cl.release()
		return nil, err
	}
	if err := m.Start(ctx); err != nil {
		cl.release()
		return nil, err
	}
	cl.started()
	defer func() {
		if !ok {
			_ = m.Kill()
			_ = m.Wait(context.Background())
		}
		cl.release()
	}()
	saver, isSaver := m.(vmm.Saver)
	if !isSaver {
		return nil, fmt.Errorf("the %s backend cannot save a VM", m.Info().Backend)
	}
	boot := vm.Spec.BootTimeout
	timeout := time.Duration(boot)
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	if err := waitReady(ctx, filepath.Join(tmp, statusSock), timeout); err != nil {
		return nil, fmt.Errorf("%w; console: %s", err, lastLines(filepath.Join(tmp, vmm.ConsoleLog), 5))
	}
	f, err := os.OpenFile(filepath.Join(tmp, checkpointMem), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	err = saver.Save(ctx, f)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := m.Stop(ctx); err != nil && !errors.Is(err, vmm.ErrTimeout) {
		return nil, err
	}
	_ = m.Wait(ctx)
	con.stop()
	st, err := os.Stat(filepath.Join(tmp, checkpointMem))
	if err != nil {
		return nil, err
	}
	rec := &templateRecord{Key: key, Inputs: in, Created: time.Now().UTC(), StateSize: st.Size(), BootTime: time.Since(t0)}
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(tmp, templateMeta), b, 0o600); err != nil {
		return nil, err
	}
	// Only what a restore reads, and the console, stay.
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		switch e.Name() {
		case templateMeta, checkpointMem, initrdFile, vmm.ConsoleLog:
		default:
			os.RemoveAll(filepath.Join(tmp, e.Name()))
		}
	}
	final := filepath.Join(t.dir, key)
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	syncDir(t.dir)
	ok = true
	t.log.Info("template made", "template", key, "memoryMiB", in.MemoryMiB, "cpus", in.CPUs, "took", rec.BootTime, "stateSize", rec.StateSize)
	return rec, nil
}

// waitReady reads the status records of a template boot until kiln-init
// says it waits for its spec.
func waitReady(ctx context.Context, sock string, timeout time.Duration) error {
	var conn net.Conn
	err := unixsock.WithPath(sock, func(p string) error {
		var err error
		conn, err = net.DialTimeout("unix", p, 2*time.Second)
		return err
	})
	if err != nil {
		return fmt.Errorf("connecting to the template's status port: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	r := bufio.NewReader(io.LimitReader(conn, 1<<20))
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("the template boot did not reach kiln-init's wait for its spec: %w", err)
		}
		recs, perr := agent.ParseRecords(line)
		if perr != nil || len(recs) == 0 {
			continue
		}
		switch recs[0].Kind {
		case agent.KindReady:
			return nil
		case agent.KindError:
			return fmt.Errorf("kiln-init failed in the template boot: %s", recs[0].Error)
		}
	}
}

// handover gives a guest restored from a template its program and spec
// over the agent, with the host's time and entropy.
func (vm *VM) handover(in *templateInputs) error {
	t0 := time.Now()
	deadline := t0.Add(handoverTimeout)
	for {
		// The restored guest notices the new host connection within a
		// second or so, and may drop the first hello.
		_, err := vm.agent(time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the restored guest's agent did not answer: %w", err)
		}
		if m := vm.current(); m == nil || !m.Info().Running {
			return fmt.Errorf("the restored guest ended: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t1 := time.Now()
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	var prog *agent.ProgramDisk
	if in.hasProgram() {
		prog = &agent.ProgramDisk{Serial: programSerial, Path: in.Program, Size: in.Size}
	}
	if _, err := vm.agentDo(agent.OpenRequest{Op: agent.OpSpec, Spec: vm.guest, Entropy: entropy, TimeNanos: time.Now().UnixNano(), Program: prog}); err != nil {
		return fmt.Errorf("handing the guest its spec: %w", err)
	}
	vm.log.Debug("template handover", "vm", vm.ID, "agent", t1.Sub(t0), "spec", time.Since(t1))
	return nil
}

// runTemplateFile, in a VM's directory, names the template initrd the
// current run was started with (a restore from a template, or from a
// checkpoint of such a run); it is absent for a run that booted. A
// checkpoint reads it, also in a daemon that adopted the run.
const runTemplateFile = "run-template"

// recordRunTemplate records the initrd a run starts with in place of the
// VM's own ("" for its own).
func (vm *VM) recordRunTemplate(initrd string) error {
	p := filepath.Join(vm.Dir, runTemplateFile)
	if initrd == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return atomicfile.WriteFile(p, []byte(initrd), 0o600)
}

// runTemplateInitrd returns the initrd recorded for the current run, or
// "" when it booted from the VM's own.
func (vm *VM) runTemplateInitrd() string {
	b, err := os.ReadFile(filepath.Join(vm.Dir, runTemplateFile))
	if err != nil {
		return ""
	}
	return string(b)
}

// makeStandIn makes an empty sparse disk in a template's place of one of
// the VM's.
func makeStandIn(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("making a template's stand-in disk: %w", err)
	}
	err = f.Truncate(standInSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// programDrive is the disk a restored template finds its program on.
func programDrive(path string) vmm.Drive {
	return vmm.Drive{ID: "program", Path: path, ReadOnly: true, Serial: programSerial}
}

// writeProgramDisk makes path a sparse disk of programDiskSize bytes
// holding size bytes of prog from its start (none when prog is nil),
// readable by a jailed QEMU.
func writeProgramDisk(path string, prog *os.File, size int64) error {
	if size > programDiskSize {
		return fmt.Errorf("the program is %d bytes, more than a template's program disk holds (%d)", size, programDiskSize)
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("making the program disk: %w", err)
	}
	if prog != nil {
		if _, err := prog.Seek(0, io.SeekStart); err == nil {
			_, err = io.CopyN(f, prog, size)
		}
		if err != nil {
			f.Close()
			os.Remove(tmp)
			return fmt.Errorf("making the program disk: %w", err)
		}
	}
	err = f.Truncate(programDiskSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("making the program disk: %w", err)
	}
	return nil
}

// sweep removes what a daemon that died while making a template left,
// and the templates whose inputs changed since (a kernel, kiln-init or
// QEMU replaced): no VM's key can name them again.
func (t *templates) sweep() {
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(t.dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			os.RemoveAll(p)
			continue
		}
		rec, err := readTemplate(p)
		if err != nil || rec.Inputs.stale() || rec.Inputs.key() != e.Name() {
			t.log.Info("removing a stale template", "template", e.Name())
			os.RemoveAll(p)
		}
	}
}

// stale reports whether a file the template was made from changed.
func (k *templateKeyOf) stale() bool {
	for _, f := range []struct {
		path string
		size int64
		mod  time.Time
	}{{k.Binary, k.BinarySize, k.BinaryTime}, {k.Kernel, k.KernelSize, k.KernelTime}, {k.Base, k.BaseSize, time.Time{}}} {
		st, err := os.Stat(f.path)
		if err != nil || st.Size() != f.size || (!f.mod.IsZero() && !st.ModTime().Equal(f.mod)) {
			return true
		}
	}
	return false
}

// PruneTemplates removes every template of the root (they are made again
// on use), and returns how many there were and the bytes they took. A
// template being made is waited for, then removed; a VM restoring from
// one has its files open already, or boots.
func (r *Factory) PruneTemplates() (int, int64, error) {
	dir := filepath.Join(r.root, templatesDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	n, freed := 0, int64(0)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // being made (or left by a dead daemon: swept at start)
		}
		if r.templates != nil {
			l := r.templates.keyLock(e.Name())
			l.Lock()
			freed += diskUsage(filepath.Join(dir, e.Name()))
			err = os.RemoveAll(filepath.Join(dir, e.Name()))
			l.Unlock()
		} else {
			freed += diskUsage(filepath.Join(dir, e.Name()))
			err = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
		if err != nil {
			return n, freed, err
		}
		n++
	}
	return n, freed, nil
}
