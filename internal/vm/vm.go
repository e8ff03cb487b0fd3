package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/atomicfile"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

// VM is one VM made by Create.
type VM struct {
	ID     string
	Name   string
	Dir    string
	Spec   Spec
	Accel  vmm.AccelChoice
	Kernel *kernel.Kernel

	cfg     vmm.Config
	log     *slog.Logger
	backend vmm.Backend
	// confine jails the VM's runs (confine.go) when cfg.Jail is set.
	confine *confiner
	link    agentLink // the guest agent connection (agentconn.go)
	// guest is what kiln-init is told (vm.json's guest spec); tmplIn, set
	// for a VM that can start from a template, what that needs; templates
	// is the root's template cache, nil while templates are off.
	guest     *agent.Spec
	tmplIn    *templateInputs
	templates *templates
	// undoMounts removes the volumes Create made for this VM; set only on
	// the VM Create returns, for Discard.
	undoMounts func()

	// mu guards the fields below.
	mu sync.Mutex
	// machine is the monitor of the current (or last) run; a new one is
	// made for every Start.
	machine vmm.VMM
	// started is closed when kiln-init reports the program started.
	started  chan struct{}
	record   *agent.Record // the started record
	bootFail bool          // the boot deadline passed first
	// fromTemplate: the run was restored from a template; templateErr:
	// why a restore tried for it failed (it booted instead).
	fromTemplate bool
	templateErr  string
	// hostOOM: the run's QEMU was killed by its cgroup's memory limit.
	hostOOM  bool
	watching chan struct{} // closed when the status watcher has ended
}

// Stdout and Stderr return the host files the program's output lands in.
func (vm *VM) Stdout() string { return filepath.Join(vm.Dir, StdoutFile) }

// Stderr: see Stdout.
func (vm *VM) Stderr() string { return filepath.Join(vm.Dir, StderrFile) }

// Console returns the host file holding the guest's serial console.
func (vm *VM) Console() string { return filepath.Join(vm.Dir, vmm.ConsoleLog) }

// Info describes the VM's monitor process.
func (vm *VM) Info() vmm.Info {
	m := vm.current()
	if m == nil {
		return vmm.Info{Backend: vm.backend.Name(), Accel: vm.cfg.Accel}
	}
	return m.Info()
}

// current returns the monitor of the current run, or nil before the first.
func (vm *VM) current() vmm.VMM {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.machine
}

// Start boots the VM (again, if it ran before: the status of the last run
// is discarded, output is appended). It returns once the monitor is up;
// the program starts later (Started). A VM that does not reach kiln-init
// within the spec's boot timeout is killed and Wait reports a failed boot.
// ctx bounds the start, and the watching of the run: once it is done the
// VM's status and console are no longer taken (the VM runs on, for
// another process to Attach to).
//
// With templates on, a VM that can (canTemplate) is restored from its
// template instead (template.go); any failure there is logged, and the
// VM boots as it would without.
func (vm *VM) Start(ctx context.Context) error {
	vm.mu.Lock()
	vm.fromTemplate, vm.templateErr = false, ""
	vm.mu.Unlock()
	if vm.canTemplate() {
		_, err := vm.startFromTemplate(ctx)
		if err == nil {
			vm.mu.Lock()
			vm.fromTemplate = true
			vm.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		vm.log.Warn("starting a VM from its template failed: booting it instead", "vm", vm.ID, "err", err)
		vm.mu.Lock()
		vm.templateErr = err.Error()
		vm.mu.Unlock()
	}
	return vm.start(ctx, runFrom{})
}

// FromTemplate reports whether the current (or last) run was restored
// from a template, and, when a restore was tried and failed (the run then
// booted), why.
func (vm *VM) FromTemplate() (bool, string) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.fromTemplate, vm.templateErr
}

// runFrom is where a run starts from besides a boot.
type runFrom struct {
	// incoming is a saved guest to resume, whose run's status records
	// were status.
	incoming *os.File
	status   []byte
	// initrd replaces the VM's initrd on the monitor's command line (a
	// template's, which the saved guest was booted from).
	initrd string
	// drives are added to the VM's (a template's program disk).
	drives []vmm.Drive
	// handover runs once the monitor is up, before the run is watched;
	// its error ends the monitor and fails the start.
	handover func() error
}

