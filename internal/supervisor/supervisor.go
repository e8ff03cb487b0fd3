// Package supervisor keeps VMs in their desired state for the daemon: it
// creates them through a vm.Factory, starts, stops and removes them,
// restarts them by their policy with backoff, runs their health checks,
// collects their output into logs, records what happens in the state store
// and reconciles that store with the VMs it finds at a daemon start. It
// also owns what VMs share: bridge networks' leases, firewall and name
// servers, volume reservations, and the image removal guard.
package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/vmm"
)

// Event actions.
const (
	EventCreated   = "created"
	EventStarted   = "started"
	EventDied      = "died"
	EventRestarted = "restarted"
	EventStopped   = "stopped"
	EventKilled    = "killed"
	EventRemoved   = "removed"
	EventOOM       = "oom"
	// EventTemplateFallback: a start that tried to restore the VM from
	// a template failed there and booted the VM instead (attribute
	// error says why); the start event of such a run has no from=template.
	EventTemplateFallback = "template_fallback"
)

// Supervisor keeps VMs in their desired state: it starts and stops them,
// records what happens in the state store, restarts them by their policy,
// collects their logs, and on start-up reconciles the store with the VMs it
// finds running. VMs do not depend on it: they keep running when it stops.
type Supervisor struct {
	rt  *vm.Factory
	db  *state.Store
	log *slog.Logger

	// mu guards vms and subs.
	mu   sync.Mutex
	vms  map[string]*managed
	subs map[chan state.Event]struct{}

	net  netState    // bridge networks: see networks.go
	vols volumeLocks // see volumes.go
	// images orders image removal against creation: see imagerm.go
	images imageGuard

	// ctx is the supervisor's root: every goroutine it starts (monitors,
	// health checks, status watchers, network syncs, restarts) ends when
	// it is cancelled, by Close. The VMs themselves do not.
	ctx    context.Context
	cancel context.CancelFunc
	// obs, when set (before any VM is created or reconciled), is told
	// of every event and every guest's boot time: the daemon's metrics.
	obs Observer
	// gmu guards closing; tasks counts the goroutines started by spawn.
	gmu     sync.Mutex
	closing bool
	tasks   sync.WaitGroup
}

// closeTimeout bounds how long Close waits for the supervisor's goroutines.
const closeTimeout = 10 * time.Second

// spawn runs fn in a goroutine Close waits for; once Close has begun it
// runs nothing and returns false.
func (s *Supervisor) spawn(fn func()) bool {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if s.closing {
		return false
	}
	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		fn()
	}()
	return true
}

// managed is one VM under supervision.
type managed struct {
	id string
	// mu guards the fields below. It is never held while waiting for a VM
	// to stop, nor while its monitor comes up (starting), so rm -f, ps
	// and inspect can always get in.
	mu      sync.Mutex
	rec     *state.VM
	spec    vm.Spec
	opts    Options
	machine *vm.VM
	logs    *collector
	runDone chan struct{} // closed when the current run ends; nil when not running
	// starting is closed when the start under way (its monitor coming up,
	// with mu let go) has succeeded or failed; nil when none is. Stop,
	// Remove, Kill and another start wait for it (settle).
	starting chan struct{}
	// nextRun is closed (and replaced) whenever a run starts, for waits on
	// the next run of a VM that is not running yet.
	nextRun chan struct{}
	timer   *time.Timer // pending restart
	backoff int         // consecutive quick restarts
	removed bool
	health  *healthState // the current run's health checks; nil without
	// checkpointed: the current run is being ended by a checkpoint, which
	// the monitor records as a clean stop.
	checkpointed bool
	// reload: vm.json changed (kiln update) since machine was loaded; the
	// next start loads the VM again.
	reload bool
}

// settle locks m.mu once no start of the VM is under way; it fails, with
// m.mu not held, when ctx is done first.
func (m *managed) settle(ctx context.Context) error {
	m.mu.Lock()
	for m.starting != nil {
		ch := m.starting
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.Lock()
	}
	return nil
}

