package cgroup

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/internal/errdefs"
)

// These tests make real cgroups on this machine, under a parent of their
// own that they remove.

// joinEnv, in a child of the test binary, names parent/name of a group the
// child joins with Join(0) before printing its /proc/self/cgroup: the test
// process itself must not move, as the machinery running it may have put
// it in a cgroup of its own.
const joinEnv = "KILN_CGROUP_TEST_JOIN_SELF"

func TestMain(m *testing.M) {
	if rel := os.Getenv(joinEnv); rel != "" {
		os.Exit(joinSelf(rel))
	}
	os.Exit(m.Run())
}

// joinSelf is the child's side of joinEnv.
func joinSelf(rel string) int {
	h, err := Detect()
	if err == nil {
		var g *Group
		if g, err = h.Open(filepath.Dir(rel), filepath.Base(rel)); err == nil {
			err = g.Join(0)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Stdout.Write(b)
	return 0
}

// realHierarchy is this machine's hierarchy, or skips the test saying how
// to get one.
func realHierarchy(t *testing.T) *Hierarchy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making cgroups needs root: run these tests as root (sudo go test ./internal/cgroup/)")
	}
	h, err := Detect()
	if err != nil {
		t.Skip("no cgroup hierarchy kiln can use: ", err)
	}
	return h
}

// testParent returns a parent of the test's own, removed with everything
// left under it when the test ends.
func testParent(t *testing.T, roots []string) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	parent := "kiln-test-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		for _, r := range roots {
			if err := removeTree(filepath.Join(r, parent)); err != nil {
				t.Errorf("cleaning up: %v", err)
			}
		}
	})
	return parent
}

// removeTree removes a tree of cgroup directories, deepest first.
func removeTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return removeDir(dir)
}

// startSleep starts a process that lives until the test kills it.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// checkInGroup fails unless a /proc/<pid>/cgroup text puts the process in
// group rel: in each of memory, cpu and pids on v1, in the unified tree on
// v2.
func checkInGroup(t *testing.T, version int, text, rel string) {
	t.Helper()
	paths := map[string]string{} // controller ("" for v2) -> cgroup path
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			t.Fatalf("bad line %q in /proc/<pid>/cgroup", line)
		}
		for _, c := range strings.Split(f[1], ",") {
			paths[c] = f[2]
		}
	}
	want := []string{""}
	if version == 1 {
		want = controllers
	}
	for _, c := range want {
		// A suffix: in a cgroup namespace or under a mount of a subtree,
		// paths are relative to that.
		if !strings.HasSuffix(paths[c], "/"+rel) {
			t.Errorf("process is in %q for controller %q, not in %s:\n%s", paths[c], c, rel, text)
		}
	}
}

// rawLimits are the control files that hold l, relative to the group's
// directory of each controller, with the content the kernel shows.
func rawLimits(g *Group, l Limits) map[string]string {
	raw := map[string]string{}
	mem, cpu, pids := g.dirs["memory"], g.dirs["cpu"], g.dirs["pids"]
	raw[filepath.Join(pids, "pids.max")] = pidsMax(l.Pids)
	if g.version == 2 {
		raw[filepath.Join(mem, "memory.max")] = "max"
		if exists(filepath.Join(mem, "memory.swap.max")) {
			raw[filepath.Join(mem, "memory.swap.max")] = "max"
		}
		if l.MemoryBytes > 0 {
			raw[filepath.Join(mem, "memory.max")] = strconv.FormatInt(l.MemoryBytes, 10)
			if exists(filepath.Join(mem, "memory.swap.max")) {
				raw[filepath.Join(mem, "memory.swap.max")] = "0"
			}
		}
		raw[filepath.Join(cpu, "cpu.max")] = "max 100000"
		if l.CPUs > 0 {
			raw[filepath.Join(cpu, "cpu.max")] = strconv.FormatInt(l.cpuQuota(), 10) + " 100000"
		}
		return raw
	}
	// v1 shows no memory limit as the largest page count in bytes.
	memValue := "unlimited"
	if l.MemoryBytes > 0 {
		memValue = strconv.FormatInt(l.MemoryBytes, 10)
	}
	raw[filepath.Join(mem, "memory.limit_in_bytes")] = memValue
	if exists(filepath.Join(mem, "memory.memsw.limit_in_bytes")) {
		raw[filepath.Join(mem, "memory.memsw.limit_in_bytes")] = memValue
	}
	raw[filepath.Join(cpu, "cpu.cfs_period_us")] = "100000"
	raw[filepath.Join(cpu, "cpu.cfs_quota_us")] = "-1"
	if l.CPUs > 0 {
		raw[filepath.Join(cpu, "cpu.cfs_quota_us")] = strconv.FormatInt(l.cpuQuota(), 10)
	}
	return raw
}

