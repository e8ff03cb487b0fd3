package vm

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/options"
	"kiln.dev/kiln/internal/vmm"
	"kiln.dev/kiln/internal/volume"
)

// Volumes returns the store of named volumes under the factory's root.
func (r *Factory) Volumes() (*volume.Store, error) { return volume.Open(r.root) }

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
	// factory has a supervisor, which keeps one another VM now names.
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
func (r *Factory) planMounts(ctx context.Context, dir string, s *Spec) (p *mountPlan, err error) {
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
	v, err = p.store.Create(ctx, name, 0, nil)
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
//
// The image is lz4-compressed. It is made at every create and read by one
// VM, under TCG, so speed counts on both sides and size little: packing a
// 27 MB file took 0.02 s with lz4 against 1.0 s with zstd and 2.3 s with
// gensquashfs's default, xz (18, 14 and 13 MB), and a guest read it cold
// at 67-99 MB/s against 38 and 13.5 MB/s.
func bake(ctx context.Context, src, img string) error {
	bin, err := disk.FindTool("gensquashfs", "squashfs-tools-ng")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "-q", "-c", "lz4", "-k", "-D", src, img)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("baking %s into the VM: %w: %s", src, err, out)
	}
	return nil
}
