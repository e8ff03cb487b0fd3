package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
	"kiln.dev/kiln/internal/volume"
)

// volumeLocks keeps volumes to one running VM at a time, and keeps a
// volume from being removed while a VM is being created with it.
type volumeLocks struct {
	// create is held by volume removals, and by creations of VMs with
	// volumes while they reserve them (not while they are made: that is
	// slow work), so a removal never misses a VM about to refer to one.
	create sync.Mutex
	// mu guards attached and creating.
	mu       sync.Mutex
	attached map[string]string // volume name → ID of the running VM
	// creating are the creations of VMs under way that name volumes.
	creating map[*creation]struct{}
}

// creation is a VM being created with volumes.
type creation struct {
	machine string // its name, or "" when it is to be given one
	volumes []string
}

// reserveVolumes records that a VM called name (maybe "") is being
// created with the named volumes: until release, removals see it as
// their user. Reserve before planning the mounts, release once the VM is
// in s.vms (or its creation undone).
func (s *Supervisor) reserveVolumes(name string, volumes []string) (release func()) {
	c := &creation{machine: name, volumes: volumes}
	s.vols.create.Lock()
	s.vols.mu.Lock()
	if s.vols.creating == nil {
		s.vols.creating = map[*creation]struct{}{}
	}
	s.vols.creating[c] = struct{}{}
	s.vols.mu.Unlock()
	s.vols.create.Unlock()
	return func() {
		s.vols.mu.Lock()
		delete(s.vols.creating, c)
		s.vols.mu.Unlock()
	}
}

// removeCreatedVolume removes a volume that a failed creation made,
// unless another VM names it now (it found it made, meanwhile).
func (s *Supervisor) removeCreatedVolume(st *volume.Store, name string) error {
	s.vols.create.Lock()
	defer s.vols.create.Unlock()
	users := s.volumeUsers()[name]
	if len(users) > 1 { // the failed creation is one
		return nil
	}
	return st.Remove(name)
}

// acquire records that the VM id, about to start, holds the volumes of
// spec; it fails with a conflict naming the volume and the VM holding it.
func (s *Supervisor) acquireVolumes(id string, spec *vm.Spec) error {
	l := &s.vols
	l.mu.Lock()
	defer l.mu.Unlock()
	names := volumeNames(spec.Mounts)
	for _, n := range names {
		if other, ok := l.attached[n]; ok && other != id {
			return fmt.Errorf("volume %s is in use by running VM %s: a volume is attached to one running VM at a time: %w", n, s.vmName(other), errdefs.ErrConflict)
		}
	}
	if l.attached == nil {
		l.attached = map[string]string{}
	}
	for _, n := range names {
		l.attached[n] = id
	}
	return nil
}

// runningFirst orders VM records so that those recorded as running come
// first: at a daemon start they are reattached, and take their volumes back,
// before a restart policy starts another VM that might name one.
func runningFirst(recs []*state.VM) {
	running := func(r *state.VM) bool {
		return r.Status == state.StatusRunning || r.Status == state.StatusPaused || r.Status == state.StatusStarting || r.Status == state.StatusStopping
	}
	sort.SliceStable(recs, func(i, j int) bool { return running(recs[i]) && !running(recs[j]) })
}

// releaseVolumes records that the VM id no longer runs.
func (s *Supervisor) releaseVolumes(id string) {
	l := &s.vols
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, holder := range l.attached {
		if holder == id {
			delete(l.attached, n)
		}
	}
}