func TestRealGroup(t *testing.T) {
	h := realHierarchy(t)
	parent := testParent(t, h.roots())
	rel := parent + "/vm"

	// Each step re-creates the group: lowering the memory limit and
	// raising it again checks the order of the v1 memory and memsw
	// writes, which the kernel refuses to cross.
	var g *Group
	for _, l := range []Limits{
		{MemoryBytes: 256 << 20, CPUs: 0.5, Pids: 64},
		{MemoryBytes: 128 << 20, CPUs: 1},
		{MemoryBytes: 512 << 20, CPUs: 2.5, Pids: 1000},
		{},
		{MemoryBytes: 256 << 20, CPUs: 0.5, Pids: 64},
	} {
		t.Run(fmt.Sprintf("create %+v", l), func(t *testing.T) {
			var err error
			if g, err = h.Create(parent, "vm", l); err != nil {
				t.Fatalf("Create: %v", err)
			}
			if got, err := g.Limits(); err != nil || got != l {
				t.Errorf("Limits() = %+v, %v; want %+v", got, err, l)
			}
			for path, want := range rawLimits(g, l) {
				got, err := readValue(path)
				if err != nil {
					t.Error(err)
				} else if want == "unlimited" {
					if n, err := strconv.ParseInt(got, 10, 64); err != nil || n < unlimitedV1 {
						t.Errorf("%s holds %q, want no limit", path, got)
					}
				} else if got != want {
					t.Errorf("%s holds %q, want %q", path, got, want)
				}
			}
		})
	}
	if t.Failed() {
		t.FailNow()
	}
	if g.Version() != h.Version {
		t.Errorf("Version() = %d, want %d", g.Version(), h.Version)
	}
	if wantPaths := len(h.roots()); len(g.Paths()) != wantPaths {
		t.Errorf("Paths() = %q, want %d", g.Paths(), wantPaths)
	}

	opened, err := h.Open(parent, "vm")
	if err != nil || !slices.Equal(opened.Paths(), g.Paths()) {
		t.Errorf("Open = %v, %v; want the paths %q", opened, err, g.Paths())
	}
	if _, err := h.Open(parent, "absent"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of an absent group = %v, want fs.ErrNotExist", err)
	}

	sleep := startSleep(t)
	pid := sleep.Process.Pid
	if err := g.Join(pid); err != nil {
		t.Fatalf("Join: %v", err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	checkInGroup(t, h.Version, string(b), rel)
	for _, p := range g.Paths() {
		if procs, err := readFields(filepath.Join(p, "cgroup.procs")); err != nil || !slices.Equal(procs, []string{strconv.Itoa(pid)}) {
			t.Errorf("%s/cgroup.procs holds %q, %v; want only %d", p, procs, err, pid)
		}
	}
	// Memory the process charged before it joined stays charged where it
	// was (neither v1 nor v2 moves it), so only the process count shows.
	if s, err := g.Stats(); err != nil || s.Pids != 1 {
		t.Errorf("Stats() = %+v, %v; want 1 process", s, err)
	}

	// Remove kills nothing: it names who is still there.
	err = g.Remove()
	t.Logf("Remove with a process inside: %v", err)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("removing cgroup %s: it still holds process %d (sleep), which must go first", rel, pid)) || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Remove with a process inside = %v, want an ErrConflict naming process %d (sleep)", err, pid)
	}
	if sleep.ProcessState != nil || syscall.Kill(pid, 0) != nil {
		t.Fatal("Remove killed the process")
	}
	sleep.Process.Kill()
	sleep.Wait()

	// pid 0 joins the caller: a child of the test binary joins itself.
	self := exec.Command(os.Args[0], "-test.run=^$")
	self.Env = append(os.Environ(), joinEnv+"="+rel)
	var stderr strings.Builder
	self.Stderr = &stderr
	out, err := self.Output()
	if err != nil {
		t.Fatalf("child joining itself: %v: %s", err, stderr.String())
	}
	checkInGroup(t, h.Version, string(out), rel)

	// Removing right after the last process was reaped: the kernel may
	// still find the group busy for a moment.
	start := time.Now()
	if err := g.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	t.Logf("Remove took %v", time.Since(start))
	for _, p := range g.Paths() {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after Remove (%v)", p, err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Errorf("Remove of a removed group: %v", err)
	}
	for _, r := range h.roots() {
		if err := removeDir(filepath.Join(r, parent)); err != nil {
			t.Errorf("removing the parent: %v", err)
		}
	}
}

