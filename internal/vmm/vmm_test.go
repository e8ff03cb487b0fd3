package vmm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{
		ID:        "abc",
		Dir:       "/run/kiln/vms/abc",
		Kernel:    "/k/vmlinux",
		MemoryMiB: 128,
		CPUs:      1,
		Accel:     AccelTCG,
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string // "" means valid
	}{
		{"valid", func(c *Config) {}, ""},
		{"valid kvm with ports", func(c *Config) {
			c.Accel = AccelKVM
			c.Ports = []Port{{Name: "out", File: "/x/out"}, {Name: "ctl", Socket: "/x/ctl.sock"}}
		}, ""},
		{"no ID", func(c *Config) { c.ID = "" }, "no ID"},
		{"no dir", func(c *Config) { c.Dir = "" }, "state directory"},
		{"no kernel", func(c *Config) { c.Kernel = "" }, "kernel"},
		{"zero memory", func(c *Config) { c.MemoryMiB = 0 }, "memory 0"},
		{"negative memory", func(c *Config) { c.MemoryMiB = -1 }, "memory -1"},
		{"zero cpus", func(c *Config) { c.CPUs = 0 }, "0 CPUs"},
		{"negative cpus", func(c *Config) { c.CPUs = -2 }, "-2 CPUs"},
		{"accel auto", func(c *Config) { c.Accel = AccelAuto }, `"auto"`},
		{"accel empty", func(c *Config) { c.Accel = "" }, `""`},
		{"accel bogus", func(c *Config) { c.Accel = "hvf" }, `"hvf"`},
		{"port with both", func(c *Config) {
			c.Ports = []Port{{Name: "both", File: "/x/f", Socket: "/x/s"}}
		}, `"both"`},
		{"port with neither", func(c *Config) {
			c.Ports = []Port{{Name: "ok", File: "/x/f"}, {Name: "neither"}}
		}, `"neither"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseAccel(t *testing.T) {
	tests := []struct {
		in      string
		want    Accel
		wantErr bool
	}{
		{"", AccelAuto, false},
		{"auto", AccelAuto, false},
		{"kvm", AccelKVM, false},
		{"tcg", AccelTCG, false},
		{"KVM", "", true},
		{"hvf", "", true},
		{" kvm", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAccel(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseAccel(%q) = %q, nil; want error", tt.in, got)
				}
				if !strings.Contains(err.Error(), `"`+tt.in+`"`) {
					t.Errorf("error %q does not name the bad value %q", err, tt.in)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAccel(%q) = %q, %v; want %q, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

// fakeHost is a Host over a set of existing paths and open errors.
func fakeHost(exists []string, openErr error) Host {
	set := map[string]bool{}
	for _, p := range exists {
		set[p] = true
	}
	return Host{
		Exists: func(p string) bool { return set[p] },
		OpenRW: func(p string) error {
			if !set[p] {
				return fs.ErrNotExist
			}
			return openErr
		},
	}
}

func TestChooseAccel(t *testing.T) {
	// Each combination a host can present: with or without /dev/kvm, with
	// each module that can back it, openable or not.
	var (
		intel      = []string{"/dev/kvm", "/sys/module/kvm", "/sys/module/kvm_intel"}
		amd        = []string{"/dev/kvm", "/sys/module/kvm", "/sys/module/kvm_amd"}
		pvm        = []string{"/dev/kvm", "/sys/module/kvm", "/sys/module/kvm_pvm"}
		unknown    = []string{"/dev/kvm", "/sys/module/kvm"}
		intelNoDev = []string{"/sys/module/kvm", "/sys/module/kvm_intel"}
		pvmNoDev   = []string{"/sys/module/kvm", "/sys/module/kvm_pvm"}
		bare       = []string{}
	)
	tests := []struct {
		name      string
		exists    []string
		openErr   error
		requested Accel
		want      Accel
		warning   string   // substring the warning must contain; "" means no warning
		reason    []string // substrings the reason must contain
		wantErr   error    // for errors.Is; errAny means any error
	}{
		{name: "auto, no /dev/kvm, no module", exists: bare, requested: AccelAuto, want: AccelTCG,
			warning: "/dev/kvm does not exist", reason: []string{"no KVM module is loaded", "modprobe"}},
		{name: "empty, no /dev/kvm, no module", exists: bare, requested: "", want: AccelTCG, warning: "TCG"},
		{name: "auto, no /dev/kvm, kvm_intel loaded", exists: intelNoDev, requested: AccelAuto, want: AccelTCG,
			warning: "/dev/kvm does not exist", reason: []string{"kvm_intel is loaded", "mknod"}},
		{name: "auto, no /dev/kvm, kvm_pvm loaded", exists: pvmNoDev, requested: AccelAuto, want: AccelTCG,
			warning: "/dev/kvm does not exist", reason: []string{"/dev/kvm does not exist", "kvm_pvm is loaded", "PVM-patched"}},
		{name: "auto, /dev/kvm not openable", exists: intel, openErr: fs.ErrPermission, requested: AccelAuto, want: AccelTCG,
			warning: "cannot be opened", reason: []string{"kvm group"}},
		{name: "auto, PVM /dev/kvm not openable", exists: pvm, openErr: fs.ErrPermission, requested: AccelAuto, want: AccelTCG,
			warning: "cannot be opened"},
		{name: "auto on PVM /dev/kvm", exists: pvm, requested: AccelAuto, want: AccelTCG,
			warning: "PVM", reason: []string{"kvm_pvm", "stock guest kernel"}},
		{name: "auto, KVM of unknown kind", exists: unknown, requested: AccelAuto, want: AccelTCG, warning: "kvm_intel or kvm_amd"},
		{name: "auto on kvm_intel", exists: intel, requested: AccelAuto, want: AccelKVM, reason: []string{"kvm_intel"}},
		{name: "empty on kvm_amd", exists: amd, requested: "", want: AccelKVM, reason: []string{"kvm_amd"}},
		{name: "explicit tcg on KVM host", exists: intel, requested: AccelTCG, want: AccelTCG},
		{name: "explicit tcg without KVM", exists: bare, requested: AccelTCG, want: AccelTCG},
		{name: "explicit kvm on kvm_intel", exists: intel, requested: AccelKVM, want: AccelKVM},
		{name: "explicit kvm on PVM", exists: pvm, requested: AccelKVM, want: AccelKVM, warning: "PVM"},
		{name: "explicit kvm, KVM of unknown kind", exists: unknown, requested: AccelKVM, want: AccelKVM},
		{name: "explicit kvm without /dev/kvm", exists: bare, requested: AccelKVM, wantErr: errAny},
		{name: "explicit kvm, kvm_pvm loaded, no /dev/kvm", exists: pvmNoDev, requested: AccelKVM, wantErr: errAny},
		{name: "explicit kvm, /dev/kvm not openable", exists: intel, openErr: fs.ErrPermission, requested: AccelKVM, wantErr: fs.ErrPermission},
		{name: "bogus", exists: intel, requested: "hvf", wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := fakeHost(tt.exists, tt.openErr).ChooseAccel(tt.requested)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ChooseAccel(%q) = %+v, nil; want error", tt.requested, got)
				}
				if tt.wantErr != errAny && !errors.Is(err, tt.wantErr) {
					t.Errorf("ChooseAccel(%q) error %v: want errors.Is %v", tt.requested, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ChooseAccel(%q): %v", tt.requested, err)
			}
			if got.Accel != tt.want {
				t.Errorf("Accel = %q, want %q (reason %q)", got.Accel, tt.want, got.Reason)
			}
			if got.Reason == "" {
				t.Error("Reason is empty")
			}
			for _, s := range tt.reason {
				if !strings.Contains(got.Reason, s) {
					t.Errorf("Reason = %q, want it to contain %q", got.Reason, s)
				}
			}
			switch {
			case tt.warning == "" && got.Warning != "":
				t.Errorf("Warning = %q, want none", got.Warning)
			case tt.warning != "" && !strings.Contains(got.Warning, tt.warning):
				t.Errorf("Warning = %q, want it to contain %q", got.Warning, tt.warning)
			}
		})
	}
}

// TestProbeReadsOnlyItsPaths checks that Probe asks the host about /dev/kvm
// and the KVM modules and nothing else, and opens /dev/kvm only when it
// exists.
func TestProbeReadsOnlyItsPaths(t *testing.T) {
	var asked, opened []string
	h := Host{
		Exists: func(p string) bool { asked = append(asked, p); return p == "/sys/module/kvm_pvm" },
		OpenRW: func(p string) error { opened = append(opened, p); return nil },
	}
	p := h.Probe()
	if p.Dev || len(opened) != 0 {
		t.Errorf("Probe of a host without /dev/kvm: Dev=%v, opened %v", p.Dev, opened)
	}
	if len(p.Modules) != 1 || p.Modules[0] != "kvm_pvm" {
		t.Errorf("Modules = %v, want [kvm_pvm]", p.Modules)
	}
	want := "/dev/kvm /sys/module/kvm_intel /sys/module/kvm_amd /sys/module/kvm_pvm"
	if got := strings.Join(asked, " "); got != want {
		t.Errorf("Probe asked about %q, want %q", got, want)
	}
}

var errAny = errors.New("any error")

func TestRealHost(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "dev")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !RealHost.Exists(f) {
		t.Errorf("Exists(%s) = false for an existing file", f)
	}
	missing := filepath.Join(dir, "missing")
	if RealHost.Exists(missing) {
		t.Errorf("Exists(%s) = true for a missing file", missing)
	}
	if err := RealHost.OpenRW(f); err != nil {
		t.Errorf("OpenRW(%s) = %v", f, err)
	}
	if err := RealHost.OpenRW(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenRW(%s) = %v, want ErrNotExist", missing, err)
	}
}
