package qemu

import (
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestArgvDrives(t *testing.T) {
	const bin = "/usr/bin/qemu-system-x86_64"
	base := vmm.Config{
		ID:        "d1",
		Dir:       "/var/lib/kiln/vms/d1",
		Kernel:    "/k/vmlinux",
		Cmdline:   "console=ttyS0",
		MemoryMiB: 256,
		CPUs:      1,
		Accel:     vmm.AccelTCG,
	}
	tests := []struct {
		name   string
		drives []vmm.Drive
		want   []string // the argv after the fixed part
	}{
		{
			name: "none",
		},
		{
			name: "read-only image and writable disk, in order",
			drives: []vmm.Drive{
				{ID: "image", Path: "/var/lib/kiln/images/rootfs/ab.sqfs", ReadOnly: true, Serial: "kiln-image"},
				{ID: "upper", Path: "/var/lib/kiln/vms/d1/disk.ext4", Serial: "kiln-upper"},
			},
			want: []string{
				"-drive", "file=/var/lib/kiln/images/rootfs/ab.sqfs,if=none,id=image,format=raw,readonly=on,cache=writeback,werror=report,rerror=report",
				"-device", "virtio-blk-device,drive=image,serial=kiln-image",
				"-drive", "file=/var/lib/kiln/vms/d1/disk.ext4,if=none,id=upper,format=raw,cache=writeback,werror=report,rerror=report",
				"-device", "virtio-blk-device,drive=upper,serial=kiln-upper",
			},
		},
		{
			name:   "comma in path is escaped, no serial",
			drives: []vmm.Drive{{ID: "d", Path: "/tmp/a,b/disk.img"}},
			want: []string{
				"-drive", "file=/tmp/a,,b/disk.img,if=none,id=d,format=raw,cache=writeback,werror=report,rerror=report",
				"-device", "virtio-blk-device,drive=d",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Drives = tt.drives
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			fixed := Argv(bin, &base)
			got := Argv(bin, &cfg)
			if !slices.Equal(got[:len(fixed)], fixed) {
				t.Fatalf("drives changed the fixed part of the argv:\n got %q\nwant %q", got[:len(fixed)], fixed)
			}
			if rest := got[len(fixed):]; !slices.Equal(rest, tt.want) {
				t.Errorf("drive argv:\n got %q\nwant %q", rest, tt.want)
			}
		})
	}
}

func TestValidateDrives(t *testing.T) {
	base := vmm.Config{ID: "x", Dir: "/d", Kernel: "/k", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG}
	tests := []struct {
		name   string
		drives []vmm.Drive
		errHas string // "" means valid
	}{
		{"valid", []vmm.Drive{{ID: "a", Path: "/a", Serial: "12345678901234567890"}}, ""},
		{"no id", []vmm.Drive{{Path: "/a"}}, "drive ID"},
		{"id with comma", []vmm.Drive{{ID: "a,b", Path: "/a"}}, "drive ID"},
		{"no path", []vmm.Drive{{ID: "a"}}, "no path"},
		{"duplicate id", []vmm.Drive{{ID: "a", Path: "/a"}, {ID: "a", Path: "/b"}}, "used twice"},
		{"serial too long", []vmm.Drive{{ID: "a", Path: "/a", Serial: "123456789012345678901"}}, "longer than 20"},
		{"serial with comma", []vmm.Drive{{ID: "a", Path: "/a", Serial: "a,b"}}, "printable"},
		{"serial with space", []vmm.Drive{{ID: "a", Path: "/a", Serial: "a b"}}, "printable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Drives = tt.drives
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
