package qemu

import (
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestArgvShares(t *testing.T) {
	const bin = "/usr/bin/qemu-system-x86_64"
	base := vmm.Config{ID: "s1", Dir: "/var/lib/kiln/vms/s1", Kernel: "/k/vmlinux", Cmdline: "console=ttyS0", MemoryMiB: 256, CPUs: 1, Accel: vmm.AccelTCG}
	cfg := base
	cfg.Drives = []vmm.Drive{{ID: "vol0", Path: "/v/disk.ext4", Serial: "kiln-vol0"}}
	cfg.Shares = []vmm.Share{
		{ID: "fs0", Path: "/srv/site", Tag: "kiln-fs0", ReadOnly: true},
		{ID: "fs1", Path: "/srv/a,b", Tag: "kiln-fs1"},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	fixed := Argv(bin, &base)
	got := Argv(bin, &cfg)
	want := append(driveArgs(cfg.Drives[0]),
		"-fsdev", "local,id=fs0,path=/srv/site,security_model=none,readonly=on",
		"-device", "virtio-9p-device,fsdev=fs0,mount_tag=kiln-fs0",
		"-fsdev", "local,id=fs1,path=/srv/a,,b,security_model=none",
		"-device", "virtio-9p-device,fsdev=fs1,mount_tag=kiln-fs1",
	)
	if rest := got[len(fixed):]; !slices.Equal(rest, want) {
		t.Errorf("share argv:\n got %q\nwant %q", rest, want)
	}
}

func TestValidateShares(t *testing.T) {
	base := vmm.Config{ID: "x", Dir: "/d", Kernel: "/k", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG}
	tests := []struct {
		name   string
		drives []vmm.Drive
		shares []vmm.Share
		errHas string
	}{
		{"valid", nil, []vmm.Share{{ID: "fs0", Path: "/a", Tag: "t"}}, ""},
		{"relative path", nil, []vmm.Share{{ID: "fs0", Path: "a", Tag: "t"}}, "not absolute"},
		{"no tag", nil, []vmm.Share{{ID: "fs0", Path: "/a"}}, "tag"},
		{"tag with comma", nil, []vmm.Share{{ID: "fs0", Path: "/a", Tag: "a,b"}}, "tag"},
		{"tag too long", nil, []vmm.Share{{ID: "fs0", Path: "/a", Tag: strings.Repeat("t", 32)}}, "tag"},
		{"bad id", nil, []vmm.Share{{ID: "0fs", Path: "/a", Tag: "t"}}, "share ID"},
		{"id of a drive", []vmm.Drive{{ID: "d", Path: "/d"}}, []vmm.Share{{ID: "d", Path: "/a", Tag: "t"}}, "used twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Drives, cfg.Shares = tt.drives, tt.shares
			err := cfg.Validate()
			switch {
			case tt.errHas == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.errHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errHas)):
				t.Errorf("Validate: %v, want an error containing %q", err, tt.errHas)
			}
		})
	}
}

func TestSkipRTCIRQ(t *testing.T) {
	ports := []vmm.Port{{Name: "p", File: "/f"}}
	net := &vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:00:00:01"}
	drives := func(n int) []vmm.Drive {
		var ds []vmm.Drive
		for i := range n {
			ds = append(ds, vmm.Drive{ID: "d" + string(rune('a'+i)), Path: "/d"})
		}
		return ds
	}
	tests := []struct {
		name     string
		cfg      vmm.Config
		fillerAt int // index among the drives the filler precedes; -1 none
		checkErr bool
	}{
		{"four devices: no filler", vmm.Config{Net: net, Ports: ports, Drives: drives(2)}, -1, false},
		{"fifth device gets the filler before it", vmm.Config{Net: net, Ports: ports, Drives: drives(3)}, 2, false},
		{"no network: the filler moves one later", vmm.Config{Ports: ports, Drives: drives(4)}, 3, false},
		{"ACPI: no filler", vmm.Config{ACPI: true, Net: net, Ports: ports, Drives: drives(5)}, -1, false},
		{"seven devices and the filler fit", vmm.Config{Net: net, Ports: ports, Drives: drives(5)}, 2, false},
		{"eight devices do not", vmm.Config{Net: net, Ports: ports, Drives: drives(6)}, 2, true},
		{"ACPI: 24 fit", vmm.Config{ACPI: true, Net: net, Ports: ports, Drives: drives(22)}, -1, false},
		{"ACPI: 25 do not", vmm.Config{ACPI: true, Net: net, Ports: ports, Drives: drives(23)}, -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var devs [][]string
			for _, d := range tt.cfg.Drives {
				devs = append(devs, driveArgs(d))
			}
			got := skipRTCIRQ(devs, &tt.cfg)
			var want []string
			for i, d := range devs {
				if i == tt.fillerAt {
					want = append(want, irqFiller...)
				}
				want = append(want, d...)
			}
			if !slices.Equal(got, want) {
				t.Errorf("argv:\n got %q\nwant %q", got, want)
			}
			if err := CheckDevices(&tt.cfg); (err != nil) != tt.checkErr {
				t.Errorf("CheckDevices: %v, want error %v", err, tt.checkErr)
			}
		})
	}
}