// settled finds the VM ref names and returns it with m.mu held once no
// start of it is under way.
func (s *Supervisor) settled(ctx context.Context, ref string) (*managed, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := m.settle(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// record is what the state store keeps of a VM beside its state: nothing,
// now. The VM's spec, its request with its options in it, is kept once, in
// its directory's vm.json, with everything else needed to start or
// reattach it.
//
// An older kiln kept the VM's options here (they were not in its spec),
// and one older still its spec too: adopt puts such options into the spec
// it reads, and takes the spec only when vm.json cannot be read.
type record struct {
	Spec    *vm.Spec `json:"spec,omitempty"`
	Options *Options `json:"options,omitempty"`
}

// New returns a supervisor over the factory's VMs and the store.
func New(rt *vm.Factory, db *state.Store, log *slog.Logger) *Supervisor {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Supervisor{rt: rt, db: db, log: log, vms: map[string]*managed{}, subs: map[chan state.Event]struct{}{}, ctx: ctx, cancel: cancel}
	rt.SetVolumeRemover(s.removeCreatedVolume)
	return s
}

// View is a VM as the supervisor knows it.
type View struct {
	Record  state.VM
	Spec    vm.Spec
	Options Options
	Dir     string
	Accel   vmm.Accel
	Kernel  string
	// Ports are the published ports as resolved for the current run; nil
	// when the VM is not running.
	Ports []network.PortMapping
	// Health is the current run's health; nil without health checks.
	Health *Health
	// OOMKilled: the last run's guest ran out of memory and its kernel
	// killed a process.
	OOMKilled bool
	// Confinement is how the running VM's QEMU is confined; set by Get
	// only, nil when the VM does not run.
	Confinement *vm.ConfinementView
}

func (m *managed) view() *View {
	v := &View{Record: *m.rec, Spec: m.spec, Options: m.opts}
	if m.machine != nil {
		v.Dir, v.Accel = m.machine.Dir, m.machine.Accel.Accel
		if m.machine.Kernel != nil {
			v.Kernel = m.machine.Kernel.Path
		}
		if m.runDone != nil {
			v.Ports = m.machine.Ports()
			v.Health = m.health.snapshot()
		} else {
			v.OOMKilled = m.machine.OOMKilled()
		}
	}
	return v
}

// Subscribe returns a channel of events from now on; cancel ends it.
func (s *Supervisor) Subscribe() (<-chan state.Event, func()) {
	ch := make(chan state.Event, 256)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
	}
}

// event records an event and hands it to subscribers.
// Observer is told what the supervisor sees happen, as it happens.
type Observer interface {
	// Event is a lifecycle event: its action and attributes, as stored.
	Event(action, attrs string)
	// Booted is a guest's uptime in seconds when its program started.
	Booted(uptime float64)
}

// SetObserver sets the supervisor's observer; call it before Reconcile.
func (s *Supervisor) SetObserver(o Observer) { s.obs = o }

func (s *Supervisor) event(rec *state.VM, action string, attrs ...string) {
	if s.ctx.Err() != nil {
		return // closed: the store may be closed too
	}
	if s.obs != nil {
		s.obs.Event(action, strings.Join(attrs, ","))
	}
	e, err := s.db.AddEvent(s.ctx, state.Event{VMID: rec.ID, Name: rec.Name, Action: action, Attrs: strings.Join(attrs, ",")})
	if err != nil {
		s.log.Warn("recording event", "vm", rec.ID, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- e:
		default: // a subscriber that does not keep up loses events
		}
	}
}

func (s *Supervisor) save(m *managed) {
	if s.ctx.Err() != nil {
		return // closed: the next daemon reconciles what happens now
	}
	if err := s.db.UpdateVM(s.ctx, m.rec); err != nil {
		s.log.Warn("saving VM state", "vm", m.id, "err", err)
	}
}

// get finds a managed VM by name, ID or unique ID prefix.
func (s *Supervisor) get(ctx context.Context, ref string) (*managed, error) {
	rec, err := s.db.GetVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	m, ok := s.vms[rec.ID]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	return m, nil
}

// Create prepares a VM for the request in spec and records it, without
// starting it. The spec it keeps has the request's options resolved.
func (s *Supervisor) Create(ctx context.Context, spec vm.Spec) (*View, []string, error) {
	opts := OptionsOf(&spec.VMConfig)
	opts.Resolve()
	if err := opts.Validate(); err != nil {
		return nil, nil, err
	}
	opts.setIn(&spec.VMConfig)
	if spec.Name != "" {
		if err := vm.ValidateName(spec.Name); err != nil {
			return nil, nil, err
		}
		// Exact names only: a name may be a prefix of another VM's ID.
		inUse, err := s.db.NameInUse(ctx, spec.Name)
		if err != nil {
			return nil, nil, err
		}
		if inUse {
			return nil, nil, fmt.Errorf("the name %q is already in use: %w", spec.Name, errdefs.ErrConflict)
		}
	}
	if names := volumeNames(spec.Mounts); len(names) > 0 {
		// Until the VM is in s.vms, a volume removal must not miss it.
		// Deferred before the undo, so released after the VM is in s.vms
		// or its volumes are undone.
		defer s.reserveVolumes(spec.Name, names)()
	}
	var undo vm.UndoStack
	defer undo.Run() // on any error below
	release, err := s.leaseNetwork(ctx, &spec)
	if err != nil {
		return nil, nil, err
	}
	undo.Add(release)
	machine, err := s.rt.Create(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	undo.Add(func() { machine.Discard() })
	var warnings []string
	// Until the VM is in s.vms, an image removal must not miss it.
	releaseImage, err := s.holdImage(machine.Spec.ImageID)
	if err != nil {
		return nil, nil, err
	}
	defer releaseImage()
	if machine.Accel.Warning != "" {
		warnings = append(warnings, machine.Accel.Warning)
	}
	b, err := json.Marshal(record{})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding VM record: %w", err)
	}
	rec := &state.VM{ID: machine.ID, Name: machine.Name, Spec: b, Created: time.Now().UTC(), Desired: state.DesiredStopped, Status: state.StatusCreated}
	logs, err := startCollector(machine.Dir, opts.Log, s.log)
	if err != nil {
		return nil, nil, err
	}
	undo.Add(logs.Close)
	if err := s.db.InsertVM(ctx, rec); err != nil {
		return nil, nil, err
	}
	undo.Release()
	m := &managed{id: machine.ID, rec: rec, spec: machine.Spec, opts: opts, machine: machine, logs: logs, nextRun: make(chan struct{})}
	s.mu.Lock()
	s.vms[machine.ID] = m
	s.mu.Unlock()
	s.event(rec, EventCreated)
	return m.view(), warnings, nil
}

// Start starts a VM that is not running; starting a running VM is a no-op.
func (s *Supervisor) Start(ctx context.Context, ref string) error {
	return s.StartFrom(ctx, ref, "")
}

// StartFrom starts a VM that is not running from its checkpoint named
// checkpoint (vm.Restore: the program goes on where it was saved), or
// boots it when checkpoint is "" (Start).
func (s *Supervisor) StartFrom(ctx context.Context, ref, checkpoint string) error {
	if checkpoint != "" {
		if err := options.ValidateCheckpointName(checkpoint); err != nil {
			return err
		}
	}
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	defer m.mu.Unlock()
	if m.removed {
		return fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	if m.rec.Status == state.StatusDead {
		return fmt.Errorf("VM %s cannot start: %s: %w", m.rec.Name, m.rec.Error, errdefs.ErrConflict)
	}
	if checkpoint != "" {
		if m.runDone != nil {
			return fmt.Errorf("VM %s is running: stop it before starting it from checkpoint %q: %w", m.rec.Name, checkpoint, errdefs.ErrConflict)
		}
		if err := m.machine.CanRestore(checkpoint); err != nil {
			return err
		}
	}
	m.rec.Desired = state.DesiredRunning
	if m.runDone != nil {
		s.save(m)
		return nil
	}
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.backoff = 0
	return s.startLocked(m, EventStarted, checkpoint)
}

// startLocked boots the VM's current run, or resumes its checkpoint named
// checkpoint when not "". Preconditions: m.mu held, not running, not
// starting. It lets go of m.mu while the monitor comes up (the VM is
// starting meanwhile), and holds it again when it returns.
func (s *Supervisor) startLocked(m *managed, action, checkpoint string) error {
	if m.reload {
		// Resources changed by an update apply from this start on.
		if v, err := s.rt.Load(s.rt.VMDir(m.id)); err != nil {
			s.log.Warn("loading an updated VM again; it starts as it was", "vm", m.id, "err", err)
		} else {
			m.machine, m.reload = v, false
		}
	}
	err := s.acquireVolumes(m.id, &m.spec)
	if err == nil {
		starting, machine := make(chan struct{}), m.machine
		m.starting = starting
		m.rec.Status, m.rec.Error = state.StatusStarting, ""
		s.save(m)
		m.mu.Unlock()
		if checkpoint != "" {
			err = machine.Restore(s.ctx, checkpoint)
		} else {
			err = machine.Start(s.ctx)
		}
		m.mu.Lock()
		m.starting = nil
		close(starting)
		if err != nil {
			s.releaseVolumes(m.id)
		}
	}
	if err != nil {
		m.rec.Status, m.rec.ExitCode, m.rec.Error = state.StatusExited, 125, err.Error()
		m.rec.FinishedAt = time.Now().UTC()
		m.rec.Desired = state.DesiredStopped
		s.save(m)
		m.logs.EndFollowers()
		close(m.nextRun) // waiters on the next run see it end at once
		m.nextRun = make(chan struct{})
		return err
	}
	m.rec.Status, m.rec.PID, m.rec.Error = state.StatusRunning, m.machine.Info().PID, ""
	m.rec.StartedAt, m.rec.FinishedAt, m.rec.ExitCode, m.rec.BootUptime = time.Now().UTC(), time.Time{}, 0, 0
	s.save(m)
	done := make(chan struct{})
	m.runDone = done
	close(m.nextRun)
	m.nextRun = make(chan struct{})
	fromTemplate, why := m.machine.FromTemplate()
	if why != "" {
		s.event(m.rec, EventTemplateFallback, "error="+strings.ReplaceAll(why, ",", ";"))
	}
	if fromTemplate {
		s.event(m.rec, action, "from=template")
	} else {
		s.event(m.rec, action)
	}
	s.networkChanged(m.spec)
	machine := m.machine
	s.spawn(func() { s.monitor(m, machine, done) }) // closing: the next daemon attaches
	return nil
}

// monitor waits for one run of a VM to end and records it; it applies the
// restart policy. It is the only goroutine that waits on that run. When
// the supervisor closes first it returns at once, recording nothing: the
// VM runs on and the next daemon attaches to it.
func (s *Supervisor) monitor(m *managed, machine *vm.VM, done chan struct{}) {
	s.spawn(func() { s.runHealth(m, machine, done) })
	s.spawn(func() {
		select {
		case <-machine.Started():
			// Dial now: the first exec or stop need not wait for the hello.
			s.spawn(func() { _, _ = machine.Agent() })
			if up := machine.BootUptime(); up > 0 {
				if s.obs != nil {
					s.obs.Booted(up)
				}
				m.mu.Lock()
				if m.runDone == done {
					m.rec.BootUptime = up
					s.save(m)
				}
				m.mu.Unlock()
			}
		case <-done:
		case <-s.ctx.Done():
		}
	})
	exit, err := machine.Wait(s.ctx)
	if s.ctx.Err() != nil {
		return
	}
	s.releaseVolumes(m.id)
	m.logs.VMEnded()
	m.mu.Lock()
	code, msg := 125, ""
	if err != nil {
		msg = err.Error()
	} else {
		code = exit.Code
		if exit.Err != nil {
			msg = exit.Err.Error()
		}
	}
	if m.checkpointed {
		// Ended by a checkpoint, as a stop: not a failure.
		code, msg, m.checkpointed = 0, "", false
	}
	ranFor := time.Since(m.rec.StartedAt)
	m.rec.Status, m.rec.PID, m.rec.ExitCode, m.rec.Error, m.rec.FinishedAt = state.StatusExited, 0, code, msg, time.Now().UTC()
	m.runDone, m.health = nil, nil
	s.save(m)
	s.networkChanged(m.spec)
	if exit != nil && exit.OOMKilled {
		s.event(m.rec, EventOOM)
	}
	s.event(m.rec, EventDied, "exitCode="+strconv.Itoa(code))
	s.afterExit(m, ranFor, done)
}

// afterExit applies the restart policy to a run that just ended, and then
// closes done: a waiter on an auto-removed VM returns once it is gone.
// Preconditions: m.mu held; it is released.
func (s *Supervisor) afterExit(m *managed, ranFor time.Duration, done chan struct{}) {
	if m.removed {
		m.mu.Unlock()
		close(done)
		return
	}
	restart := m.rec.Desired == state.DesiredRunning && m.opts.Restart.ShouldRestart(m.rec.ExitCode, m.rec.RestartCount)
	if !restart {
		m.logs.EndFollowers()
		autoRemove := m.opts.AutoRemove
		m.mu.Unlock()
		if autoRemove {
			// As docker's --rm, the VM's anonymous volumes go with it.
			if err := s.Remove(s.ctx, m.id, RemoveOptions{Force: true, Volumes: true}); err != nil && !errors.Is(err, errdefs.ErrNotFound) && s.ctx.Err() == nil {
				s.log.Warn("removing VM after it ended", "vm", m.id, "err", err)
			}
		}
		close(done)
		return
	}
	if ranFor >= BackoffReset {
		m.backoff = 0
	}
	delay := Backoff(m.backoff)
	m.backoff++
	m.rec.Status = state.StatusRestarting
	s.save(m)
	m.timer = time.AfterFunc(delay, func() { s.spawn(func() { s.restart(m) }) })
	m.mu.Unlock()
	close(done)
}

// restart is a policy restart, when its backoff delay has passed.
func (s *Supervisor) restart(m *managed) {
	if m.settle(s.ctx) != nil {
		return
	}
	defer m.mu.Unlock()
	m.timer = nil
	if m.removed || m.runDone != nil || m.rec.Desired != state.DesiredRunning || s.ctx.Err() != nil {
		return
	}
	m.rec.RestartCount++
	if err := s.startLocked(m, EventRestarted, ""); err != nil {
		s.log.Warn("restarting VM", "vm", m.id, "err", err)
		m.logs.EndFollowers()
	}
}

// Stop stops a running VM gracefully (grace < 0: its own stop timeout) and
// keeps it stopped: an explicit stop is not undone by the restart policy.
func (s *Supervisor) Stop(ctx context.Context, ref string, grace time.Duration) error {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	m.rec.Desired = state.DesiredStopped
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
		m.rec.Status = state.StatusExited
		m.logs.EndFollowers()
	}
	done, machine := m.runDone, m.machine
	if done != nil && m.rec.Status == state.StatusPaused {
		// The program gets its stop signal once its guest runs again.
		if err := machine.Unpause(ctx); err != nil {
			s.log.Warn("unpausing a VM to stop it", "vm", m.id, "err", err)
		}
		s.event(m.rec, EventUnpaused)
	}
	if done != nil {
		m.rec.Status = state.StatusStopping
	}
	s.save(m)
	if grace < 0 {
		grace = m.opts.StopGrace
	}
	m.mu.Unlock()
	if done == nil {
		return nil
	}
	stopErr := machine.Stop(ctx, grace)
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.event(m.rec, EventStopped)
	if stopErr != nil && !errors.Is(stopErr, vmm.ErrTimeout) {
		return stopErr
	}
	return nil
}

// Restart stops the VM if it runs and starts it again.
func (s *Supervisor) Restart(ctx context.Context, ref string, grace time.Duration) error {
	if err := s.Stop(ctx, ref, grace); err != nil {
		return err
	}
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	defer m.mu.Unlock()
	if m.runDone != nil || m.removed {
		return nil
	}
	m.rec.Desired = state.DesiredRunning
	m.backoff = 0
	m.rec.RestartCount++
	return s.startLocked(m, EventRestarted, "")
}

// Kill sends sig to the VM's program through the guest agent; SIGKILL
// kills the VM's QEMU at once, without asking the guest.
func (s *Supervisor) Kill(ctx context.Context, ref string, sig syscall.Signal) error {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	done, machine, rec := m.runDone, m.machine, m.rec
	if done != nil && sig != syscall.SIGKILL && m.rec.Status == state.StatusPaused {
		// The guest's agent delivers the signal: it runs again first, as
		// docker unpauses a container it signals.
		if err := machine.Unpause(ctx); err != nil {
			m.mu.Unlock()
			return fmt.Errorf("unpausing VM %s to signal it: %w", rec.Name, err)
		}
		m.rec.Status = state.StatusRunning
		s.save(m)
		s.event(m.rec, EventUnpaused)
	}
	m.mu.Unlock()
	if done == nil {
		return fmt.Errorf("VM %s is not running: %w", rec.Name, errdefs.ErrConflict)
	}
	if sig == syscall.SIGKILL {
		// Straight to QEMU: a guest that does not answer its agent (or
		// answers slowly) cannot hold off a kill.
		err = machine.Kill()
	} else {
		err = machine.Signal(int(sig))
	}
	if err != nil {
		return fmt.Errorf("signalling VM %s: %w", rec.Name, err)
	}
	s.event(rec, EventKilled, "signal="+strconv.Itoa(int(sig)))
	return nil
}

// Pause and unpause events.
const (
	EventPaused   = "pause"
	EventUnpaused = "unpause"
)

// Pause freezes a running VM's guest (kiln pause): its vCPUs and clock
// stop, its QEMU, memory and devices stay. A paused VM shows as paused;
// stop and kill work on it (unpausing it first, but for SIGKILL), exec is
// refused and health checks wait.
func (s *Supervisor) Pause(ctx context.Context, ref string) error {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	defer m.mu.Unlock()
	switch {
	case m.runDone == nil || m.rec.Status != state.StatusRunning && m.rec.Status != state.StatusPaused:
		return fmt.Errorf("VM %s is not running (%s): %w", m.rec.Name, m.rec.Status, errdefs.ErrConflict)
	case m.rec.Status == state.StatusPaused:
		return fmt.Errorf("VM %s is already paused: %w", m.rec.Name, errdefs.ErrConflict)
	}
	if err := m.machine.Pause(ctx); err != nil {
		return fmt.Errorf("pausing VM %s: %w", m.rec.Name, err)
	}
	m.rec.Status = state.StatusPaused
	s.save(m)
	s.event(m.rec, EventPaused)
	return nil
}

// Unpause lets a paused VM's guest run again.
func (s *Supervisor) Unpause(ctx context.Context, ref string) error {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	defer m.mu.Unlock()
	if m.runDone == nil || m.rec.Status != state.StatusPaused {
		return fmt.Errorf("VM %s is not paused (%s): %w", m.rec.Name, m.rec.Status, errdefs.ErrConflict)
	}
	if err := m.machine.Unpause(ctx); err != nil {
		return fmt.Errorf("unpausing VM %s: %w", m.rec.Name, err)
	}
	m.rec.Status = state.StatusRunning
	s.save(m)
	s.event(m.rec, EventUnpaused)
	return nil
}

// EventRenamed is a rename; its attribute oldName is the name before.
const EventRenamed = "rename"

// Rename gives a VM, in whatever state, another name: in the store, in its
// vm.json, and on its bridge network's name server.
func (s *Supervisor) Rename(ctx context.Context, ref, name string) error {
	if err := vm.ValidateName(name); err != nil {
		return err
	}
	m, err := s.get(ctx, ref)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.removed {
		return fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	old := m.rec.Name
	if old == name {
		return nil
	}
	if err := s.db.RenameVM(ctx, m.id, name); err != nil {
		return err
	}
	if err := s.rt.Rename(s.rt.VMDir(m.id), name); err != nil {
		// The store and the directory must agree: put the old name back.
		if rerr := s.db.RenameVM(context.WithoutCancel(ctx), m.id, old); rerr != nil {
			s.log.Warn("renaming VM back", "vm", m.id, "err", rerr)
		}
		return err
	}
	m.rec.Name, m.spec.Name = name, name
	s.event(m.rec, EventRenamed, "oldName="+old)
	s.networkChanged(m.spec)
	return nil
}

// EventUpdated is the event of a VM whose resources kiln update changed.
const EventUpdated = "update"

// Update changes a VM's restart policy (at once) and its memory and CPUs
// (from its next start; a running VM's warning says so), recorded in its
// vm.json. Values a create would refuse are refused, changing nothing.
func (s *Supervisor) Update(ctx context.Context, ref string, u vm.Resources) (warnings []string, err error) {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if m.removed {
		return nil, fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	spec, err := s.rt.Update(s.rt.VMDir(m.id), u)
	if err != nil {
		return nil, err
	}
	resized := spec.MemoryMiB != m.spec.MemoryMiB || spec.CPUs != m.spec.CPUs
	m.spec.Restart, m.spec.MemoryMiB, m.spec.CPUs = spec.Restart, spec.MemoryMiB, spec.CPUs
	m.opts.Restart = options.RestartPolicy(spec.Restart)
	var attrs []string
	if resized {
		m.reload = true
		attrs = append(attrs, fmt.Sprintf("memoryMiB=%d", spec.MemoryMiB), fmt.Sprintf("cpus=%d", spec.CPUs))
		if m.runDone != nil {
			warnings = append(warnings, fmt.Sprintf("VM %s is running: its memory (%s) and CPUs (%d) apply from its next start", m.rec.Name, options.FormatMiB(spec.MemoryMiB), spec.CPUs))
		}
	}
	if u.Restart != nil {
		attrs = append(attrs, "restart="+m.opts.Restart.String())
	}
	s.event(m.rec, EventUpdated, attrs...)
	return warnings, nil
}

// RemoveOptions are the choices of Remove.
type RemoveOptions struct {
	// Force kills a running VM; without it a running VM is refused.
	Force bool
	// Volumes removes the VM's anonymous volumes too (docker's rm -v);
	// named volumes always stay.
	Volumes bool
}

// Remove deletes a VM: its record, its directory, its logs, and with
// o.Volumes its anonymous volumes.
func (s *Supervisor) Remove(ctx context.Context, ref string, o RemoveOptions) error {
	force := o.Force
	m, err := s.settled(ctx, ref)
	if err != nil {
		return err
	}
	if m.removed {
		m.mu.Unlock()
		return fmt.Errorf("no such VM: %s: %w", ref, errdefs.ErrNotFound)
	}
	if m.runDone != nil && !force {
		m.mu.Unlock()
		return fmt.Errorf("VM %s is running: stop it first, or remove it with -f: %w", m.rec.Name, errdefs.ErrConflict)
	}
	m.removed = true
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	done, machine, rec := m.runDone, m.machine, m.rec
	m.mu.Unlock()
	if done != nil {
		if err := machine.Kill(); err != nil {
			s.log.Warn("killing VM to remove it", "vm", m.id, "err", err)
		}
		<-done
	}
	m.logs.Close()
	if err := s.db.DeleteVM(ctx, m.id); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.vms, m.id)
	s.mu.Unlock()
	netErr := s.releaseNetwork(m.id, m.spec)
	if err := os.RemoveAll(s.rt.VMDir(m.id)); err != nil {
		return fmt.Errorf("removing VM %s: %w", rec.Name, err)
	}
	if err := s.rt.RemoveCgroup(m.id); err != nil {
		s.log.Warn("removing the cgroup of a removed VM", "vm", m.id, "err", err)
	}
	s.event(rec, EventRemoved)
	if netErr != nil {
		return fmt.Errorf("VM %s removed, but not all of its network: %w", rec.Name, netErr)
	}
	if o.Volumes {
		return s.removeAnonymousVolumes(ctx, rec.Name, m.spec.Mounts)
	}
	return nil
}

// Wait waits until the VM's current run ends (at once when it is not
// running; with next, the end of its next run) and returns its exit code
// and error message. registered, if not nil, is called once the wait is in
// place.
func (s *Supervisor) Wait(ctx context.Context, ref string, next bool, registered func()) (int, string, error) {
	m, err := s.settled(ctx, ref)
	if err != nil {
		return 0, "", err
	}
	done, nextRun := m.runDone, m.nextRun
	m.mu.Unlock()
	if registered != nil {
		registered()
	}
	if done == nil && next {
		select {
		case <-nextRun:
		case <-ctx.Done():
			return 0, "", ctx.Err()
		}
		m.mu.Lock()
		done = m.runDone
		m.mu.Unlock()
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return 0, "", ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rec.ExitCode, m.rec.Error, nil
}

// Get returns one VM.
func (s *Supervisor) Get(ctx context.Context, ref string) (*View, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	v := m.view()
	machine, running := m.machine, m.runDone != nil
	m.mu.Unlock()
	// Read from /proc and the cgroup files for inspect alone (not for every
	// VM of a ps), outside the VM's lock.
	if machine != nil && running {
		v.Confinement = machine.Confinement()
	}
	return v, nil
}

// List returns every VM, oldest first.
func (s *Supervisor) List(ctx context.Context) ([]*View, error) {
	recs, err := s.db.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var out []*View
	for _, r := range recs {
		s.mu.Lock()
		m, ok := s.vms[r.ID]
		s.mu.Unlock()
		if !ok {
			continue
		}
		m.mu.Lock()
		out = append(out, m.view())
		m.mu.Unlock()
	}
	return out, nil
}

// Logs returns a VM's stored output matching q and, with q.Follow, the
// output that follows until the VM ends for good; cancel must be called.
func (s *Supervisor) Logs(ctx context.Context, ref string, q LogQuery) ([]LogEntry, <-chan LogEntry, func(), error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, nil, nil, err
	}
	m.mu.Lock()
	// A created VM's output is still to come; an exited one's is complete
	// unless a restart is pending.
	live := m.runDone != nil || m.starting != nil || m.timer != nil || m.rec.Status == state.StatusCreated
	logs := m.logs
	m.mu.Unlock()
	logs.Sync()
	return logs.Read(q, live)
}

// Console returns the paths of a VM's serial console log, oldest first:
// console.log.1 (what rotation kept) and console.log.
func (s *Supervisor) Console(ctx context.Context, ref string) ([]string, error) {
	m, err := s.get(ctx, ref)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(s.rt.VMDir(m.id), vmm.ConsoleLog)
	return []string{p + ".1", p}, nil
}

// Reconcile brings the store in line with reality when the supervisor
// starts: VMs still running are reattached, VMs that ended meanwhile are
// recorded with the exit code their guest left, VMs whose directory is gone
// are marked dead, VMs the restart policy wants running are started, and
// directories or QEMU processes that no record knows are removed.
func (s *Supervisor) Reconcile(ctx context.Context) error {
	recs, err := s.db.ListVMs(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	runningFirst(recs) // they hold their volumes before any VM is started
	for _, rec := range recs {
		known[rec.ID] = true
		s.adopt(rec)
	}
	ids, err := s.rt.VMIDs()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if known[id] {
			continue
		}
		// A VM whose creation never reached the store (the daemon died in
		// between): end its QEMU if any and remove its directory.
		dir := s.rt.VMDir(id)
		if pid, err := s.rt.Reap(dir, id); pid != 0 || err != nil {
			s.log.Warn("killed the monitor of an untracked VM", "vm", id, "pid", pid, "err", err)
		}
		os.RemoveAll(dir)
		if err := s.rt.RemoveCgroup(id); err != nil {
			s.log.Warn("removing the cgroup of an untracked VM", "vm", id, "err", err)
		}
	}
	if n := s.rt.SweepCgroups(); n > 0 {
		s.log.Info("removed cgroups that ended VMs left", "count", n)
	}
	if err := s.reconcileNetworks(ctx); err != nil {
		s.log.Warn("reconciling networks", "err", err)
	}
	return nil
}

// adopt takes a recorded VM under supervision after a daemon start.
func (s *Supervisor) adopt(rec *state.VM) {
	m := &managed{id: rec.ID, rec: rec, nextRun: make(chan struct{})}
	var r record
	if err := json.Unmarshal(rec.Spec, &r); err != nil {
		s.log.Warn("reading VM record", "vm", rec.ID, "err", err)
	}
	// setSpec takes spec as the VM's, with the options an older kiln's
	// record holds put into its request.
	setSpec := func(spec vm.Spec) {
		if r.Options != nil {
			r.Options.setIn(&spec.VMConfig)
		}
		m.spec, m.opts = spec, OptionsOf(&spec.VMConfig)
		m.opts.Resolve()
	}
	if r.Spec != nil {
		setSpec(*r.Spec)
	} else {
		setSpec(vm.Spec{})
	}
	s.mu.Lock()
	s.vms[rec.ID] = m
	s.mu.Unlock()
	m.mu.Lock()
	machine, err := s.rt.Load(s.rt.VMDir(rec.ID))
	if err != nil {
		m.rec.Status, m.rec.Desired, m.rec.PID = state.StatusDead, state.DesiredStopped, 0
		m.rec.Error = fmt.Sprintf("VM directory is missing or broken (%v): remove the VM", err)
		s.save(m)
		m.logs = closedCollector(s.rt.VMDir(rec.ID))
		m.mu.Unlock()
		return
	}
	m.machine = machine
	setSpec(machine.Spec)
	if logs, err := startCollector(machine.Dir, m.opts.Log, s.log); err == nil {
		m.logs = logs
	} else {
		s.log.Warn("collecting logs", "vm", rec.ID, "err", err)
		m.logs = closedCollector(machine.Dir)
	}
	wasRunning := rec.Status == state.StatusRunning || rec.Status == state.StatusPaused || rec.Status == state.StatusStarting || rec.Status == state.StatusStopping
	if err := machine.Attach(s.ctx); err == nil {
		if err := s.acquireVolumes(m.id, &m.spec); err != nil {
			s.log.Warn("a running VM shares a volume", "vm", rec.ID, "err", err)
		}
		m.rec.Status, m.rec.PID = state.StatusRunning, machine.Info().PID
		if rec.Status == state.StatusStopping {
			m.rec.Desired = state.DesiredStopped
		}
		// A paused VM stays paused: its guest says so, whatever the
		// record (a pause the last daemon died in the middle of).
		if paused, err := machine.Paused(s.ctx); err == nil && paused && rec.Status != state.StatusStopping {
			m.rec.Status = state.StatusPaused
		}
		// A checkpoint cut short by the last daemon's death left the guest
		// paused and the VM meant to stop: it runs on, as a failed
		// checkpoint leaves it.
		if cut, err := machine.RecoverCheckpoint(s.ctx); cut {
			s.log.Warn("a checkpoint was cut short by the daemon's end: the VM runs on", "vm", rec.ID, "err", err)
			m.rec.Desired = state.DesiredRunning
		}
		s.save(m)
		done := make(chan struct{})
		m.runDone = done
		s.spawn(func() { s.monitor(m, machine, done) })
		m.mu.Unlock()
		return
	}
	// Not running: a cgroup its last run left (it ended while no daemon
	// watched) goes now, not at some later rm.
	if err := s.rt.RemoveCgroup(rec.ID); err != nil {
		s.log.Warn("removing the cgroup of a VM that ended unwatched", "vm", rec.ID, "err", err)
	}
	if wasRunning {
		// It ended while nobody watched: record how, from what its guest
		// left on the status port.
		code, msg := 137, "the VM ended while the daemon was not running"
		if exit, err := machine.LastExit(); err == nil {
			code = exit.Code
			if exit.Err != nil {
				msg = exit.Err.Error()
			} else {
				msg = ""
			}
		}
		m.logs.VMEnded()
		m.rec.Status, m.rec.PID, m.rec.ExitCode, m.rec.Error, m.rec.FinishedAt = state.StatusExited, 0, code, msg, time.Now().UTC()
		s.save(m)
		s.event(m.rec, EventDied, "exitCode="+strconv.Itoa(code))
	} else if rec.Status == state.StatusRestarting {
		m.rec.Status = state.StatusExited
		s.save(m)
	}
	// As dockerd does at start: always VMs come back, unless-stopped ones
	// unless stopped, on-failure ones if their last run failed.
	p := m.opts.Restart
	start := false
	switch p.Name {
	case options.RestartAlways:
		start = true
	case options.RestartUnlessStopped, options.RestartOnFailure:
		start = m.rec.Desired == state.DesiredRunning && p.ShouldRestart(m.rec.ExitCode, m.rec.RestartCount)
	}
	if start {
		m.rec.Desired = state.DesiredRunning
		if wasRunning {
			m.rec.RestartCount++
		}
		if err := s.startLocked(m, EventRestarted, ""); err != nil {
			s.log.Warn("starting VM at daemon start", "vm", rec.ID, "err", err)
		}
	}
	m.mu.Unlock()
}

// Close stops supervising: its goroutines are cancelled and waited for
// (for closeTimeout at most), pending restarts are cancelled and log
// collection ends; nothing is written to the store once it returns. The
// VMs keep running: the next supervisor's Reconcile attaches to them.
func (s *Supervisor) Close() {
	s.gmu.Lock()
	s.closing = true
	s.gmu.Unlock()
	s.cancel()
	s.mu.Lock()
	vms := make([]*managed, 0, len(s.vms))
	for _, m := range s.vms {
		vms = append(vms, m)
	}
	for ch := range s.subs {
		close(ch)
		delete(s.subs, ch)
	}
	s.mu.Unlock()
	for _, m := range vms {
		m.mu.Lock()
		if m.timer != nil {
			m.timer.Stop()
			m.timer = nil
		}
		m.mu.Unlock()
	}
	waited := make(chan struct{})
	go func() {
		s.tasks.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-time.After(closeTimeout):
		s.log.Warn("closing the supervisor: some of its goroutines did not end", "waited", closeTimeout)
	}
	s.closeNetworks()
	for _, m := range vms {
		m.mu.Lock()
		logs := m.logs
		m.mu.Unlock()
		if logs != nil {
			logs.Close()
		}
	}
}