// start starts a run: a boot, or the resumption of a saved guest.
func (vm *VM) start(ctx context.Context, from runFrom) error {
	incoming, status := from.incoming, from.status
	if m := vm.current(); m != nil && m.Info().Running {
		return fmt.Errorf("VM %s is already running: %w", vm.Name, errdefs.ErrConflict)
	}
	if err := os.WriteFile(filepath.Join(vm.Dir, statusFile), status, 0o600); err != nil {
		return fmt.Errorf("resetting VM status: %w", err)
	}
	if err := vm.attachBridge(); err != nil {
		return err
	}
	if p := vm.Spec.Pod; p != nil {
		// Before each start: the namespace's TAP and redirects, made
		// again if its owner removed them.
		if err := network.ConnectNS(p); err != nil {
			return err
		}
	}
	cfg, err := vm.resolvePorts()
	if err != nil {
		return err
	}
	cfg.Incoming = incoming
	if from.initrd != "" {
		cfg.Initrd = from.initrd
	}
	if err := vm.recordRunTemplate(from.initrd); err != nil {
		return err
	}
	if len(from.drives) > 0 {
		cfg.Drives = append(append([]vmm.Drive(nil), cfg.Drives...), from.drives...)
	}
	var cl *cell
	if cfg.Jail != nil {
		if cfg, cl, err = vm.confine.enter(cfg, &vm.Spec); err != nil {
			return fmt.Errorf("confining VM %s: %w", vm.Name, err)
		}
	}
	m, err := vm.backend.New(cfg, vm.log)
	if err != nil {
		cl.release()
		return err
	}
	fl, err := vm.begin(m)
	if err != nil {
		cl.release()
		return err
	}
	// abandon undoes the run's setup when it does not get going.
	abandon := func(con *consoleCopier) {
		if con != nil {
			con.stop()
		}
		cl.release()
		fl.Stop()
		fl.keep.close()
		vm.mu.Lock()
		close(vm.watching)
		vm.mu.Unlock()
	}
	con, err := startConsole(vm.Dir, vm.confine.conf.ConsoleMaxSize, vm.log)
	if err != nil {
		abandon(nil)
		return err
	}
	if err := m.Start(ctx); err != nil {
		abandon(con)
		return fmt.Errorf("starting VM %s: %w", vm.Name, err)
	}
	if from.handover != nil {
		if err := from.handover(); err != nil {
			_ = m.Kill()
			vm.closeAgent()
			abandon(con)
			return err
		}
	}
	cl.started()
	go vm.watch(ctx, m, fl, con)
	return nil
}

