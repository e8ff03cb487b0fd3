package main

import (
	"encoding/json"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/options"
)

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

func TestVMConfig(t *testing.T) {
	t.Setenv(kernelEnv, "")
	s := &specs.Spec{
		Process: &specs.Process{
			Args:    []string{"/bin/prog", "-x", "y"},
			Env:     []string{"PATH=/bin", "A=b"},
			Cwd:     "/work",
			User:    specs.User{UID: 1000, GID: 100},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 4096}},
		},
		Linux: &specs.Linux{Resources: &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: i64(100<<20 + 1)},
			CPU:    &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)},
		}},
		Annotations: map[string]string{kernelAnnotation: "/k/vmlinux"},
	}
	got, err := vmConfig(s, "default-t1", "/b/rootfs")
	if err != nil {
		t.Fatal(err)
	}
	want := api.VMConfig{
		Name: "default-t1", RootDir: "/b/rootfs", Network: "none", Restart: api.RestartPolicy{Name: "no"},
		Entrypoint: []string{"/bin/prog"}, Cmd: []string{"-x", "y"},
		Env: []string{"PATH=/bin", "A=b"}, WorkingDir: "/work", User: "1000:100",
		Ulimits:   []api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
		MemoryMiB: 101, CPUs: 2, Kernel: "/k/vmlinux",
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("vmConfig:\n got %s\nwant %s", gb, wb)
	}
}

func TestVMConfigDefaults(t *testing.T) {
	t.Setenv(kernelEnv, "/env/vmlinux")
	got, err := vmConfig(&specs.Spec{Process: &specs.Process{Args: []string{"/p"}}}, "n", "/r")
	if err != nil {
		t.Fatal(err)
	}
	if got.Cmd != nil || got.MemoryMiB != 0 || got.CPUs != 0 || got.User != "0:0" || got.Kernel != "/env/vmlinux" {
		t.Errorf("vmConfig of a bare spec = %+v: want no Cmd, default memory and CPUs, user 0:0, the kernel of $%s", got, kernelEnv)
	}
}

func TestVMConfigNetwork(t *testing.T) {
	for _, tc := range []struct {
		ns   []specs.LinuxNamespace
		want string
	}{
		{nil, "none"},
		{[]specs.LinuxNamespace{{Type: specs.NetworkNamespace}}, "none"},
		{[]specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}, {Type: specs.NetworkNamespace, Path: "/run/netns/pod1"}}, "ns:/run/netns/pod1"},
	} {
		got, err := vmConfig(&specs.Spec{Process: &specs.Process{Args: []string{"/p"}}, Linux: &specs.Linux{Namespaces: tc.ns}}, "n", "/r")
		if err != nil {
			t.Fatal(err)
		}
		if got.Network != tc.want {
			t.Errorf("namespaces %+v: network %q, want %q", tc.ns, got.Network, tc.want)
		}
	}
}

func TestVMConfigRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec specs.Spec
		want []string
	}{
		{"no args", specs.Spec{Process: &specs.Process{}}, []string{"process.args"}},
		{"no process", specs.Spec{}, []string{"process.args"}},
		{"terminal", specs.Spec{Process: &specs.Process{Args: []string{"/p"}, Terminal: true}}, []string{"process.terminal", "tty"}},
		{"small memory", specs.Spec{Process: &specs.Process{Args: []string{"/p"}}, Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 << 20)}}}},
			[]string{"33554432", "32 MiB", "64 MiB"}},
		{"rlimit", specs.Spec{Process: &specs.Process{Args: []string{"/p"}, Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_BOGUS", Soft: 1, Hard: 1}}}},
			[]string{"RLIMIT_BOGUS", "RLIMIT_NOFILE"}},
		{"rlimit order", specs.Spec{Process: &specs.Process{Args: []string{"/p"}, Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 9, Hard: 1}}}},
			[]string{"RLIMIT_NOFILE", "soft limit 9", "hard limit 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vmConfig(&tc.spec, "n", "/r")
			if err == nil {
				t.Fatalf("got no error, want one mentioning %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestVMName(t *testing.T) {
	long := strings.Repeat("a", 80)
	for _, tc := range []struct{ ns, id, want string }{
		{"default", "id1", "default-id1"},
		{"k8s.io", "abc_def", "k8s.io-abc_def"},
	} {
		if got := vmName(tc.ns, tc.id); got != tc.want {
			t.Errorf("vmName(%q, %q) = %q, want %q", tc.ns, tc.id, got, tc.want)
		}
	}
	seen := map[string]string{}
	for _, c := range [][2]string{{"default", "a/b"}, {"default", "a:b"}, {"default", long}, {"default", long + "b"}, {"_x", "y"}, {"default", "a b"}} {
		got := vmName(c[0], c[1])
		if err := options.ValidateName("VM", got); err != nil {
			t.Errorf("vmName(%q, %q) = %q: %v", c[0], c[1], got, err)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("vmName(%q, %q) = %q, as for %s", c[0], c[1], got, prev)
		}
		seen[got] = c[0] + "/" + c[1]
	}
}

func TestExecConfig(t *testing.T) {
	b, _ := json.Marshal(specs.Process{Args: []string{"/p", "x"}, Env: []string{"A=1"}, Cwd: "/w", User: specs.User{UID: 5, GID: 6},
		ConsoleSize: &specs.Box{Height: 24, Width: 80}})
	got, err := execConfig(b, true, true)
	if err != nil {
		t.Fatal(err)
	}
	want := api.ExecConfig{Cmd: []string{"/p", "x"}, Env: []string{"A=1"}, WorkingDir: "/w", User: "5:6", Tty: true, Stdin: true, Rows: 24, Cols: 80}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("execConfig:\n got %s\nwant %s", gb, wb)
	}
	if _, err := execConfig([]byte(`{}`), false, false); err == nil || !strings.Contains(err.Error(), "no args") {
		t.Errorf("execConfig of no args: %v, want an error naming the missing args", err)
	}
}

func TestSocketPath(t *testing.T) {
	if got, want := socketPath("/r"), daemon.SocketPath("/r"); got != want {
		t.Errorf("socketPath = %q, daemon.SocketPath = %q", got, want)
	}
}
