package main

import (
	"bytes"
	"io/fs"
	"regexp"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

// fakeHost presents the paths in exists; opening /dev/kvm fails with openErr.
func fakeHost(exists []string, openErr error) vmm.Host {
	set := map[string]bool{}
	for _, p := range exists {
		set[p] = true
	}
	return vmm.Host{
		Exists: func(p string) bool { return set[p] },
		OpenRW: func(p string) error {
			if !set[p] {
				return fs.ErrNotExist
			}
			return openErr
		},
	}
}

// TestDoctorAcceleratorLine checks doctor's accelerator line for each host
// kind, independently of the machine the test runs on.
func TestDoctorAcceleratorLine(t *testing.T) {
	tests := []struct {
		name    string
		exists  []string
		openErr error
		want    string // regexp the accelerator line must match
	}{
		{"no KVM at all", nil, nil, `tcg: .*/dev/kvm does not exist and no KVM module is loaded.*modprobe`},
		{"kvm_pvm loaded, no /dev/kvm", []string{"/sys/module/kvm_pvm"}, nil, `tcg: .*/dev/kvm does not exist although module kvm_pvm is loaded`},
		{"kvm_amd loaded, no /dev/kvm", []string{"/sys/module/kvm_amd"}, nil, `tcg: .*/dev/kvm does not exist although module kvm_amd is loaded.*mknod`},
		{"PVM /dev/kvm", []string{"/dev/kvm", "/sys/module/kvm_pvm"}, nil, `tcg: .*/dev/kvm is PVM`},
		{"/dev/kvm not openable", []string{"/dev/kvm", "/sys/module/kvm_intel"}, fs.ErrPermission, `tcg: .*cannot be opened \(add yourself to the kvm group\)`},
		{"KVM of unknown kind", []string{"/dev/kvm"}, nil, `tcg: .*not backed by kvm_intel or kvm_amd`},
		{"working KVM", []string{"/dev/kvm", "/sys/module/kvm_intel"}, nil, `kvm: /dev/kvm is usable hardware KVM \(kvm_intel\)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			printChecks(&out, doctorChecks(t.TempDir(), fakeHost(tt.exists, tt.openErr)))
			re := regexp.MustCompile(`(?m)^OK\s+accelerator\s+` + tt.want)
			if !re.MatchString(out.String()) {
				t.Errorf("doctor on %s: want an accelerator line matching %q:\n%s", tt.name, tt.want, out.String())
			}
		})
	}
}
