package cgroup

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

// These tests fake cgroup directories with regular files: they check what
// Create writes and how Limits and Stats read, on both versions, whichever
// version this machine has. The tests in real_test.go check the kernel
// takes it.

// writeFiles makes each file (path under root -> content).
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// checkFiles fails unless each file (path under root) holds its content.
func checkFiles(t *testing.T, root string, want map[string]string) {
	t.Helper()
	for p, w := range want {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Error(err)
		} else if string(b) != w {
			t.Errorf("%s holds %q, want %q", p, b, w)
		}
	}
}

// fakeV1 is a v1 hierarchy under root with the controllers on their own
// mounts, as on this machine.
func fakeV1(root string) *Hierarchy {
	return &Hierarchy{Version: 1, Mounts: map[string]string{
		"memory": filepath.Join(root, "memory"),
		"cpu":    filepath.Join(root, "cpu"),
		"pids":   filepath.Join(root, "pids"),
	}}
}

func TestCreateV2Writes(t *testing.T) {
	root := t.TempDir()
	// An existing group under an existing parent, with the root not yet
	// passing memory and pids down.
	writeFiles(t, root, map[string]string{
		"cgroup.controllers":          "cpuset cpu io memory hugetlb pids\n",
		"cgroup.subtree_control":      "cpu\n",
		"kiln/cgroup.controllers":     "cpu memory pids\n",
		"kiln/cgroup.subtree_control": "cpu memory pids\n",
		"kiln/vm/memory.max":          "max\n",
		"kiln/vm/memory.swap.max":     "max\n",
		"kiln/vm/cpu.max":             "max 100000\n",
		"kiln/vm/pids.max":            "max\n",
	})
	h := &Hierarchy{Version: 2, Unified: root}
	steps := []struct {
		name   string
		limits Limits
		files  map[string]string
	}{
		{"limited", Limits{MemoryBytes: 256 << 20, CPUs: 0.5, Pids: 64}, map[string]string{
			"cgroup.subtree_control":  "+memory +pids",
			"kiln/vm/memory.max":      "268435456",
			"kiln/vm/memory.swap.max": "0",
			"kiln/vm/cpu.max":         "50000 100000",
			"kiln/vm/pids.max":        "64",
		}},
		{"unlimited", Limits{}, map[string]string{
			"kiln/vm/memory.max":      "max",
			"kiln/vm/memory.swap.max": "max",
			"kiln/vm/cpu.max":         "max 100000",
			"kiln/vm/pids.max":        "max",
		}},
		{"fractional CPUs", Limits{CPUs: 2.25}, map[string]string{
			"kiln/vm/cpu.max": "225000 100000",
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			g, err := h.Create("kiln", "vm", s.limits)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if g.Version() != 2 || !reflect.DeepEqual(g.Paths(), []string{filepath.Join(root, "kiln/vm")}) {
				t.Errorf("Create gave version %d paths %q", g.Version(), g.Paths())
			}
			checkFiles(t, root, s.files)
			if got, err := g.Limits(); err != nil || got != s.limits {
				t.Errorf("Limits() = %+v, %v; want %+v", got, err, s.limits)
			}
		})
	}
}

