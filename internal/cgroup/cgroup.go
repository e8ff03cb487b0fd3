// Package cgroup jails each VM's QEMU process in a cgroup of its own, so that
// a guest cannot take more memory, CPU or processes than it was given, on
// hosts with cgroup v1 controllers (possibly beside an empty cgroup2 tree)
// and on hosts with the unified cgroup v2 hierarchy alike.
package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// controllers are the controllers kiln needs, in the order messages name
// them.
var controllers = []string{"memory", "cpu", "pids"}

// cpuPeriod is the CFS period kiln sets, in microseconds: the kernel's
// default, so a quota in cores is quota/100000.
const cpuPeriod = 100000

// minCPUQuota is the smallest CFS quota the kernel accepts (1ms), in
// microseconds.
const minCPUQuota = 1000

// minMemory is the smallest memory limit Create accepts: the kernel rounds
// limits down to whole pages, so a tiny limit would silently become 0.
const minMemory = 1 << 20

// Limits are what a VM's cgroup bounds.
type Limits struct {
	// MemoryBytes is a hard limit on memory including swap where the host
	// accounts swap (v1: memory.limit_in_bytes, and
	// memory.memsw.limit_in_bytes set to the same when present; v2:
	// memory.max with memory.swap.max 0), so a guest cannot escape the limit
	// by swapping. The kernel rounds it down to whole pages. 0 = none.
	MemoryBytes int64
	// CPUs is the CPU quota in cores (v1: cpu.cfs_quota_us over a
	// cpu.cfs_period_us of 100000; v2: cpu.max "QUOTA 100000"). 0 = none.
	CPUs float64
	// Pids bounds the number of processes and threads (pids.max), so a
	// runaway QEMU cannot exhaust the host's pid space. 0 = none.
	Pids int64
}

// validate rejects limits the kernel would refuse or silently change.
func (l Limits) validate() error {
	switch {
	case l.MemoryBytes < 0:
		return fmt.Errorf("memory limit %d is negative: %w", l.MemoryBytes, errdefs.ErrInvalidArgument)
	case l.MemoryBytes > 0 && l.MemoryBytes < minMemory:
		return fmt.Errorf("memory limit %d bytes is below the 1 MiB minimum: %w", l.MemoryBytes, errdefs.ErrInvalidArgument)
	case math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) || l.CPUs < 0:
		return fmt.Errorf("CPU limit %g is not a positive number of cores: %w", l.CPUs, errdefs.ErrInvalidArgument)
	case l.CPUs > math.MaxInt64/(2*cpuPeriod):
		return fmt.Errorf("CPU limit %g is too large: %w", l.CPUs, errdefs.ErrInvalidArgument)
	case l.CPUs > 0 && l.cpuQuota() < minCPUQuota:
		return fmt.Errorf("CPU limit %g is below the kernel's minimum of 0.01 cores: %w", l.CPUs, errdefs.ErrInvalidArgument)
	case l.Pids < 0:
		return fmt.Errorf("process limit %d is negative: %w", l.Pids, errdefs.ErrInvalidArgument)
	}
	return nil
}

// cpuQuota is CPUs as a CFS quota in microseconds per cpuPeriod.
func (l Limits) cpuQuota() int64 { return int64(math.Round(l.CPUs * cpuPeriod)) }

// Hierarchy is where a host keeps the controllers kiln needs.
type Hierarchy struct {
	// Version is 1 when memory, cpu and pids are v1 hierarchies, 2 when they
	// are all in the unified cgroup2 hierarchy.
	Version int
	// Unified is the mount point of the cgroup2 hierarchy kiln uses (v2
	// only).
	Unified string
	// Mounts maps each controller kiln needs (memory, cpu, pids) to the
	// mount point of its v1 hierarchy (v1 only). Controllers mounted
	// together (as cpu,cpuacct often are) share a mount point.
	Mounts map[string]string
}

// Detect finds the hierarchy on this host that has memory, cpu and pids,
// from /proc/self/mountinfo. It prefers cgroup v2, and takes v1 when the
// controllers are bound to v1 hierarchies (as on hosts that mount an empty
// cgroup2 tree beside them). The error says what is missing and how to fix
// it.
func Detect() (*Hierarchy, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, errdefs.Mark(fmt.Errorf("reading the mount table: %w", err), errdefs.ErrUnavailable)
	}
	return DetectFrom(string(b), "/")
}

