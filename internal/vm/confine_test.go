package vm

import (
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
)

func TestParseExtraHost(t *testing.T) {
	for _, tt := range []struct {
		in, name, addr, err string
	}{
		{"db:10.0.0.5", "db", "10.0.0.5", ""},
		{"host.kiln.internal:host-gateway", "host.kiln.internal", HostGateway, ""},
		{"v6:[fd00::1]", "v6", "fd00::1", ""},
		{"v6:fd00::1", "v6", "fd00::1", ""},
		{"db", "", "", "want NAME:ADDRESS"},
		{":10.0.0.5", "", "", "want NAME:ADDRESS"},
		{"db:somewhere", "", "", `address "somewhere"`},
		{"bad name:10.0.0.1", "", "", "want NAME:ADDRESS"},
	} {
		name, addr, err := ParseExtraHost(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseExtraHost(%q) error %v, want %q", tt.in, err, tt.err)
		case tt.err == "" && (err != nil || name != tt.name || addr != tt.addr):
			t.Errorf("ParseExtraHost(%q) = %q, %q, %v; want %q, %q", tt.in, name, addr, err, tt.name, tt.addr)
		}
	}
	s := Spec{VMConfig: api.VMConfig{ExtraHosts: []string{"db:10.0.0.5", "host.kiln.internal:host-gateway"}}}
	if !s.HostAccess() {
		t.Error("HostAccess of a spec with host-gateway = false")
	}
	if got := s.guestHosts("10.0.2.2"); !slices.Equal(got, []string{"10.0.0.5\tdb", "10.0.2.2\thost.kiln.internal"}) {
		t.Errorf("guestHosts = %q", got)
	}
	if (&Spec{VMConfig: api.VMConfig{ExtraHosts: []string{"db:10.0.0.5"}}}).HostAccess() {
		t.Error("HostAccess without host-gateway = true")
	}
}

func TestCgroupLimitsCoverQEMU(t *testing.T) {
	l := cgroupLimits(&Spec{VMConfig: api.VMConfig{MemoryMiB: 256, CPUs: 2}})
	if l.MemoryBytes != (256+192+64)<<20 || l.CPUs != 3 || l.Pids != qemuPids {
		t.Errorf("cgroupLimits = %+v", l)
	}
	if big := cgroupLimits(&Spec{VMConfig: api.VMConfig{MemoryMiB: 4096, CPUs: 1}}); big.MemoryBytes <= 4096<<20+qemuOverheadMiB<<20 {
		t.Errorf("a large guest's limit %d leaves QEMU no room that grows with it", big.MemoryBytes)
	}
}