func TestCreateV1Writes(t *testing.T) {
	root := t.TempDir()
	unlimited := "9223372036854771712\n"
	writeFiles(t, root, map[string]string{
		"memory/kiln/vm/memory.limit_in_bytes":       unlimited,
		"memory/kiln/vm/memory.memsw.limit_in_bytes": unlimited,
		"cpu/kiln/vm/cpu.cfs_period_us":              "100000\n",
		"cpu/kiln/vm/cpu.cfs_quota_us":               "-1\n",
		"pids/kiln/vm/pids.max":                      "max\n",
	})
	h := fakeV1(root)
	g, err := h.Create("kiln", "vm", Limits{MemoryBytes: 256 << 20, CPUs: 0.5, Pids: 64})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := []string{filepath.Join(root, "cpu/kiln/vm"), filepath.Join(root, "memory/kiln/vm"), filepath.Join(root, "pids/kiln/vm")}
	if g.Version() != 1 || !reflect.DeepEqual(g.Paths(), want) {
		t.Errorf("Create gave version %d paths %q, want 1 %q", g.Version(), g.Paths(), want)
	}
	checkFiles(t, root, map[string]string{
		"memory/kiln/vm/memory.limit_in_bytes":       "268435456",
		"memory/kiln/vm/memory.memsw.limit_in_bytes": "268435456",
		"cpu/kiln/vm/cpu.cfs_period_us":              "100000",
		"cpu/kiln/vm/cpu.cfs_quota_us":               "50000",
		"pids/kiln/vm/pids.max":                      "64",
	})

	// cpu and cpuacct mounted together: one path for both.
	h.Mounts["cpu"] = h.Mounts["memory"]
	writeFiles(t, root, map[string]string{
		"memory/kiln/vm/cpu.cfs_period_us": "100000\n",
		"memory/kiln/vm/cpu.cfs_quota_us":  "-1\n",
	})
	g, err = h.Create("kiln", "vm", Limits{})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if want := want[1:]; !reflect.DeepEqual(g.Paths(), want) {
		t.Errorf("Paths() = %q, want %q", g.Paths(), want)
	}
	checkFiles(t, root, map[string]string{
		"memory/kiln/vm/memory.limit_in_bytes":       "-1",
		"memory/kiln/vm/memory.memsw.limit_in_bytes": "-1",
		"memory/kiln/vm/cpu.cfs_quota_us":            "-1",
		"pids/kiln/vm/pids.max":                      "max",
	})
}

func TestCreateUndoes(t *testing.T) {
	t.Run("v2 new parent without control files", func(t *testing.T) {
		root := t.TempDir()
		writeFiles(t, root, map[string]string{
			"cgroup.controllers":     "cpu memory pids\n",
			"cgroup.subtree_control": "cpu memory pids\n",
		})
		h := &Hierarchy{Version: 2, Unified: root}
		_, err := h.Create("kiln/a", "vm", Limits{Pids: 10})
		if err == nil || !strings.Contains(err.Error(), "creating cgroup kiln/a/vm: reading the controllers passed down") {
			t.Errorf("Create = %v, want it to fail reading kiln's cgroup.subtree_control", err)
		}
		if _, err := os.Stat(filepath.Join(root, "kiln")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Create left %s behind (%v)", filepath.Join(root, "kiln"), err)
		}
	})
	t.Run("v1 new group without control files", func(t *testing.T) {
		root := t.TempDir()
		writeFiles(t, root, map[string]string{"memory/kiln/other/x": "", "cpu/.keep": "", "pids/.keep": ""})
		h := fakeV1(root)
		_, err := h.Create("kiln", "vm", Limits{MemoryBytes: 64 << 20})
		if err == nil || !strings.Contains(err.Error(), "setting the limits of cgroup kiln/vm: setting memory.limit_in_bytes") {
			t.Errorf("Create = %v, want it to fail setting memory.limit_in_bytes", err)
		}
		// memory/kiln held another group before: it stays.
		for _, p := range []string{"memory/kiln/vm", "cpu/kiln", "pids/kiln"} {
			if _, err := os.Stat(filepath.Join(root, p)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Create left %s behind (%v)", p, err)
			}
		}
		if _, err := os.Stat(filepath.Join(root, "memory/kiln/other")); err != nil {
			t.Errorf("Create removed what it did not make: %v", err)
		}
	})
	t.Run("v1 existing group is kept", func(t *testing.T) {
		root := t.TempDir()
		writeFiles(t, root, map[string]string{"memory/kiln/vm/x": "", "cpu/kiln/vm/x": "", "pids/kiln/vm/x": ""})
		if _, err := fakeV1(root).Create("kiln", "vm", Limits{MemoryBytes: 64 << 20}); err == nil {
			t.Fatal("Create succeeded without control files")
		}
		for _, p := range []string{"memory/kiln/vm", "cpu/kiln/vm", "pids/kiln/vm"} {
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("Create removed an existing group: %v", err)
			}
		}
	})
}