// DetectFrom is Detect over a mount table in the format of
// /proc/self/mountinfo and a filesystem root that mount points are taken
// under (the cgroup.controllers files are read there), so that the probe is
// a pure function of what it reads and tests can fake a host in a
// directory. Paths in the Hierarchy include root.
func DetectFrom(mountinfo, root string) (*Hierarchy, error) {
	mounts, err := parseMountinfo(mountinfo)
	if err != nil {
		return nil, errdefs.Mark(fmt.Errorf("reading the mount table: %w", err), errdefs.ErrUnavailable)
	}
	v1 := map[string]string{}
	var unified []string
	for _, m := range mounts {
		switch m.fstype {
		case "cgroup2":
			unified = append(unified, filepath.Join(root, m.point))
		case "cgroup":
			for _, o := range m.options {
				if _, seen := v1[o]; !seen && slices.Contains(controllers, o) {
					v1[o] = filepath.Join(root, m.point)
				}
			}
		}
	}

	var reasons []string
	var readErr error
	for _, dir := range unified {
		have, err := readFields(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			// A cgroup2 mount kiln cannot read is no candidate, but
			// it may be the one the user expects: keep why.
			readErr = errors.Join(readErr, fmt.Errorf("reading the controllers of cgroup2 at %s: %w", dir, err))
			continue
		}
		lack := missing(controllers, have)
		if len(lack) == 0 {
			return &Hierarchy{Version: 2, Unified: dir}, nil
		}
		reasons = append(reasons, fmt.Sprintf("cgroup2 at %s lacks %s in its cgroup.controllers (bound to cgroup v1, or disabled): "+
			"enable them in the cgroup.subtree_control of the cgroup above it, or boot with cgroup v2 alone (systemd.unified_cgroup_hierarchy=1)",
			dir, list(lack)))
	}

	if lack := missing(controllers, slices.Collect(maps.Keys(v1))); len(lack) == 0 {
		return &Hierarchy{Version: 1, Mounts: v1}, nil
	} else if len(lack) < len(controllers) {
		var how []string
		for _, c := range lack {
			how = append(how, "mount -t cgroup -o "+c+" cgroup /sys/fs/cgroup/"+c)
		}
		word := "controller"
		if len(lack) > 1 {
			word += "s"
		}
		reasons = slices.Insert(reasons, 0, fmt.Sprintf("cgroup v1 lacks %s: mount the %s %s (%s)",
			list(lack), list(lack), word, strings.Join(how, "; ")))
	}

	if len(reasons) == 0 && readErr == nil {
		return nil, errdefs.Mark(errors.New("no cgroup filesystem is mounted: mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup), "+
			"or the cgroup v1 memory, cpu and pids controllers"), errdefs.ErrUnavailable)
	}
	msg := "no cgroup hierarchy has all of memory, cpu and pids"
	if len(reasons) > 0 {
		msg += ": " + strings.Join(reasons, "; ")
	}
	if readErr != nil {
		return nil, errdefs.Mark(fmt.Errorf("%s: %w", msg, readErr), errdefs.ErrUnavailable)
	}
	return nil, errdefs.Mark(errors.New(msg), errdefs.ErrUnavailable)
}

// mount is one line of a mount table, as far as Detect cares.
type mount struct {
	point   string   // the mount point
	fstype  string   // e.g. cgroup, cgroup2
	options []string // the superblock options; v1 controllers are among them
}

// parseMountinfo reads a mount table in the format of proc(5)'s
// /proc/<pid>/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func parseMountinfo(text string) ([]mount, error) {
	var ms []mount
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		// Optional fields run from the seventh to a lone "-"; the mount
		// point could itself be "-", so look only after it.
		sep := -1
		if len(f) > 6 {
			if j := slices.Index(f[6:], "-"); j >= 0 {
				sep = 6 + j
			}
		}
		if sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("parsing line %d %q: it is not in the format of /proc/self/mountinfo", i+1, line)
		}
		ms = append(ms, mount{
			point:   unescapeOctal(f[4]),
			fstype:  f[sep+1],
			options: strings.Split(f[len(f)-1], ","),
		})
	}
	return ms, nil
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash in mount table paths (\040 and so on).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// roots are the directories a group is made under: one per distinct v1
// mount, or the unified mount.
func (h *Hierarchy) roots() []string {
	if h.Version == 2 {
		return []string{h.Unified}
	}
	var rs []string
	for _, c := range controllers {
		if !slices.Contains(rs, h.Mounts[c]) {
			rs = append(rs, h.Mounts[c])
		}
	}
	slices.Sort(rs)
	return rs
}

