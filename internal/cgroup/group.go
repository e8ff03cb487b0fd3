package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
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

// Group is one VM's cgroup: <parent>/<name> in each controller's hierarchy
// (v1) or in the unified tree (v2).
type Group struct {
	version int
	rel     string            // parent/name, for messages
	dirs    map[string]string // each controller's directory of the group
}

// Stats are what a group has used.
type Stats struct {
	// MemoryBytes is the memory in use now (v1 memory.usage_in_bytes, v2
	// memory.current).
	MemoryBytes int64
	// MemoryPeak is the most memory the group has used (v1
	// memory.max_usage_in_bytes, v2 memory.peak); 0 where the kernel keeps
	// no peak (v2 before Linux 5.19).
	MemoryPeak int64
	// OOMKills counts processes the kernel killed for the group's memory
	// limit (v1 oom_kill in memory.oom_control, v2 oom_kill in
	// memory.events). v1 kernels before 4.13 have no such counter: there it
	// is the larger of memory.failcnt and memory.memsw.failcnt, which count
	// the times the limit was hit, so it is nonzero whenever an OOM kill
	// may have happened.
	OOMKills int64
	// Pids is the number of processes and threads in the group now
	// (pids.current).
	Pids int64
}

// Version is the cgroup version of the group: 1 or 2.
func (g *Group) Version() int { return g.version }

// Paths are the directories a process must join to be jailed: one per
// distinct v1 hierarchy, or the one directory on v2. A launcher that places
// QEMU itself (e.g. with clone3's CLONE_INTO_CGROUP on v2) uses them.
func (g *Group) Paths() []string {
	var ps []string
	for _, c := range controllers {
		if !slices.Contains(ps, g.dirs[c]) {
			ps = append(ps, g.dirs[c])
		}
	}
	slices.Sort(ps)
	return ps
}