// A limit the kernel refuses fails Create after it made the directories:
// it removes what it made, and only that.
func TestRealCreateUndoes(t *testing.T) {
	h := realHierarchy(t)
	parent := testParent(t, h.roots())
	// pids.max takes at most PID_MAX_LIMIT (4M); Create leaves the bound
	// to the kernel.
	refused := Limits{MemoryBytes: 64 << 20, Pids: 1 << 40}

	if _, err := h.Create(parent, "vm", refused); err == nil || !strings.Contains(err.Error(), "setting pids.max to \"1099511627776\"") {
		t.Errorf("Create = %v, want it to fail setting pids.max", err)
	}
	for _, r := range h.roots() {
		if _, err := os.Stat(filepath.Join(r, parent)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Create left %s behind (%v)", filepath.Join(r, parent), err)
		}
	}

	good := Limits{MemoryBytes: 64 << 20, Pids: 10}
	if _, err := h.Create(parent, "vm", good); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := h.Create(parent, "vm", refused); err == nil {
		t.Errorf("Create succeeded with pids.max %d", refused.Pids)
	}
	g, err := h.Open(parent, "vm")
	if err != nil {
		t.Fatalf("Create removed a group it did not make: %v", err)
	}
	if err := g.Remove(); err != nil {
		t.Error(err)
	}
}

// On a cgroup2 tree that does not have the controllers (this machine's
// /sys/fs/cgroup/unified, with them all on v1), Create says which file
// lacks them.
func TestRealV2WithoutControllers(t *testing.T) {
	realHierarchy(t)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := parseMountinfo(string(b))
	if err != nil {
		t.Fatal(err)
	}
	var dir string
	for _, m := range mounts {
		if have, err := readFields(filepath.Join(m.point, "cgroup.controllers")); m.fstype == "cgroup2" && err == nil && !slices.Contains(have, "memory") {
			dir = m.point
			break
		}
	}
	if dir == "" {
		t.Skip("no cgroup2 tree without the memory controller on this machine")
	}
	h := &Hierarchy{Version: 2, Unified: dir}
	parent := testParent(t, h.roots())
	_, err = h.Create(parent, "vm", Limits{MemoryBytes: 64 << 20})
	t.Logf("Create: %v", err)
	want := filepath.Join(dir, "cgroup.controllers") + " lacks memory"
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Create = %v, want an ErrUnavailable saying %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, parent)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create left %s behind (%v)", filepath.Join(dir, parent), err)
	}
}

