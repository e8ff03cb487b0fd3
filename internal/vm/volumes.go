package vm

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/volume"
)

// Volumes returns the store of named volumes under the runtime's root.
func (r *Runtime) Volumes() (*volume.Store, error) { return volume.Open(r.root) }

// mountPlan is what Create makes of a spec's mounts: the drives and shares
// the VM gets, what kiln-init mounts, and the volumes this Create made
// (removed again when it fails).
type mountPlan struct {
	drives  []vmm.Drive
	shares  []vmm.Share
	mounts  []agent.Mount
	created []string
	store   *volume.Store
	// remove removes a volume the plan created: store.Remove, unless the
	// runtime has a supervisor, which keeps one another VM now names.
	remove func(*volume.Store, string) error
}

// Names of the devices of mount i: drive and share IDs on the monitor's
// command line, serials and tags the guest finds them by.
func volDriveID(i int) string  { return "vol" + strconv.Itoa(i) }
func bakeDriveID(i int) string { return "bake" + strconv.Itoa(i) }
func shareID(i int) string     { return "fs" + strconv.Itoa(i) }
func kilnName(id string) string {
	return "kiln-" + id
}

// planMounts prepares s's mounts for the VM whose directory is dir: it
// creates the named volumes that do not exist yet (as docker's -v does),
// packs baked directories into read-only squashfs disks in dir, and says
// how the guest finds each. Mounts are made parents first.
func (r *Runtime) planMounts(ctx context.Context, dir string, s *Spec) (p *mountPlan, err error) {
	p = &mountPlan{remove: r.removeVolume}
	if len(s.Mounts) == 0 {
		return p, nil
	}
	if err := checkMountSources(s.Mounts); err != nil {
		return nil, err
	}
	if p.store, err = r.Volumes(); err != nil {
		return nil, err
	}
	plan := p // p is nil by the time a failure returns
	defer func() {
		if err != nil {
			plan.undo()
		}
	}()
	ms := append([]options.Mount{}, s.Mounts...)
	// A path sorts before every path it is a prefix of: parents first.
	sort.Slice(ms, func(i, j int) bool { return ms[i].Target < ms[j].Target })
	for i, m := range ms {
		switch m.Type {
		case options.MountVolume:
			v, err := p.volume(ctx, m)
			if err != nil {
				return nil, err
			}
			if m.Anonymous && m.Source == "" {
				// The VM's record keeps the name, so that every start
				// attaches the same volume.
				for j := range s.Mounts {
					if s.Mounts[j].Target == m.Target {
						s.Mounts[j].Source = v.Name
					}
				}
			}
			id := volDriveID(i)
			p.drives = append(p.drives, vmm.Drive{ID: id, Path: v.Disk(), Serial: kilnName(id)})
			p.mounts = append(p.mounts, agent.Mount{Kind: agent.MountDisk, Target: m.Target, Serial: kilnName(id),
				FSType: volume.FSType, SubDir: volume.DataDir, ReadOnly: m.ReadOnly})
		case options.MountBind:
			id := shareID(i)
			p.shares = append(p.shares, vmm.Share{ID: id, Path: m.Source, Tag: kilnName(id), ReadOnly: m.ReadOnly})
			p.mounts = append(p.mounts, agent.Mount{Kind: agent.Mount9P, Target: m.Target, Tag: kilnName(id), ReadOnly: m.ReadOnly})
		case options.MountBake:
			id := bakeDriveID(i)
			disk := filepath.Join(dir, id+".sqfs")
			if err := bake(ctx, m.Source, disk); err != nil {
				return nil, err
			}
			p.drives = append(p.drives, vmm.Drive{ID: id, Path: disk, ReadOnly: true, Serial: kilnName(id)})
			p.mounts = append(p.mounts, agent.Mount{Kind: agent.MountDisk, Target: m.Target, Serial: kilnName(id),
				FSType: "squashfs", ReadOnly: true})
		}
	}
	return p, nil
}

// volume returns m's volume, creating it (default size) when it does not
// exist, or when m is an anonymous volume not made yet.
func (p *mountPlan) volume(ctx context.Context, m options.Mount) (*volume.Volume, error) {
	if m.Anonymous && m.Source == "" {
		v, err := p.store.CreateAnonymous(ctx)
		if err != nil {
			return nil, fmt.Errorf("creating an anonymous volume for %s: %w", m.Target, err)
		}
		p.created = append(p.created, v.Name)
		return v, nil
	}
	name := m.Source
	v, err := p.store.Get(name)
	if !errors.Is(err, errdefs.ErrNotFound) {
		return v, err
	}
	v, err = p.store.Create(ctx, name, 0)
	if errors.Is(err, errdefs.ErrConflict) {
		return p.store.Get(name) // made meanwhile by another VM's creation
	}
	if err != nil {
		return nil, fmt.Errorf("creating volume %s: %w", name, err)
	}
	p.created = append(p.created, name)
	return v, nil
}

// undo removes the volumes the plan created.
func (p *mountPlan) undo() {
	for _, name := range p.created {
		if p.remove != nil {
			_ = p.remove(p.store, name)
		} else {
			_ = p.store.Remove(name)
		}
	}
	p.created = nil
}

// bake packs the host directory src into a squashfs image at img,
// keeping owners, modes and times: the guest mounts it read-only.
func bake(ctx context.Context, src, img string) error {
	bin, err := disk.FindTool("gensquashfs", "squashfs-tools-ng")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "-q", "-k", "-D", src, img)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("baking %s into the VM: %w: %s", src, err, out)
	}
	return nil
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
	vm      string // its name, or "" when it is to be given one
	volumes []string
}

// reserveVolumes records that a VM called name (maybe "") is being
// created with the named volumes: until release, removals see it as
// their user. Reserve before planning the mounts, release once the VM is
// in s.vms (or its creation undone).
func (s *Supervisor) reserveVolumes(name string, volumes []string) (release func()) {
	c := &creation{vm: name, volumes: volumes}
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
func (s *Supervisor) acquireVolumes(id string, spec *Spec) error {
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
		return r.Status == state.StatusRunning || r.Status == state.StatusStarting || r.Status == state.StatusStopping
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
		name := c.vm
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
func (s *Supervisor) CreateVolume(ctx context.Context, name string, sizeMiB int) (*VolumeUsage, error) {
	st, err := s.rt.Volumes()
	if err != nil {
		return nil, err
	}
	v, err := st.Create(ctx, name, sizeMiB)
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
