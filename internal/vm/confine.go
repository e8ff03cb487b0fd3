package vm

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/internal/cgroup"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

// Confinement is how a root daemon jails its VMs' QEMU processes (package
// jail): the uid range they run as, the program that sets the jail up,
// and the share of host memory all jailed VMs together may hold.
type Confinement struct {
	// UIDs is the range jailed QEMUs take their uid and gid from.
	UIDs jail.Range
	// LockDir holds the host-wide lock of each uid (jail.LockDir).
	LockDir string
	// Helper is kiln's own binary, run as `kiln jail-exec`; "" finds it.
	Helper string
	// MemoryShare is the share of the host's memory the cgroups of all
	// running VMs together may hold; a VM that would pass it is refused
	// before it boots. 0 means DefaultMemoryShare.
	MemoryShare float64
	// ConsoleMaxSize is how much of each VM's serial console is kept on
	// disk; 0 means DefaultConsoleMaxSize.
	ConsoleMaxSize int64
}

// DefaultMemoryShare leaves a tenth of the host's memory, at least, to the
// host itself and kiln's daemon.
const DefaultMemoryShare = 0.9

// CgroupParent is the cgroup all jailed VMs' groups live under, in every
// hierarchy; each VM's group is named by its ID.
const CgroupParent = "kiln"

// Memory kiln adds to a guest's memory for its QEMU's own in the cgroup
// limit: measured here under TCG, an idle 128 MiB guest's QEMU has a
// resident set of about 170 MiB (the translated-code cache, QEMU's heap
// and libraries, page tables), and the translation cache grows with the
// code the guest runs. The cgroup stops a QEMU that grows past this; a
// guest that touches all of its own memory stays within it.
const (
	qemuOverheadMiB     = 192
	qemuOverheadPercent = 25
	// qemuOverheadCPUs is the CPU time QEMU's own threads get beside the
	// guest's vCPUs: its main loop runs slirp, 9p and block I/O while a
	// vCPU thread runs the guest. A quota of the vCPUs alone halved 9p
	// reads and cut user-mode network throughput by an eighth (bench/volume,
	// bench/net, jailed against --unconfined).
	qemuOverheadCPUs = 1
	// qemuPids bounds QEMU's threads: one per vCPU, its main loop, RCU,
	// and a pool of up to 64 block I/O workers.
	qemuPids = 256
)

// cgroupLimits are the limits of the cgroup of a VM with spec s.
func cgroupLimits(s *Spec) cgroup.Limits {
	mib := int64(s.MemoryMiB) + qemuOverheadMiB + int64(s.MemoryMiB)*qemuOverheadPercent/100
	return cgroup.Limits{MemoryBytes: mib << 20, CPUs: float64(s.CPUs + qemuOverheadCPUs), Pids: qemuPids}
}

// confiner is a factory's view of the host's means of confinement, probed
// once: whether it is root, its cgroup hierarchy, kiln's binary.
type confiner struct {
	conf Confinement
	once sync.Once
	root bool
	cg   *cgroup.Hierarchy
	// err is why a root daemon cannot jail VMs here, with the fix.
	err error
	// guardErr is why it cannot keep user-mode VMs off the host's own
	// services (it lacks CAP_NET_ADMIN, say): only those VMs are refused.
	guardErr error
}

func (c *confiner) probe() {
	c.once.Do(func() {
		c.root = os.Geteuid() == 0
		if !c.root {
			return
		}
		if c.conf.Helper == "" {
			exe, err := os.Executable()
			if err != nil {
				c.err = fmt.Errorf("finding kiln's own binary to jail VMs with: %w", err)
				return
			}
			if filepath.Base(exe) != "kiln" {
				if p := filepath.Join(filepath.Dir(exe), "kiln"); fileExists(p) {
					exe = p
				}
			}
			c.conf.Helper = exe
		}
		if err := jail.CheckHostRange(c.conf.UIDs); err != nil {
			c.err = err
			return
		}
		cg, err := cgroup.Detect()
		if err != nil {
			c.err = fmt.Errorf("jailing VMs needs a cgroup hierarchy with memory, cpu and pids: %w", err)
			return
		}
		c.cg = cg
		if err := network.ApplyGuard(c.guard()); err != nil {
			c.guardErr = fmt.Errorf("closing the host's own services to user-mode VMs (table inet %s): %w", network.GuardTableName, err)
		}
	})
}

