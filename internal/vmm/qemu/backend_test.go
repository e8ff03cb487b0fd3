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

func TestBackendAttachGone(t *testing.T) {
	cfg := vmm.Config{ID: "gone", Dir: t.TempDir(), Kernel: "/vmlinux", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG}
	if _, err := (Backend{}).Attach(cfg, nil); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Attach of a VM never started: %v, want ErrNotRunning", err)
	}
	if pid, err := (Backend{}).Reap(cfg.Dir, cfg.ID); pid != 0 || err != nil {
		t.Errorf("Reap = %d, %v", pid, err)
	}
}
