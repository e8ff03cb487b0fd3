package qemu

import (
	"errors"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestBackendPrepare(t *testing.T) {
	cfg := vmm.Config{Accel: vmm.AccelTCG, Binary: "/bin/true"}
	if err := (Backend{}).Prepare(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Binary != "/bin/true" || !strings.Contains(cfg.Cmdline, "reboot=t") {
		t.Errorf("prepared %+v", cfg)
	}
	cfg = vmm.Config{Accel: vmm.AccelTCG, Binary: "kiln-no-such-qemu"}
	if err := (Backend{}).Prepare(&cfg); !errors.Is(err, vmm.ErrUnavailable) {
		t.Errorf("missing QEMU: %v, want ErrUnavailable", err)
	}
	cfg = vmm.Config{Accel: vmm.AccelTCG, Binary: "/bin/true"}
	for i := range 30 {
		cfg.Drives = append(cfg.Drives, vmm.Drive{ID: "d" + string(rune('a'+i)), Path: "/dev/null"})
	}
	if err := (Backend{}).Prepare(&cfg); err == nil || !strings.Contains(err.Error(), "too many mounts") {
		t.Errorf("30 drives: %v, want too many mounts", err)
	}
}

// A kernel capable of ACPI boots with it when, and only when, its devices
// do not fit microvm's transports without it.
func TestBackendPrepareTurnsACPIOnForManyDevices(t *testing.T) {
	drives := func(n int) []vmm.Drive {
		var ds []vmm.Drive
		for i := range n {
			ds = append(ds, vmm.Drive{ID: "d" + string(rune('a'+i)), Path: "/dev/null"})
		}
		return ds
	}
	for _, tt := range []struct {
		drives        int
		capable, want bool
		wantErr       bool
	}{
		{drives: 4, capable: true, want: false},
		{drives: 7, capable: false, wantErr: true},
		{drives: 7, capable: true, want: true},
		{drives: 20, capable: true, want: true},
		{drives: 30, capable: true, want: true, wantErr: true},
	} {
		cfg := vmm.Config{Accel: vmm.AccelTCG, Binary: "/bin/true", ACPICapable: tt.capable, Drives: drives(tt.drives),
			Net: &vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:00:00:01"}, Ports: []vmm.Port{{Name: "status", Socket: "/s"}}}
		err := (Backend{}).Prepare(&cfg)
		if (err != nil) != tt.wantErr || (err == nil && cfg.ACPI != tt.want) {
			t.Errorf("%d drives, ACPI-capable %v: ACPI %v, %v; want ACPI %v, error %v", tt.drives, tt.capable, cfg.ACPI, err, tt.want, tt.wantErr)
		}
	}
}

func TestBackendAttachGone(t *testing.T) {
	cfg := vmm.Config{ID: "gone", Dir: t.TempDir(), Kernel: "/vmlinux", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG}
	if _, err := (Backend{}).Attach(cfg, nil); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Attach of a VM never started: %v, want ErrNotRunning", err)
	}
	if pid, err := (Backend{}).Reap(cfg.Dir, cfg.ID); pid != 0 || err != nil {
		t.Errorf("Reap = %d, %v", pid, err)
	}
}
