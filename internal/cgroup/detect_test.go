package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/errdefs"
)

// Mount table lines of the hosts the tests fake.
const (
	procSys = `22 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
`
	// A pure cgroup v2 host, as systemd mounts it.
	pureV2 = procSys + `30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	// This machine (and CI): v1 controllers, each on its own, beside an
	// empty cgroup2 tree.
	v1Memory  = "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
	v1CPU     = "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
	v1Pids    = "38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
	v1Unified = "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
	v1Rest    = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
`
	thisMachine = procSys + v1Rest + v1CPU + v1Memory + v1Pids + v1Unified
	// A systemd hybrid host: cpu and cpuacct share a hierarchy whose
	// mount point has a comma, and mounts carry optional fields.
	hybrid = procSys + `25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 master:3 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
`
)

func TestDetectFrom(t *testing.T) {
	type files map[string]string // path under the fake root -> content
	all := "cpuset cpu io memory hugetlb pids rdma misc\n"
	tests := []struct {
		name      string
		mountinfo string
		files     files
		want      func(root string) *Hierarchy
		wantErr   []string // substrings of the error; nil for success
		wantIs    error    // the error also wraps this
	}{
		{
			name:      "pure v2 with controllers",
			mountinfo: pureV2,
			files:     files{"sys/fs/cgroup/cgroup.controllers": all},
			want: func(root string) *Hierarchy {
				return &Hierarchy{Version: 2, Unified: filepath.Join(root, "sys/fs/cgroup")}
			},
		},
		{
			name:      "v1 controllers beside an empty unified tree (this machine)",
			mountinfo: thisMachine,
			files:     files{"sys/fs/cgroup/unified/cgroup.controllers": ""},
			want: func(root string) *Hierarchy {
				return &Hierarchy{Version: 1, Mounts: map[string]string{
					"memory": filepath.Join(root, "sys/fs/cgroup/memory"),
					"cpu":    filepath.Join(root, "sys/fs/cgroup/cpu"),
					"pids":   filepath.Join(root, "sys/fs/cgroup/pids"),
				}}
			},
		},
		{
			name:      "systemd hybrid with cpu,cpuacct together",
			mountinfo: hybrid,
			files:     files{"sys/fs/cgroup/unified/cgroup.controllers": ""},
			want: func(root string) *Hierarchy {
				return &Hierarchy{Version: 1, Mounts: map[string]string{
					"memory": filepath.Join(root, "sys/fs/cgroup/memory"),
					"cpu":    filepath.Join(root, "sys/fs/cgroup/cpu,cpuacct"),
					"pids":   filepath.Join(root, "sys/fs/cgroup/pids"),
				}}
			},
		},
		{
			name:      "v2 preferred when it has the controllers",
			mountinfo: thisMachine,
			files:     files{"sys/fs/cgroup/unified/cgroup.controllers": "memory pids cpu\n"},
			want: func(root string) *Hierarchy {
				return &Hierarchy{Version: 2, Unified: filepath.Join(root, "sys/fs/cgroup/unified")}
			},
		},
		{
			name:      "escaped mount point",
			mountinfo: procSys + `30 22 0:26 / /run/my\040cgroup rw - cgroup2 none rw` + "\n",
			files:     files{"run/my cgroup/cgroup.controllers": all},
			want: func(root string) *Hierarchy {
				return &Hierarchy{Version: 2, Unified: filepath.Join(root, "run/my cgroup")}
			},
		},
		{
			name:      "v1 missing pids",
			mountinfo: procSys + v1Rest + v1CPU + v1Memory + v1Unified,
			files:     files{"sys/fs/cgroup/unified/cgroup.controllers": ""},
			wantErr: []string{
				"no cgroup hierarchy has all of memory, cpu and pids",
				"cgroup v1 lacks pids: mount the pids controller (mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids)",
				"sys/fs/cgroup/unified lacks memory, cpu and pids in its cgroup.controllers",
				"enable them in the cgroup.subtree_control",
			},
		},
		{
			name:      "v1 with memory alone",
			mountinfo: procSys + v1Memory,
			wantErr:   []string{"mount the cpu and pids controllers (mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu; mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids)"},
		},
		{
			name:      "v2 without pids delegated",
			mountinfo: pureV2,
			files:     files{"sys/fs/cgroup/cgroup.controllers": "cpu memory\n"},
			wantErr:   []string{"lacks pids in its cgroup.controllers", "enable them in the cgroup.subtree_control"},
		},
		{
			name:      "v2 controllers file unreadable",
			mountinfo: pureV2,
			wantErr:   []string{"reading the controllers of cgroup2 at", "no such file"},
			wantIs:    fs.ErrNotExist,
		},
		{
			name:      "nothing mounted",
			mountinfo: procSys,
			wantErr:   []string{"no cgroup filesystem is mounted: mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup)"},
		},
		{
			name:      "empty mount table",
			mountinfo: "",
			wantErr:   []string{"no cgroup filesystem is mounted"},
		},
		{
			name:      "malformed mount table",
			mountinfo: procSys + "30 22 0:26 / /sys/fs/cgroup rw cgroup2\n",
			wantErr:   []string{"reading the mount table: parsing line 3", "/proc/self/mountinfo"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, content := range tt.files {
				p = filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			h, err := DetectFrom(tt.mountinfo, root)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("DetectFrom: %v", err)
				}
				if want := tt.want(root); !reflect.DeepEqual(h, want) {
					t.Errorf("DetectFrom = %+v, want %+v", h, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("DetectFrom = %+v, want an error", h)
			}
			t.Logf("error: %v", err)
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if !errors.Is(err, errdefs.ErrUnavailable) {
				t.Errorf("error %q is not errdefs.ErrUnavailable", err)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q does not wrap %v", err, tt.wantIs)
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	ms, err := parseMountinfo(`40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 30 0:38 / - rw shared:1 master:2 - cgroup cgroup rw,pids
42 30 0:39 / /a\134b\011c rw - tmpfs  rw`)
	if err != nil {
		t.Fatal(err)
	}
	want := []mount{
		{point: "/sys/fs/cgroup/unified", fstype: "cgroup2", options: []string{"rw"}},
		{point: "-", fstype: "cgroup", options: []string{"rw", "pids"}},
		{point: "/a\\b\tc", fstype: "tmpfs", options: []string{"rw"}},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Errorf("parseMountinfo = %+v, want %+v", ms, want)
	}
}