// Join moves process pid, with all its threads, into the group by writing
// it to cgroup.procs of each path; pid 0 is the calling process. Processes
// it forks afterwards start in the group. Memory a process allocated
// before it joined stays charged where it was (v2 never moves it, v1 only
// with the deprecated memory.move_charge_at_immigrate), so QEMU must join before it allocates guest RAM: have the child
// join itself (Join(0)) before it execs QEMU, or, on v2 only, start it in
// the group (syscall.SysProcAttr.UseCgroupFD). On v1 a failure can leave
// the process in some hierarchies and not others, so the caller should
// kill a process Join failed on.
func (g *Group) Join(pid int) error {
	if pid < 0 {
		return fmt.Errorf("joining cgroup %s: pid %d is negative: %w", g.rel, pid, errdefs.ErrInvalidArgument)
	}
	who := "process " + strconv.Itoa(pid)
	if pid == 0 {
		who = "the calling process"
	}
	for _, p := range g.Paths() {
		if err := writeValue(filepath.Join(p, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("moving %s into cgroup %s: %w", who, g.rel, err)
		}
	}
	return nil
}

// apply writes l to the group's control files.
func (g *Group) apply(l Limits) error {
	if g.version == 2 {
		return g.applyV2(l)
	}
	return g.applyV1(l)
}

// applyV2 writes l to a v2 group.
func (g *Group) applyV2(l Limits) error {
	dir := g.dirs["memory"]
	mem, swap := "max", "max"
	if l.MemoryBytes > 0 {
		mem, swap = strconv.FormatInt(l.MemoryBytes, 10), "0"
	}
	if err := writeValue(filepath.Join(dir, "memory.max"), mem); err != nil {
		return err
	}
	// memory.swap.max exists only where the kernel accounts swap; without
	// it, memory.max bounds RAM alone.
	if f := filepath.Join(dir, "memory.swap.max"); exists(f) {
		if err := writeValue(f, swap); err != nil {
			return err
		}
	}
	quota := "max"
	if l.CPUs > 0 {
		quota = strconv.FormatInt(l.cpuQuota(), 10)
	}
	if err := writeValue(filepath.Join(g.dirs["cpu"], "cpu.max"), quota+" "+strconv.Itoa(cpuPeriod)); err != nil {
		return err
	}
	return writeValue(filepath.Join(g.dirs["pids"], "pids.max"), pidsMax(l.Pids))
}

// applyV1 writes l to a v1 group.
func (g *Group) applyV1(l Limits) error {
	if err := setMemoryV1(g.dirs["memory"], l.MemoryBytes); err != nil {
		return err
	}
	// The period first: the quota is a share of it.
	if err := writeValue(filepath.Join(g.dirs["cpu"], "cpu.cfs_period_us"), strconv.Itoa(cpuPeriod)); err != nil {
		return err
	}
	quota := "-1"
	if l.CPUs > 0 {
		quota = strconv.FormatInt(l.cpuQuota(), 10)
	}
	if err := writeValue(filepath.Join(g.dirs["cpu"], "cpu.cfs_quota_us"), quota); err != nil {
		return err
	}
	return writeValue(filepath.Join(g.dirs["pids"], "pids.max"), pidsMax(l.Pids))
}

// setMemoryV1 sets memory.limit_in_bytes, and memory.memsw.limit_in_bytes
// (memory plus swap) to the same where the kernel accounts swap. The kernel
// refuses a memsw limit below the memory limit, so memsw goes first when it
// rises and last when it falls.
func setMemoryV1(dir string, limit int64) error {
	value, target := "-1", int64(math.MaxInt64)
	if limit > 0 {
		value, target = strconv.FormatInt(limit, 10), limit
	}
	mem := filepath.Join(dir, "memory.limit_in_bytes")
	memsw := filepath.Join(dir, "memory.memsw.limit_in_bytes")
	if !exists(memsw) {
		return writeValue(mem, value)
	}
	cur, err := readInt(memsw)
	if err != nil {
		return err
	}
	order := []string{mem, memsw}
	if target > cur {
		order = []string{memsw, mem}
	}
	for _, f := range order {
		if err := writeValue(f, value); err != nil {
			return err
		}
	}
	return nil
}

// pidsMax is n as pids.max takes it.
func pidsMax(n int64) string {
	if n == 0 {
		return "max"
	}
	return strconv.FormatInt(n, 10)
}

// Limits reads back the limits set on the group, as Create took them (the
// memory limit rounded down to whole pages by the kernel).
func (g *Group) Limits() (Limits, error) {
	var l Limits
	var err error
	if g.version == 2 {
		if l.MemoryBytes, err = readLimit(filepath.Join(g.dirs["memory"], "memory.max")); err != nil {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
		}
		fields, err := readFields(filepath.Join(g.dirs["cpu"], "cpu.max"))
		if err != nil {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
		}
		if len(fields) != 2 {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: cpu.max holds %q, not QUOTA PERIOD", g.rel, strings.Join(fields, " "))
		}
		if fields[0] != "max" {
			if l.CPUs, err = cpus(fields[0], fields[1]); err != nil {
				return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
			}
		}
	} else {
		if l.MemoryBytes, err = readLimit(filepath.Join(g.dirs["memory"], "memory.limit_in_bytes")); err != nil {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
		}
		quota, err := readValue(filepath.Join(g.dirs["cpu"], "cpu.cfs_quota_us"))
		if err != nil {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
		}
		period, err := readValue(filepath.Join(g.dirs["cpu"], "cpu.cfs_period_us"))
		if err != nil {
			return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
		}
		if quota != "-1" {
			if l.CPUs, err = cpus(quota, period); err != nil {
				return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
			}
		}
	}
	if l.Pids, err = readLimit(filepath.Join(g.dirs["pids"], "pids.max")); err != nil {
		return Limits{}, fmt.Errorf("reading the limits of cgroup %s: %w", g.rel, err)
	}
	return l, nil
}

// cpus is a CFS quota over a period, in cores.
func cpus(quota, period string) (float64, error) {
	q, err := strconv.ParseInt(quota, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing the CPU quota: %w", err)
	}
	p, err := strconv.ParseInt(period, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing the CPU period: %w", err)
	}
	if p <= 0 {
		return 0, fmt.Errorf("parsing the CPU period: %d is not positive", p)
	}
	return float64(q) / float64(p), nil
}

// Stats reads what the group uses now, and how often it hit its memory
// limit.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	var err error
	mem := g.dirs["memory"]
	if g.version == 2 {
		if s.MemoryBytes, err = readInt(filepath.Join(mem, "memory.current")); err != nil {
			return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
		}
		if f := filepath.Join(mem, "memory.peak"); exists(f) {
			if s.MemoryPeak, err = readInt(f); err != nil {
				return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
			}
		}
		events, err := readKeyed(filepath.Join(mem, "memory.events"))
		if err != nil {
			return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
		}
		s.OOMKills = events["oom_kill"]
	} else {
		if s.MemoryBytes, err = readInt(filepath.Join(mem, "memory.usage_in_bytes")); err != nil {
			return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
		}
		if s.MemoryPeak, err = readInt(filepath.Join(mem, "memory.max_usage_in_bytes")); err != nil {
			return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
		}
		if s.OOMKills, err = oomKillsV1(mem); err != nil {
			return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
		}
	}
	if s.Pids, err = readInt(filepath.Join(g.dirs["pids"], "pids.current")); err != nil {
		return Stats{}, fmt.Errorf("reading the usage of cgroup %s: %w", g.rel, err)
	}
	return s, nil
}

// oomKillsV1 reads oom_kill from memory.oom_control (Linux 4.13 and
// later), else the failure counts.
func oomKillsV1(dir string) (int64, error) {
	control, err := readKeyed(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return 0, err
	}
	if n, ok := control["oom_kill"]; ok {
		return n, nil
	}
	n, err := readInt(filepath.Join(dir, "memory.failcnt"))
	if err != nil {
		return 0, err
	}
	if f := filepath.Join(dir, "memory.memsw.failcnt"); exists(f) {
		sw, err := readInt(f)
		if err != nil {
			return 0, err
		}
		n = max(n, sw)
	}
	return n, nil
}