// A process that outgrows the group's memory is OOM-killed, and Stats
// counts it.
func TestRealOOMKill(t *testing.T) {
	h := realHierarchy(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found, to allocate memory with: install python3")
	}
	parent := testParent(t, h.roots())
	g, err := h.Create(parent, "oom", Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
	})
	if !hasSwapLimit(g) && swapOn(t) {
		t.Skip("the kernel does not account swap (no memory.memsw / memory.swap.max) and swap is on: the child would swap, not die")
	}

	// The child waits for a line, so that it joins the group before it
	// allocates.
	child := exec.Command("sh", "-c", `read _ && exec "$0" -c 'x = bytearray(300 * 1024 * 1024)'`, python)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	child.Stderr = &stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	if err := g.Join(child.Process.Pid); err != nil {
		t.Fatalf("Join: %v", err)
	}
	fmt.Fprintln(stdin)
	stdin.Close()
	err = child.Wait()
	t.Logf("child: %v %s", err, stderr.String())
	if err == nil {
		t.Fatal("the child allocated 300 MiB in a group of 64 MiB")
	}
	if ws, ok := child.ProcessState.Sys().(syscall.WaitStatus); ok && !(ws.Signaled() && ws.Signal() == syscall.SIGKILL) && ws.ExitStatus() != 137 {
		t.Errorf("the child ended with %v, not killed", err)
	}
	s, err := g.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("Stats() = %+v", s)
	if s.OOMKills < 1 {
		t.Errorf("Stats().OOMKills = %d, want at least 1", s.OOMKills)
	}
	if s.MemoryPeak < 32<<20 || s.MemoryPeak > 64<<20 {
		t.Errorf("Stats().MemoryPeak = %d, want near the 64 MiB limit", s.MemoryPeak)
	}
	if s.Pids != 0 {
		t.Errorf("Stats().Pids = %d after the child was killed", s.Pids)
	}
}

// hasSwapLimit reports whether the group bounds swap too.
func hasSwapLimit(g *Group) bool {
	if g.version == 2 {
		return exists(filepath.Join(g.dirs["memory"], "memory.swap.max"))
	}
	return exists(filepath.Join(g.dirs["memory"], "memory.memsw.limit_in_bytes"))
}

// swapOn reports whether this machine has swap.
func swapOn(t *testing.T) bool {
	f, err := os.Open("/proc/swaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		lines++
	}
	return lines > 1
}

// TestRealMemoryUsedBy checks that only groups holding a process count,
// the excepted one not at all.
func TestRealMemoryUsedBy(t *testing.T) {
	h := realHierarchy(t)
	parent := testParent(t, h.roots())
	busy, err := h.Create(parent, "busy", Limits{MemoryBytes: 300 << 20})
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.Create(parent, "other", Limits{MemoryBytes: 200 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Create(parent, "idle", Limits{MemoryBytes: 100 << 20}); err != nil {
		t.Fatal(err)
	}
	s1, s2 := startSleep(t), startSleep(t)
	if err := busy.Join(s1.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := other.Join(s2.Process.Pid); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		except string
		want   int64
	}{{"", 500 << 20}, {"other", 300 << 20}, {"busy", 200 << 20}} {
		if got, err := h.MemoryUsedBy(parent, tt.except); err != nil || got != tt.want {
			t.Errorf("MemoryUsedBy(except %q) = %d, %v; want %d", tt.except, got, err, tt.want)
		}
	}
	if got, err := h.MemoryUsedBy(parent+"-absent", ""); err != nil || got != 0 {
		t.Errorf("MemoryUsedBy of an absent parent = %d, %v", got, err)
	}
}

// TestRealSweepEmpty: empty groups go, a group holding a process stays,
// and so does one younger than the minimum age.
func TestRealSweepEmpty(t *testing.T) {
	h := realHierarchy(t)
	parent := testParent(t, h.roots())
	if _, err := h.Create(parent, "left", Limits{MemoryBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	busy, err := h.Create(parent, "busy", Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := busy.Join(startSleep(t).Process.Pid); err != nil {
		t.Fatal(err)
	}
	if n := h.SweepEmpty(parent, time.Hour); n != 0 {
		t.Errorf("SweepEmpty with an hour's minimum age removed %d young groups", n)
	}
	if n := h.SweepEmpty(parent, 0); n != 1 {
		t.Errorf("SweepEmpty removed %d groups, want 1 (the empty one)", n)
	}
	if _, err := h.Open(parent, "left"); err == nil {
		t.Error("the empty group is still there")
	}
	if _, err := h.Open(parent, "busy"); err != nil {
		t.Errorf("the group holding a process was removed: %v", err)
	}
}