// group is the Group for parent/name, whether or not it exists.
func (h *Hierarchy) group(parent, name string) *Group {
	rel := filepath.Join(parent, name)
	g := &Group{version: h.Version, rel: rel, dirs: map[string]string{}}
	for _, c := range controllers {
		root := h.Unified
		if h.Version != 2 {
			root = h.Mounts[c]
		}
		g.dirs[c] = filepath.Join(root, rel)
	}
	return g
}

// checkNames rejects a parent or name that would put a group outside the
// hierarchy, or make two VMs share one.
func checkNames(parent, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("cgroup name %q is not a single path element: %w", name, errdefs.ErrInvalidArgument)
	}
	if parent != "" && (!filepath.IsLocal(parent) || filepath.Clean(parent) != parent) {
		return fmt.Errorf("cgroup parent %q is not a clean path inside the hierarchy: %w", parent, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Create makes (or, when it exists, takes over) the group parent/name and
// sets l on it. parent is a path relative to the hierarchy root, such as
// "kiln", shared by all VMs; it is created if missing. On v2, Create
// enables memory, cpu and pids in the cgroup.subtree_control of the root and
// of each ancestor where they are not enabled yet, since a group only gets
// the controllers its parent passes down; the error names the file when
// that is refused (the parent is not delegated to kiln, or holds
// processes). Creating an existing group re-applies l, so a daemon that
// restarts can call it again. On error, Create removes the directories it
// made and leaves alone what was there before: an existing group, and the
// controllers it enabled in existing ancestors, which other groups may rely
// on.
func (h *Hierarchy) Create(parent, name string, l Limits) (_ *Group, err error) {
	if err := checkNames(parent, name); err != nil {
		return nil, err
	}
	if err := l.validate(); err != nil {
		return nil, err
	}
	g := h.group(parent, name)
	var made []string
	defer func() {
		if err == nil {
			return
		}
		for i := len(made) - 1; i >= 0; i-- {
			// An ancestor may have gained another VM's group in the
			// meantime (EBUSY, ENOTEMPTY): it is then no longer ours to
			// remove.
			if rerr := rmdir(made[i]); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) &&
				!errors.Is(rerr, unix.EBUSY) && !errors.Is(rerr, unix.ENOTEMPTY) {
				err = errors.Join(err, fmt.Errorf("removing %s after the failure: %w", made[i], rerr))
			}
		}
	}()
	elems := append(strings.Split(parent, "/"), name)
	if parent == "" {
		elems = []string{name}
	}
	for _, root := range h.roots() {
		dir := root
		for _, e := range elems {
			if h.Version == 2 {
				if err := enableControllers(dir); err != nil {
					return nil, fmt.Errorf("creating cgroup %s: %w", g.rel, err)
				}
			}
			dir = filepath.Join(dir, e)
			if err := os.Mkdir(dir, 0o755); err == nil {
				made = append(made, dir)
			} else if !errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("creating cgroup %s: %w", g.rel, err)
			}
		}
	}
	if err := g.apply(l); err != nil {
		return nil, fmt.Errorf("setting the limits of cgroup %s: %w", g.rel, err)
	}
	return g, nil
}