// guard is the host firewall's part of confinement: jailed QEMUs (their
// uids) may not open connections to the host's loopback or to link-local
// addresses, but for the VMs that asked to reach the host (the upper half
// of the range) and DNS to a loopback name server slirp forwards to. It
// depends on the range alone, so every daemon of a host applies the same.
func (c *confiner) guard() *network.Guard {
	closed, open := c.conf.UIDs.Split()
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	return &network.Guard{
		UIDMin: uint32(closed.Min), UIDMax: uint32(open.Max),
		HostAccessMin: uint32(open.Min), HostAccessMax: uint32(open.Max),
		Resolvers: network.LoopbackResolvers(resolv),
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// template returns the jail of a new VM in dir, and whether its monitor
// runs with QEMU's sandbox; it fails, naming what the host lacks and the
// fix, when the VM cannot be confined (unless unconfined was asked for).
//
// A root daemon jails every VM. A daemon run by another user cannot change
// uid, make namespaces or cgroups: its VMs' QEMUs run as that user with the
// seccomp sandbox only.
func (c *confiner) template(dir string, unconfined, userNet bool) (*vmm.Jail, bool, error) {
	if unconfined {
		return nil, false, nil
	}
	c.probe()
	if !c.root {
		return nil, true, nil
	}
	err := c.err
	if err == nil && userNet {
		err = c.guardErr
	}
	if err != nil {
		return nil, false, errdefs.Mark(fmt.Errorf("%w (or run the VM with --unconfined, which leaves QEMU unjailed)", err), errdefs.ErrUnavailable)
	}
	return &vmm.Jail{
		Helper: c.conf.Helper, Root: filepath.Join(dir, jailRootDir),
		Env: []string{RootEnv + "=" + filepath.Dir(filepath.Dir(dir))},
	}, true, nil
}

// RootEnv names, in a jailed QEMU's environment, the kiln root it belongs
// to (its command line names no host path).
const RootEnv = "KILN_ROOT"

// jailRootDir is the (empty) directory in a VM's directory its jail's root
// is mounted on, in the jail's own mount namespace.
const jailRootDir = "jail"

// admit refuses a VM whose cgroup limit would take the limits of all
// running jailed VMs on the host past the memory share. The VM's own group,
// left by an earlier run, does not count.
func (c *confiner) admit(id string, memMiB int, l cgroup.Limits) error {
	used, err := c.cg.MemoryUsedBy(CgroupParent, id)
	if err != nil {
		return fmt.Errorf("summing the memory limits of running VMs: %w", err)
	}
	share := c.conf.MemoryShare
	if share == 0 {
		share = DefaultMemoryShare
	}
	total := int64(ThisHost().MemoryMiB) << 20
	if err := cgroup.Admit(l.MemoryBytes, used, total, share); err != nil {
		return errdefs.Mark(fmt.Errorf("admitting VM %s (its memory, and QEMU's own %d MiB): %w", id, (l.MemoryBytes>>20)-int64(memMiB), err), errdefs.ErrUnavailable)
	}
	return nil
}

// cell is what confining one run of a VM made: its cgroup and the lock of
// its uid. release undoes it; idempotent.
type cell struct {
	group *cgroup.Group
	lock  *os.File
}

// enter prepares the jail of one run of the VM with config cfg and spec s:
// admission, the cgroup, a uid. It returns cfg with the jail filled in.
func (c *confiner) enter(cfg vmm.Config, s *Spec) (vmm.Config, *cell, error) {
	c.probe()
	if c.err != nil {
		return cfg, nil, errdefs.Mark(c.err, errdefs.ErrUnavailable)
	}
	limits := cgroupLimits(s)
	if err := c.admit(cfg.ID, s.MemoryMiB, limits); err != nil {
		return cfg, nil, err
	}
	cl := &cell{}
	g, err := c.cg.Create(CgroupParent, cfg.ID, limits)
	if err != nil {
		return cfg, nil, fmt.Errorf("making the cgroup of VM %s: %w", cfg.ID, err)
	}
	cl.group = g
	h := fnv.New32a()
	h.Write([]byte(cfg.ID))
	uids, hostAccess := c.conf.UIDs.Split()
	if s.HostAccess() {
		uids = hostAccess
	}
	uid, lock, err := jail.ClaimUID(c.conf.LockDir, uids, int(h.Sum32()&0x7fffffff))
	if err != nil {
		cl.release()
		return cfg, nil, errdefs.Mark(err, errdefs.ErrUnavailable)
	}
	cl.lock = lock
	if err := os.MkdirAll(cfg.Jail.Root, 0o700); err != nil {
		cl.release()
		return cfg, nil, fmt.Errorf("making the jail root of VM %s: %w", cfg.ID, err)
	}
	j := *cfg.Jail
	j.UID, j.GID, j.Cgroups, j.Hold = uid, uid, g.Paths(), []*os.File{lock}
	cfg.Jail = &j
	return cfg, cl, nil
}

// started drops kiln's copy of the uid lock: the QEMU holds it now.
func (cl *cell) started() {
	if cl != nil && cl.lock != nil {
		cl.lock.Close()
		cl.lock = nil
	}
}

// release removes the run's cgroup (its QEMU has exited) and lets go of
// the uid lock if kiln still holds it.
func (cl *cell) release() {
	if cl == nil {
		return
	}
	cl.started()
	if cl.group != nil {
		_ = cl.group.Remove()
	}
}

// removeCgroup removes the cgroup a VM's runs used, if any is left (a VM
// that ended while no daemon watched it).
func (c *confiner) removeCgroup(id string) error {
	c.probe()
	if c.cg == nil {
		return nil
	}
	g, err := c.cg.Open(CgroupParent, id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return g.Remove()
}

// group returns the cgroup of a running VM, or nil.
func (c *confiner) group(id string) *cgroup.Group {
	c.probe()
	if c.cg == nil {
		return nil
	}
	g, err := c.cg.Open(CgroupParent, id)
	if err != nil {
		return nil
	}
	return g
}

// DefaultConfinement is the confinement of a factory not told otherwise:
// the default uid range, or $KILN_JAIL_UIDS.
func DefaultConfinement() (Confinement, error) {
	c := Confinement{UIDs: jail.Range{Min: jail.DefaultUIDMin, Max: jail.DefaultUIDMax}, LockDir: jail.LockDir, MemoryShare: DefaultMemoryShare}
	if v := strings.TrimSpace(os.Getenv(jail.UIDsEnv)); v != "" {
		r, err := jail.ParseRange(v)
		if err != nil {
			return c, errdefs.Invalid("$" + jail.UIDsEnv + ": " + err.Error())
		}
		c.UIDs = r
	}
	return c, nil
}

// ConfinementView is how a running VM's QEMU is confined, as the kernel
// reports it.
type ConfinementView struct {
	// Jailed: the VM runs in its jail; Sandbox: with QEMU's seccomp filter.
	Jailed  bool
	Sandbox bool
	Status  jail.Status
	// Cgroup is the VM's cgroup and its limits; nil when it has none.
	Cgroup *CgroupView
}

// CgroupView is a VM's cgroup as inspect shows it.
type CgroupView struct {
	Version int
	Paths   []string
	Limits  cgroup.Limits
	Stats   cgroup.Stats
}

// Confinement reads how the VM's running QEMU is confined; nil when it
// does not run.
func (vm *VM) Confinement() *ConfinementView {
	info := vm.Info()
	if !info.Running || info.PID == 0 {
		return nil
	}
	st, err := jail.Inspect(info.PID)
	if err != nil {
		return nil
	}
	v := &ConfinementView{Jailed: vm.cfg.Jail != nil, Sandbox: vm.cfg.Sandbox, Status: st}
	if vm.cfg.Jail != nil {
		if g := vm.confine.group(vm.ID); g != nil {
			cv := &CgroupView{Version: g.Version(), Paths: g.Paths()}
			cv.Limits, _ = g.Limits()
			cv.Stats, _ = g.Stats()
			v.Cgroup = cv
		}
	}
	return v
}

// sweepCgroups removes, host-wide, the VM cgroups that hold no process and
// are older than two minutes: what VMs of any root left when they ended
// unseen. A younger empty group may belong to a VM being started.
func (c *confiner) sweepCgroups() int {
	c.probe()
	if c.cg == nil {
		return 0
	}
	return c.cg.SweepEmpty(CgroupParent, 2*time.Minute)
}