func TestCreateV2NotDelegated(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cgroup.controllers":     "cpu memory\n",
		"cgroup.subtree_control": "\n",
	})
	h := &Hierarchy{Version: 2, Unified: root}
	_, err := h.Create("kiln", "vm", Limits{})
	want := filepath.Join(root, "cgroup.controllers") + " lacks pids: enable them in the cgroup.subtree_control of the cgroup above"
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Create = %v, want an ErrUnavailable saying %q", err, want)
	}
	checkFiles(t, root, map[string]string{"cgroup.subtree_control": "\n"})
	if _, err := os.Stat(filepath.Join(root, "kiln")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create left kiln behind (%v)", err)
	}
}

func TestCreateRejects(t *testing.T) {
	tests := []struct {
		name, parent, group string
		limits              Limits
		want                string
	}{
		{"empty name", "kiln", "", Limits{}, `cgroup name "" is not a single path element`},
		{"dot name", "kiln", ".", Limits{}, "not a single path element"},
		{"dot-dot name", "kiln", "..", Limits{}, "not a single path element"},
		{"name with slash", "kiln", "a/b", Limits{}, "not a single path element"},
		{"absolute parent", "/kiln", "vm", Limits{}, `cgroup parent "/kiln" is not a clean path inside the hierarchy`},
		{"escaping parent", "../kiln", "vm", Limits{}, "not a clean path"},
		{"unclean parent", "kiln//a", "vm", Limits{}, "not a clean path"},
		{"negative memory", "kiln", "vm", Limits{MemoryBytes: -1}, "memory limit -1 is negative"},
		{"tiny memory", "kiln", "vm", Limits{MemoryBytes: 4096}, "memory limit 4096 bytes is below the 1 MiB minimum"},
		{"negative CPUs", "kiln", "vm", Limits{CPUs: -1}, "CPU limit -1 is not a positive number of cores"},
		{"NaN CPUs", "kiln", "vm", Limits{CPUs: math.NaN()}, "not a positive number of cores"},
		{"tiny CPUs", "kiln", "vm", Limits{CPUs: 0.001}, "below the kernel's minimum of 0.01 cores"},
		{"huge CPUs", "kiln", "vm", Limits{CPUs: 1e300}, "too large"},
		{"negative pids", "kiln", "vm", Limits{Pids: -5}, "process limit -5 is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			_, err := fakeV1(root).Create(tt.parent, tt.group, tt.limits)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Create = %v, want an ErrInvalidArgument saying %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(root); len(entries) > 0 {
				t.Errorf("Create made %s before rejecting", entries[0].Name())
			}
		})
	}
}

func TestOpen(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"memory/kiln/vm/x": "", "cpu/kiln/vm/x": "", "pids/kiln/vm/x": "", "memory/kiln/half/x": ""})
	h := fakeV1(root)
	g, err := h.Open("kiln", "vm")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if len(g.Paths()) != 3 {
		t.Errorf("Paths() = %q", g.Paths())
	}
	for _, name := range []string{"absent", "half"} {
		if _, err := h.Open("kiln", name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%q) = %v, want fs.ErrNotExist", name, err)
		}
	}
	if _, err := h.Open("kiln", "../x"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Open of a bad name = %v, want ErrInvalidArgument", err)
	}
}