// enableControllers makes sure dir passes memory, cpu and pids down to its
// children, by writing the ones missing to its cgroup.subtree_control (v2).
func enableControllers(dir string) error {
	control := filepath.Join(dir, "cgroup.subtree_control")
	enabled, err := readFields(control)
	if err != nil {
		return fmt.Errorf("reading the controllers passed down: %w", err)
	}
	want := missing(controllers, enabled)
	if len(want) == 0 {
		return nil
	}
	available := filepath.Join(dir, "cgroup.controllers")
	have, err := readFields(available)
	if err != nil {
		return fmt.Errorf("reading the controllers available: %w", err)
	}
	if lack := missing(want, have); len(lack) > 0 {
		return errdefs.Mark(fmt.Errorf("%s lacks %s: enable them in the cgroup.subtree_control of the cgroup above, or delegate a cgroup that has them to kiln",
			available, list(lack)), errdefs.ErrUnavailable)
	}
	var b strings.Builder
	for i, c := range want {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("+" + c)
	}
	if err := writeValue(control, b.String()); err != nil {
		var why string
		switch {
		case errors.Is(err, unix.EBUSY):
			why = "the cgroup holds processes, and a cgroup with processes cannot pass controllers to children: " +
				"move them into a child cgroup, or give kiln a cgroup of its own"
		case errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.EROFS):
			why = "the cgroup is not delegated to kiln: run kiln as root, or delegate it (systemd: Delegate=yes)"
		default:
			why = "the kernel refused to pass them to child cgroups"
		}
		return errdefs.Mark(fmt.Errorf("enabling %s for child cgroups: %w: %s", list(want), err, why), errdefs.ErrUnavailable)
	}
	return nil
}

// Open returns the existing group parent/name, for a daemon that restarts
// and finds its VMs running. The error wraps fs.ErrNotExist when the group
// (or part of it, on v1) is absent.
func (h *Hierarchy) Open(parent, name string) (*Group, error) {
	if err := checkNames(parent, name); err != nil {
		return nil, err
	}
	g := h.group(parent, name)
	for _, p := range g.Paths() {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("opening cgroup %s: %w", g.rel, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("opening cgroup %s: %s is not a directory: %w", g.rel, p, fs.ErrNotExist)
		}
	}
	return g, nil
}

// missing returns the elements of want absent from have, in want's order.
func missing(want, have []string) []string {
	var m []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			m = append(m, w)
		}
	}
	return m
}

// list names controllers in a message: "memory", "memory and cpu",
// "memory, cpu and pids".
func list(cs []string) string {
	if len(cs) < 2 {
		return strings.Join(cs, "")
	}
	return strings.Join(cs[:len(cs)-1], ", ") + " and " + cs[len(cs)-1]
}

// MemoryUsedBy sums the memory limits of the groups under parent that hold
// a process, but for the group named except: what running VMs already
// hold, for Admit. A group without a process (left by a VM that ended
// while nothing watched it) holds nothing; one without a limit counts 0.
func (h *Hierarchy) MemoryUsedBy(parent, except string) (int64, error) {
	root := h.Unified
	limitFile := "memory.max"
	if h.Version != 2 {
		root, limitFile = h.Mounts["memory"], "memory.limit_in_bytes"
	}
	ents, err := os.ReadDir(filepath.Join(root, parent))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("listing cgroups under %s: %w", parent, err)
	}
	var sum int64
	for _, e := range ents {
		if !e.IsDir() || e.Name() == except {
			continue
		}
		dir := filepath.Join(root, parent, e.Name())
		if procs, err := readFields(filepath.Join(dir, "cgroup.procs")); err != nil || len(procs) == 0 {
			continue
		}
		v, err := readValue(filepath.Join(dir, limitFile))
		if err != nil {
			continue // gone meanwhile
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n >= math.MaxInt64/2 {
			continue // "max", or v1's "no limit"
		}
		sum += n
	}
	return sum, nil
}

// SweepEmpty removes the groups under parent that hold no process and
// whose directory is older than minAge: groups a VM left when it ended in
// a way nothing saw through (a daemon killed as it ended, a root deleted
// without rm). minAge spares a group made a moment ago whose process is
// about to join it. It returns how many it removed.
func (h *Hierarchy) SweepEmpty(parent string, minAge time.Duration) int {
	removed := 0
	seen := map[string]bool{}
	for _, root := range h.roots() {
		ents, err := os.ReadDir(filepath.Join(root, parent))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || seen[e.Name()] {
				continue
			}
			info, err := e.Info()
			if err != nil || time.Since(info.ModTime()) < minAge {
				continue
			}
			procs, err := readFields(filepath.Join(root, parent, e.Name(), "cgroup.procs"))
			if err != nil || len(procs) > 0 {
				continue
			}
			seen[e.Name()] = true
			g, err := h.Open(parent, e.Name())
			if err == nil && g.Remove() == nil {
				removed++
			}
		}
	}
	return removed
}