// vmName returns the name of the VM with the given ID, or its short ID.
func (s *Supervisor) vmName(id string) string {
	s.mu.Lock()
	m, ok := s.vms[id]
	s.mu.Unlock()
	if ok && m.spec.Name != "" {
		return m.spec.Name
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// VolumeUsage is a volume with the VMs that refer to it.
type VolumeUsage struct {
	*volume.Volume
	// UsedBy are the names of the VMs whose spec names the volume,
	// running or not, sorted.
	UsedBy []string
	// AttachedTo is the name of the running VM that has it, or "".
	AttachedTo string
}

// volumeUsers returns the names of the VMs that refer to each volume.
func (s *Supervisor) volumeUsers() map[string][]string {
	users := map[string][]string{}
	s.vols.mu.Lock()
	for c := range s.vols.creating {
		name := c.machine
		if name == "" {
			name = "(being created)"
		}
		for _, n := range c.volumes {
			users[n] = append(users[n], name)
		}
	}
	s.vols.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.vms {
		for _, n := range volumeNames(m.spec.Mounts) {
			users[n] = append(users[n], m.spec.Name)
		}
	}
	for _, u := range users {
		sort.Strings(u)
	}
	return users
}

func (s *Supervisor) usage(v *volume.Volume, users map[string][]string) *VolumeUsage {
	u := &VolumeUsage{Volume: v, UsedBy: users[v.Name]}
	s.vols.mu.Lock()
	id, ok := s.vols.attached[v.Name]
	s.vols.mu.Unlock()
	if ok {
		u.AttachedTo = s.vmName(id)
	}
	return u
}

// CreateVolume makes a named volume. One that exists is given back, as
// docker does, unless sizeMiB asks for another size (a conflict).
func (s *Supervisor) CreateVolume(ctx context.Context, name string, sizeMiB int, labels map[string]string) (*VolumeUsage, error) {
	st, err := s.rt.Volumes()
	if err != nil {
		return nil, err
	}
	v, err := st.Create(ctx, name, sizeMiB, labels)
	if errors.Is(err, errdefs.ErrConflict) {
		// As docker: creating a volume that exists gives it back, unless
		// it was asked for with another size.
		old, gerr := st.Get(name)
		if gerr != nil {
			return nil, err
		}
		if sizeMiB != 0 && sizeMiB != old.SizeMiB {
			return nil, fmt.Errorf("volume %s already exists with size %dm, not %dm: %w", name, old.SizeMiB, sizeMiB, errdefs.ErrConflict)
		}
		return s.usage(old, s.volumeUsers()), nil
	}
	if err != nil {
		return nil, err
	}
	return s.usage(v, nil), nil
}

// Volume returns a named volume and its users.
func (s *Supervisor) Volume(name string) (*VolumeUsage, error) {
	st, err := s.rt.Volumes()
	if err != nil {
		return nil, err
	}
	v, err := st.Get(name)
	if err != nil {
		return nil, err
	}
	return s.usage(v, s.volumeUsers()), nil
}

// ListVolumes returns every volume and its users, by name.
func (s *Supervisor) ListVolumes() ([]*VolumeUsage, error) {
	st, err := s.rt.Volumes()
	if err != nil {
		return nil, err
	}
	vs, err := st.List()
	if err != nil {
		return nil, err
	}
	users := s.volumeUsers()
	out := make([]*VolumeUsage, 0, len(vs))
	for _, v := range vs {
		out = append(out, s.usage(v, users))
	}
	return out, nil
}

// RemoveVolume deletes a volume and its data. As docker, it is refused
// while any VM, running or not, refers to it.
func (s *Supervisor) RemoveVolume(ctx context.Context, name string) error {
	st, err := s.rt.Volumes()
	if err != nil {
		return err
	}
	s.vols.create.Lock()
	defer s.vols.create.Unlock()
	if _, err := st.Get(name); err != nil {
		return err
	}
	if users := s.volumeUsers()[name]; len(users) > 0 {
		return fmt.Errorf("volume %s is in use by VM %s: remove the VM first: %w", name, users[0], errdefs.ErrConflict)
	}
	return st.Remove(name)
}

// removeAnonymousVolumes removes the anonymous volumes among the mounts
// of the removed VM vmName. One that another VM also names is kept, as
// docker keeps it, and said so in the error.
func (s *Supervisor) removeAnonymousVolumes(ctx context.Context, vmName string, ms []options.Mount) error {
	var errs []error
	for _, m := range ms {
		if m.Type != options.MountVolume || !m.Anonymous || m.Source == "" {
			continue
		}
		if err := s.RemoveVolume(ctx, m.Source); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("VM %s removed, but not all of its anonymous volumes: %w", vmName, errors.Join(errs...))
	}
	return nil
}

// PruneVolumes removes every volume no VM refers to and returns their
// names and the bytes they took on the host.
func (s *Supervisor) PruneVolumes(ctx context.Context) ([]string, int64, error) {
	st, err := s.rt.Volumes()
	if err != nil {
		return nil, 0, err
	}
	s.vols.create.Lock()
	defer s.vols.create.Unlock()
	vs, err := st.List()
	if err != nil {
		return nil, 0, err
	}
	users := s.volumeUsers()
	var removed []string
	var freed int64
	for _, v := range vs {
		if len(users[v.Name]) > 0 {
			continue
		}
		used := v.UsedBytes()
		if err := st.Remove(v.Name); err != nil {
			return removed, freed, err
		}
		removed = append(removed, v.Name)
		freed += used
	}
	return removed, freed, nil
}

// volumeNames returns the names of the named volumes among ms.
func volumeNames(ms []options.Mount) []string {
	var out []string
	for _, m := range ms {
		if m.Type == options.MountVolume {
			out = append(out, m.Source)
		}
	}
	return out
}