// resolvePorts returns the VM's config for this start, with its published
// ports resolved on the host now (a restart may find a port taken, and
// picks ephemeral ports anew), and records them in the VM directory.
func (vm *VM) resolvePorts() (vmm.Config, error) {
	cfg := vm.cfg
	var bound []network.PortMapping
	if cfg.Net != nil && len(vm.Spec.Ports) > 0 {
		var err error
		if cfg.Net.Mode == vmm.NetTAP {
			bound, err = vm.holdPorts()
		} else {
			bound, err = network.Resolve(vm.Spec.Ports)
		}
		if err != nil {
			return cfg, fmt.Errorf("publishing ports of VM %s: %w", vm.Name, err)
		}
		nic := *cfg.Net
		nic.Forwards = nil
		for _, p := range bound {
			if nic.Mode == vmm.NetUser { // a TAP's are DNATed by the host's firewall
				nic.Forwards = append(nic.Forwards, vmm.Forward{Protocol: p.Protocol, HostIP: p.HostIP, HostPort: p.HostPort, GuestPort: p.GuestPort})
			}
		}
		cfg.Net = &nic
	}
	if err := writePorts(vm.Dir, bound); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// writePorts records the resolved ports of a run (atomically: a reader
// sees the old list or the new one).
func writePorts(dir string, ports []network.PortMapping) error {
	b, err := json.Marshal(ports)
	if err != nil {
		return fmt.Errorf("encoding published ports: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, portsFile), b, 0o600); err != nil {
		return fmt.Errorf("recording published ports: %w", err)
	}
	return nil
}

// Ports returns the published ports as resolved for the current or last
// run (nil before the first run or without published ports).
func (vm *VM) Ports() []network.PortMapping {
	b, err := os.ReadFile(filepath.Join(vm.Dir, portsFile))
	if err != nil {
		return nil
	}
	var ps []network.PortMapping
	if json.Unmarshal(b, &ps) != nil {
		return nil
	}
	return ps
}

// begin makes m the current monitor and opens where its status records
// come from. A VM whose records kiln keeps, and that has started already
// (a daemon attaching to it again), is known started from them.
func (vm *VM) begin(m vmm.VMM) (*watchedStatus, error) {
	src, keep, err := vm.statusSource()
	if err != nil {
		return nil, err
	}
	vm.mu.Lock()
	vm.machine = m
	vm.record = nil
	vm.bootFail = false
	vm.started = make(chan struct{})
	vm.watching = make(chan struct{})
	if keep != nil {
		if b, err := vm.readStatus(); err == nil {
			if recs, err := agent.ParseRecords(b); err == nil && len(recs) > 0 && recs[0].Kind == agent.KindStarted {
				r := recs[0]
				vm.record = &r
				close(vm.started)
			}
		}
	}
	vm.mu.Unlock()
	return &watchedStatus{src: src, keep: keep}, nil
}

// watchedStatus is the status of a run being watched: where its records
// come from, and the file they are kept in when kiln keeps them.
type watchedStatus struct {
	src  statusSource
	keep *statusLog
}

// Stop stops reading the records, once what is there is taken.
func (w *watchedStatus) Stop() { w.src.Stop() }

// Attach takes over the VM's running monitor, started earlier by this or
// another kiln process, and watches it until it ends or ctx is done. It
// returns an error wrapping vmm.ErrNotRunning when the VM is not running.
func (vm *VM) Attach(ctx context.Context) error {
	m, err := vm.backend.Attach(vm.cfg, vm.log)
	if err != nil {
		return err
	}
	fl, err := vm.begin(m)
	if err != nil {
		return err
	}
	con, err := startConsole(vm.Dir, vm.confine.conf.ConsoleMaxSize, vm.log)
	if err != nil {
		// The VM runs on; only its console is not kept.
		vm.log.Warn("keeping VM console", "vm", vm.ID, "err", err)
	}
	go vm.watch(ctx, m, fl, con)
	return nil
}

// LastExit reads how the last run ended from the status the guest left,
// for a VM that ended while no kiln process watched it.
func (vm *VM) LastExit() (*Exit, error) { return vm.exit() }

// watch reads status records as the guest writes them, closes started on
// the first "started" record, and enforces the boot deadline. Once QEMU
// has exited it takes the rest of the console (con, nil when not kept).
// When ctx is done first it stops watching and leaves the VM running.
func (vm *VM) watch(ctx context.Context, m vmm.VMM, fl *watchedStatus, con *consoleCopier) {
	defer close(vm.watching)
	defer fl.keep.close()
	lines := &lineWriter{fn: func(line []byte) {
		recs, err := agent.ParseRecords(line)
		if err != nil || len(recs) == 0 {
			return
		}
		fl.keep.add(line)
		if recs[0].Kind == agent.KindStarted {
			vm.mu.Lock()
			if vm.record == nil {
				r := recs[0]
				vm.record = &r
				close(vm.started)
			}
			vm.mu.Unlock()
		}
	}}
	copied := make(chan error, 1)
	go func() { copied <- fl.src.Copy(lines) }()
	exited := make(chan struct{})
	go func() {
		if m.Wait(ctx) == nil {
			close(exited)
		}
	}()
	vm.mu.Lock()
	started := vm.started
	vm.mu.Unlock()
	deadline := time.NewTimer(time.Duration(vm.Spec.BootTimeout))
	defer deadline.Stop()
	detached := false
	for {
		select {
		case <-started:
			started = nil // never select on it again
			deadline.Stop()
			continue
		case <-deadline.C:
			vm.mu.Lock()
			late := vm.record == nil
			vm.bootFail = late
			vm.mu.Unlock()
			if late {
				vm.log.Warn("boot deadline passed: killing VM", "vm", vm.ID, "timeout", time.Duration(vm.Spec.BootTimeout))
				_ = m.Kill()
			}
			continue
		case <-exited:
		case <-ctx.Done():
			detached = true
		}
		break
	}
	fl.Stop()
	<-copied
	con.stop()
	vm.closeAgent()
	if vm.cfg.Jail != nil && !detached {
		vm.endCgroup()
	}
}

// endCgroup notes whether the cgroup of the run that ended killed its QEMU
// for memory, and removes it.
func (vm *VM) endCgroup() {
	g := vm.confine.group(vm.ID)
	if g == nil {
		return
	}
	if st, err := g.Stats(); err == nil && st.OOMKills > 0 {
		vm.mu.Lock()
		vm.hostOOM = true
		vm.mu.Unlock()
		vm.log.Warn("QEMU killed by its cgroup's memory limit", "vm", vm.ID)
	}
	if err := g.Remove(); err != nil {
		vm.log.Warn("removing the cgroup of an ended VM", "vm", vm.ID, "err", err)
	}
}

// Started returns a channel closed once the program has started.
func (vm *VM) Started() <-chan struct{} {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.record != nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return vm.started
}

// Exit is how a VM's run ended.
type Exit struct {
	// Code is the program's exit code in shell convention (128+n for a
	// signal), or what kiln-init reported (126, 127) when it could not run
	// it, or 137 when the VM was killed before the program ended.
	Code int
	// Signal killed the program, when not 0.
	Signal int
	// Uptime is the guest's uptime in seconds when kiln-init started.
	Uptime float64
	// OOMKilled: the guest's kernel ran out of memory and killed a
	// process during the run.
	OOMKilled bool
	// Err is set when the program did not run to its end: the boot failed
	// (errdefs.ErrBootFailed), kiln-init reported an error, or the VM was
	// killed.
	Err error
}

// Wait waits for the VM to end and returns how its program ended.
func (vm *VM) Wait(ctx context.Context) (*Exit, error) {
	m := vm.current()
	if m == nil {
		return nil, fmt.Errorf("VM %s has not run: %w", vm.Name, vmm.ErrNotRunning)
	}
	if err := m.Wait(ctx); err != nil {
		return nil, err
	}
	vm.mu.Lock()
	watching := vm.watching
	vm.mu.Unlock()
	if watching != nil {
		<-watching
	}
	return vm.exit()
}

func (vm *VM) exit() (*Exit, error) {
	data, err := vm.readStatus()
	if err != nil {
		return nil, fmt.Errorf("reading VM status: %w", err)
	}
	recs, err := agent.ParseRecords(data)
	if err != nil {
		return nil, err
	}
	e := &Exit{}
	started := false
	for _, r := range recs {
		switch r.Kind {
		case agent.KindStarted:
			started, e.Uptime = true, r.Uptime
		case agent.KindExit:
			e.Code, e.Signal, e.OOMKilled = r.ExitCode, r.Signal, r.OOMKilled
			return e, nil
		case agent.KindError:
			e.Code, e.Err = r.ExitCode, errors.New(r.Error)
			return e, nil
		}
	}
	vm.mu.Lock()
	bootFail, hostOOM := vm.bootFail, vm.hostOOM
	vm.mu.Unlock()
	console := lastLines(vm.Console(), 8)
	switch {
	case hostOOM:
		e.Code, e.OOMKilled = 137, true
		e.Err = fmt.Errorf("VM %s was killed: its QEMU passed the memory limit of its cgroup (guest memory plus QEMU's own)", vm.Name)
	case bootFail:
		e.Code = 125
		e.Err = fmt.Errorf("VM %s did not reach kiln-init within %s (accelerator %s); last console lines: %s: %w",
			vm.Name, time.Duration(vm.Spec.BootTimeout), vm.Accel.Accel, console, errdefs.ErrBootFailed)
	case !started:
		e.Code = 125
		e.Err = fmt.Errorf("VM %s ended before its program started; last console lines: %s: %w", vm.Name, console, errdefs.ErrBootFailed)
	default:
		e.Code = 137
		e.Err = fmt.Errorf("VM %s was killed before its program ended", vm.Name)
	}
	return e, nil
}

// Stop stops the VM gracefully: the guest agent sends the program its stop
// signal and kills it after grace; if the VM has not ended by grace plus a
// margin, the VMM backend stops it (QMP quit, SIGTERM, SIGKILL). The error
// wraps vmm.ErrTimeout when the VM had to be forced.
func (vm *VM) Stop(ctx context.Context, grace time.Duration) error {
	m := vm.current()
	if m == nil || !m.Info().Running {
		return nil
	}
	_, err := vm.agentDo(agent.OpenRequest{Op: agent.OpStop, GraceMillis: grace.Milliseconds()})
	if err != nil {
		vm.log.Debug("guest agent unreachable", "vm", vm.ID, "err", err)
	} else {
		wctx, cancel := context.WithTimeout(ctx, grace+5*time.Second)
		werr := m.Wait(wctx)
		cancel()
		if werr == nil {
			return nil
		}
	}
	if err := m.Stop(ctx); err != nil && !errors.Is(err, vmm.ErrTimeout) {
		return err
	}
	return fmt.Errorf("VM %s did not stop within %s: %w", vm.Name, grace, vmm.ErrTimeout)
}

// Signal delivers sig to the program through the guest agent.
func (vm *VM) Signal(sig int) error {
	_, err := vm.agentDo(agent.OpenRequest{Op: agent.OpSignal, Signal: sig})
	return err
}

// Kill ends the VM at once.
func (vm *VM) Kill() error {
	m := vm.current()
	if m == nil {
		return nil
	}
	if err := m.Kill(); err != nil && !errors.Is(err, vmm.ErrNotRunning) {
		return err
	}
	return nil
}

// Remove kills the VM if it still runs and deletes its directory.
func (vm *VM) Remove() error {
	if m := vm.current(); m != nil && m.Info().Running {
		if err := m.Kill(); err != nil {
			return fmt.Errorf("removing VM %s: %w", vm.Name, err)
		}
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return fmt.Errorf("removing VM %s: %w", vm.Name, err)
	}
	if vm.cfg.Jail != nil {
		if err := vm.confine.removeCgroup(vm.ID); err != nil {
			return fmt.Errorf("removing VM %s: %w", vm.Name, err)
		}
	}
	return nil
}

// Discard undoes a Create whose VM is not wanted after all (a later step
// of creating it failed): it removes the VM as Remove does, and the named
// volumes Create made for it, which no other VM can refer to yet.
func (vm *VM) Discard() error {
	err := vm.Remove()
	if vm.undoMounts != nil {
		vm.undoMounts()
	}
	return err
}

// Bounds on what the guest writes to its status port (status.jsonl):
// kiln-init's records are a few hundred bytes, and a run writes a handful.
// A hostile guest may write anything; the host never holds more than this.
const (
	// maxStatusLine is the longest status record kept; a longer line is
	// dropped whole.
	maxStatusLine = 64 << 10
	// maxStatusRead is how much of status.jsonl is read to learn how a run
	// ended: records past it are ignored.
	maxStatusRead = 1 << 20
)

// lineWriter calls fn for each complete line written to it, up to
// maxStatusLine bytes; a longer line is dropped (up to its newline), so
// its buffer never holds more than that.
type lineWriter struct {
	buf      []byte
	skipping bool // inside a line that was too long
	fn       func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if w.skipping {
			if i < 0 {
				return n, nil
			}
			w.skipping, p = false, p[i+1:]
			continue
		}
		if i < 0 {
			if len(w.buf)+len(p) > maxStatusLine {
				w.buf, w.skipping = w.buf[:0], true
				return n, nil
			}
			w.buf = append(w.buf, p...)
			return n, nil
		}
		if len(w.buf)+i+1 <= maxStatusLine {
			w.fn(append(w.buf, p[:i+1]...))
		}
		w.buf, p = w.buf[:0], p[i+1:]
	}
	return n, nil
}

// readStatus reads what a run's status records say, at most maxStatusRead
// bytes of them.
func (vm *VM) readStatus() ([]byte, error) {
	f, err := os.Open(filepath.Join(vm.Dir, statusFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStatusRead))
	if err != nil {
		return nil, err
	}
	if len(b) == maxStatusRead {
		// Cut at the last whole line: a record cut in two is no record.
		b = b[:bytes.LastIndexByte(b, '\n')+1]
	}
	return b, nil
}

// lastLines returns the last n non-empty lines of a file joined by " | ",
// read from its last vmm.MaxTail bytes.
func lastLines(path string, n int) string {
	if s := vmm.LastLines(path, n); s != "" {
		return s
	}
	return "(no console output)"
}

// BootUptime returns the guest's uptime when kiln-init started, once the
// program has started (0 before).
func (vm *VM) BootUptime() float64 {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.record == nil {
		return 0
	}
	return vm.record.Uptime
}