// Remove deletes the group's directories, and tolerates ones already gone.
// It kills nothing: while processes (or child cgroups) remain, it removes
// nothing and fails naming them, wrapping errdefs.ErrConflict, so callers
// remove a group after its process exited. A cgroup can stay busy for a
// moment after its last process was reaped; Remove retries that for up to
// about two seconds.
func (g *Group) Remove() error {
	// Look in every hierarchy before removing any, so that a v1 group is
	// not left half removed around a live process.
	var o occupancy
	for _, p := range g.Paths() {
		o.add(p)
	}
	if !o.empty() {
		return fmt.Errorf("removing cgroup %s: it still holds %s, which must go first: %w", g.rel, o, errdefs.ErrConflict)
	}
	var errs []error
	for _, p := range g.Paths() {
		if err := removeDir(p); err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", g.rel, err))
		}
	}
	return errors.Join(errs...)
}

// Retry timing of removeDir: the delay doubles from removeFirstDelay up to
// removeMaxDelay, for at most removeAttempts attempts (about 2s in all).
const (
	removeFirstDelay = 5 * time.Millisecond
	removeMaxDelay   = 250 * time.Millisecond
	removeAttempts   = 14
)

// removeDir removes one cgroup directory, retrying while the kernel finds it
// busy with no process or child cgroup left in it.
func removeDir(dir string) error {
	delay := removeFirstDelay
	for attempt := 1; ; attempt++ {
		err := rmdir(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		var o occupancy
		if o.add(dir); !o.empty() {
			return fmt.Errorf("%s still holds %s, which must go first: %w", dir, o, errdefs.ErrConflict)
		}
		if attempt == removeAttempts {
			return fmt.Errorf("waiting for the kernel to release it: %w", err)
		}
		time.Sleep(delay)
		delay = min(2*delay, removeMaxDelay)
	}
}

// occupancy is what keeps cgroup directories busy: processes and child
// cgroups.
type occupancy struct {
	pids     []string // with their command names: "123 (qemu-system-x86)"
	children []string
}

// add notes what is in the cgroup directory dir.
func (o *occupancy) add(dir string) {
	if fields, err := readFields(filepath.Join(dir, "cgroup.procs")); err == nil {
		for _, pid := range fields {
			if comm, err := os.ReadFile("/proc/" + pid + "/comm"); err == nil {
				pid += " (" + strings.TrimSpace(string(comm)) + ")"
			}
			if !slices.Contains(o.pids, pid) {
				o.pids = append(o.pids, pid)
			}
		}
	}
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if e.IsDir() && !slices.Contains(o.children, e.Name()) {
				o.children = append(o.children, e.Name())
			}
		}
	}
}

// empty reports whether o found nothing.
func (o occupancy) empty() bool { return len(o.pids) == 0 && len(o.children) == 0 }

// String names what o found: "process 123 (sleep) and child cgroup x".
func (o occupancy) String() string {
	var parts []string
	if n := len(o.pids); n > 0 {
		parts = append(parts, plural(n, "process ", "processes ")+strings.Join(o.pids, ", "))
	}
	if n := len(o.children); n > 0 {
		parts = append(parts, plural(n, "child cgroup ", "child cgroups ")+strings.Join(o.children, ", "))
	}
	return strings.Join(parts, " and ")
}

// plural is one or many as n asks.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// rmdir removes an empty directory (a cgroup directory, whose control files
// do not count), with the error as os would report it.
func rmdir(dir string) error {
	if err := unix.Rmdir(dir); err != nil {
		return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}

// writeValue writes value to a control file in one write, as the kernel
// takes each write as one command. The file must exist: cgroupfs makes
// them, and a missing one means a controller is not there.
func writeValue(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("setting %s to %q: %w", filepath.Base(path), value, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("setting %s to %q: %w", filepath.Base(path), value, err)
	}
	return nil
}

// readValue reads a one-value control file.
func readValue(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readFields reads a control file of space-separated words (cgroup.procs,
// cgroup.controllers, cpu.max).
func readFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// readInt reads a control file holding one integer.
func readInt(path string) (int64, error) {
	s, err := readValue(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return n, nil
}

// unlimitedV1 is the least value v1 reports for "no memory limit": the
// largest page count in bytes, which is within a page of MaxInt64. A
// margin of 1 MiB covers any page size.
const unlimitedV1 = math.MaxInt64 - 1<<20

// readLimit reads a limit file, with 0 for no limit: "max" (v2, pids.max),
// -1 or a value near MaxInt64 (v1).
func readLimit(path string) (int64, error) {
	s, err := readValue(path)
	if err != nil {
		return 0, err
	}
	if s == "max" || s == "-1" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	if n >= unlimitedV1 {
		return 0, nil
	}
	return n, nil
}

// readKeyed reads a control file of "key value" lines (memory.events,
// memory.oom_control).
func readKeyed(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", path, err)
		}
		m[f[0]] = n
	}
	return m, nil
}

// exists reports whether a control file exists: some depend on kernel
// configuration (swap accounting) or version (memory.peak).
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