func TestReadBack(t *testing.T) {
	tests := []struct {
		name       string
		version    int
		files      map[string]string // under memory/, cpu/, pids/ for v1; under the group for v2
		wantLimits Limits
		wantStats  Stats
		wantErr    string
	}{
		{
			name:    "v1 unlimited",
			version: 1,
			files: map[string]string{
				"memory/memory.limit_in_bytes":     "9223372036854771712\n",
				"memory/memory.usage_in_bytes":     "1234\n",
				"memory/memory.max_usage_in_bytes": "5678\n",
				"memory/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
				"memory/memory.failcnt":            "99\n",
				"cpu/cpu.cfs_quota_us":             "-1\n",
				"cpu/cpu.cfs_period_us":            "100000\n",
				"pids/pids.max":                    "max\n",
				"pids/pids.current":                "2\n",
			},
			wantStats: Stats{MemoryBytes: 1234, MemoryPeak: 5678, OOMKills: 3, Pids: 2},
		},
		{
			name:    "v1 limited, before Linux 4.13",
			version: 1,
			files: map[string]string{
				"memory/memory.limit_in_bytes":     "67108864\n",
				"memory/memory.usage_in_bytes":     "1234\n",
				"memory/memory.max_usage_in_bytes": "67108864\n",
				"memory/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\n",
				"memory/memory.failcnt":            "0\n",
				"memory/memory.memsw.failcnt":      "9\n",
				"cpu/cpu.cfs_quota_us":             "150000\n",
				"cpu/cpu.cfs_period_us":            "50000\n",
				"pids/pids.max":                    "64\n",
				"pids/pids.current":                "0\n",
			},
			wantLimits: Limits{MemoryBytes: 64 << 20, CPUs: 3, Pids: 64},
			wantStats:  Stats{MemoryBytes: 1234, MemoryPeak: 64 << 20, OOMKills: 9},
		},
		{
			name:    "v2 limited",
			version: 2,
			files: map[string]string{
				"memory.max":     "268435456\n",
				"memory.current": "4096\n",
				"memory.peak":    "8192\n",
				"memory.events":  "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
				"cpu.max":        "50000 100000\n",
				"pids.max":       "64\n",
				"pids.current":   "5\n",
			},
			wantLimits: Limits{MemoryBytes: 256 << 20, CPUs: 0.5, Pids: 64},
			wantStats:  Stats{MemoryBytes: 4096, MemoryPeak: 8192, OOMKills: 1, Pids: 5},
		},
		{
			name:    "v2 unlimited, before Linux 5.19",
			version: 2,
			files: map[string]string{
				"memory.max":     "max\n",
				"memory.current": "4096\n",
				"memory.events":  "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
				"cpu.max":        "max 100000\n",
				"pids.max":       "max\n",
				"pids.current":   "1\n",
			},
			wantStats: Stats{MemoryBytes: 4096, Pids: 1},
		},
		{
			name:    "v2 garbled cpu.max",
			version: 2,
			files:   map[string]string{"memory.max": "max\n", "cpu.max": "max\n"},
			wantErr: `reading the limits of cgroup kiln/vm: cpu.max holds "max", not QUOTA PERIOD`,
		},
		{
			name:    "v1 garbled limit",
			version: 1,
			files:   map[string]string{"memory/memory.limit_in_bytes": "lots\n"},
			wantErr: "reading the limits of cgroup kiln/vm: parsing",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			var g *Group
			if tt.version == 2 {
				writeFiles(t, filepath.Join(root, "kiln/vm"), tt.files)
				g = (&Hierarchy{Version: 2, Unified: root}).group("kiln", "vm")
			} else {
				for p, content := range tt.files {
					c, file, _ := strings.Cut(p, "/")
					writeFiles(t, root, map[string]string{filepath.Join(c, "kiln/vm", file): content})
				}
				g = fakeV1(root).group("kiln", "vm")
			}
			l, err := g.Limits()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Limits() = %+v, %v; want an error saying %q", l, err, tt.wantErr)
				}
				return
			}
			if err != nil || l != tt.wantLimits {
				t.Errorf("Limits() = %+v, %v; want %+v", l, err, tt.wantLimits)
			}
			if s, err := g.Stats(); err != nil || s != tt.wantStats {
				t.Errorf("Stats() = %+v, %v; want %+v", s, err, tt.wantStats)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"memory/kiln/vm/x", "memory/kiln/vm/y", "cpu/kiln/vm", "pids/kiln/vm"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g := fakeV1(root).group("kiln", "vm")
	err := g.Remove()
	want := "removing cgroup kiln/vm: it still holds child cgroups x, y, which must go first"
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Remove = %v, want an ErrConflict saying %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(root, "cpu/kiln/vm")); err != nil {
		t.Errorf("Remove removed part of a busy group: %v", err)
	}
	for _, c := range []string{"x", "y"} {
		if err := os.Remove(filepath.Join(root, "memory/kiln/vm", c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, p := range g.Paths() {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after Remove (%v)", p, err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Errorf("Remove of a group already gone: %v", err)
	}
}
