package qemu

import (
	"slices"
	"strings"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestArgv(t *testing.T) {
	const bin = "/usr/bin/qemu-system-x86_64"
	tests := []struct {
		name string
		cfg  vmm.Config
		want []string
	}{
		{
			name: "tcg, 1 cpu, no initrd, no ports, acpi off",
			cfg: vmm.Config{
				ID:        "abc",
				Dir:       "/run/kiln/vms/abc",
				Kernel:    "/k/vmlinux",
				Cmdline:   "console=ttyS0 quiet",
				MemoryMiB: 128,
				CPUs:      1,
				Accel:     vmm.AccelTCG,
			},
			want: []string{
				bin,
				"-name", "kiln-abc",
				"-M", "microvm,acpi=off,rtc=on,pit=on,pic=on,isa-serial=on",
				"-accel", "tcg",
				"-cpu", "max",
				"-m", "128M",
				"-smp", "1",
				"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-kernel", "/k/vmlinux",
				"-append", "console=ttyS0 quiet",
				"-chardev", "pipe,id=console,path=/run/kiln/vms/abc/console",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-nic", "none",
			},
		},
		{
			name: "resuming a saved guest from an inherited descriptor",
			cfg: vmm.Config{
				ID:         "abc",
				Dir:        "/run/kiln/vms/abc",
				Kernel:     "/k/vmlinux",
				Cmdline:    "console=ttyS0 quiet",
				MemoryMiB:  128,
				CPUs:       1,
				Accel:      vmm.AccelTCG,
				IncomingFD: 7,
			},
			want: []string{
				bin,
				"-name", "kiln-abc",
				"-M", "microvm,acpi=off,rtc=on,pit=on,pic=on,isa-serial=on",
				"-accel", "tcg",
				"-cpu", "max",
				"-m", "128M",
				"-smp", "1",
				"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-kernel", "/k/vmlinux",
				"-append", "console=ttyS0 quiet",
				"-chardev", "pipe,id=console,path=/run/kiln/vms/abc/console",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-incoming", "fd:7",
				"-nic", "none",
			},
		},
		{
			name: "kvm, 2 cpus, initrd, acpi on, file and socket ports",
			cfg: vmm.Config{
				ID:        "vm2",
				Dir:       "/var/lib/kiln/vms/vm2",
				Kernel:    "/k/bzImage",
				Initrd:    "/var/lib/kiln/vms/vm2/initrd",
				Cmdline:   "console=ttyS0",
				MemoryMiB: 1024,
				CPUs:      2,
				Accel:     vmm.AccelKVM,
				ACPI:      true,
				Ports: []vmm.Port{
					{Name: "kiln.stdout", File: "/var/lib/kiln/vms/vm2/stdout"},
					{Name: "kiln.agent", Socket: "/var/lib/kiln/vms/vm2/agent.sock"},
					{Name: "kiln.exit", File: "/var/lib/kiln/vms/vm2/exit"},
				},
			},
			want: []string{
				bin,
				"-name", "kiln-vm2",
				"-M", "microvm,acpi=on,rtc=on,pit=on,pic=on,isa-serial=on",
				"-accel", "kvm",
				"-cpu", "host",
				"-m", "1024M",
				"-smp", "2",
				"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-kernel", "/k/bzImage",
				"-initrd", "/var/lib/kiln/vms/vm2/initrd",
				"-append", "console=ttyS0",
				"-chardev", "pipe,id=console,path=/var/lib/kiln/vms/vm2/console",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-nic", "none",
				// Port 0 of virtio-serial is reserved for a console, so
				// three named ports need max_ports=4.
				"-device", "virtio-serial-device,max_ports=4",
				"-chardev", "file,id=port0,path=/var/lib/kiln/vms/vm2/stdout,append=on",
				"-device", "virtserialport,chardev=port0,name=kiln.stdout",
				// The first socket port's listener is the fd after QMP's.
				"-chardev", "socket,id=port1,fd=4,server=on,wait=off",
				"-device", "virtserialport,chardev=port1,name=kiln.agent",
				"-chardev", "file,id=port2,path=/var/lib/kiln/vms/vm2/exit,append=on",
				"-device", "virtserialport,chardev=port2,name=kiln.exit",
			},
		},
		{
			name: "two socket ports take consecutive fds",
			cfg: vmm.Config{
				ID: "s", Dir: "/d", Kernel: "/k", Cmdline: "", MemoryMiB: 64, CPUs: 4, Accel: vmm.AccelTCG,
				Ports: []vmm.Port{{Name: "a", Socket: "/d/a.sock"}, {Name: "b", Socket: "/d/b.sock"}},
			},
			want: []string{
				bin,
				"-name", "kiln-s",
				"-M", "microvm,acpi=off,rtc=on,pit=on,pic=on,isa-serial=on",
				"-accel", "tcg",
				"-cpu", "max",
				"-m", "64M",
				"-smp", "4",
				"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-kernel", "/k",
				"-append", "",
				"-chardev", "pipe,id=console,path=/d/console",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-nic", "none",
				"-device", "virtio-serial-device,max_ports=3",
				"-chardev", "socket,id=port0,fd=4,server=on,wait=off",
				"-device", "virtserialport,chardev=port0,name=a",
				"-chardev", "socket,id=port1,fd=5,server=on,wait=off",
				"-device", "virtserialport,chardev=port1,name=b",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatalf("test config is invalid: %v", err)
			}
			got := Argv(bin, &tt.cfg)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Argv mismatch\n got: %q\nwant: %q", got, tt.want)
				for i := range max(len(got), len(tt.want)) {
					var g, w string
					if i < len(got) {
						g = got[i]
					}
					if i < len(tt.want) {
						w = tt.want[i]
					}
					if g != w {
						t.Errorf("first difference at [%d]: got %q, want %q", i, g, w)
						break
					}
				}
			}
		})
	}
}

// TestArgvCommaInPath: QEMU splits option values on ',' and reads ",," as
// a literal comma, so a state directory with a comma in its path must be
// escaped or QEMU sees a bogus option after the comma.
func TestArgvCommaInPath(t *testing.T) {
	c := vmm.Config{ID: "c", Dir: "/home/a,b/vms/c", Kernel: "/k", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG,
		Ports: []vmm.Port{{Name: "out", File: "/home/a,b/vms/c/out"}}}
	got := Argv("qemu", &c)
	for _, want := range []string{
		"pipe,id=console,path=/home/a,,b/vms/c/console",
		"file,id=port0,path=/home/a,,b/vms/c/out,append=on",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("Argv does not contain %q:\n%q", want, got)
		}
	}
}

func TestCmdline(t *testing.T) {
	const base = "console=ttyS0 reboot=t panic=-1 quiet 8250.nr_uarts=1 no_timer_check"
	tests := []struct {
		name  string
		accel vmm.Accel
		acpi  bool
		khz   int
		extra []string
		want  string
	}{
		{"tcg with khz", vmm.AccelTCG, false, 2400000, nil, base + " tsc_early_khz=2400000 tsc=reliable nolapic_timer"},
		{"tcg without khz", vmm.AccelTCG, false, 0, nil, base + " nolapic_timer"},
		{"tcg with ACPI keeps the APIC timer", vmm.AccelTCG, true, 1000, nil, base + " tsc_early_khz=1000 tsc=reliable"},
		{"tcg negative khz", vmm.AccelTCG, false, -1, nil, base + " nolapic_timer"},
		{"kvm ignores khz", vmm.AccelKVM, false, 2400000, nil, base},
		{"tcg with extras after tsc", vmm.AccelTCG, false, 1000, []string{"virtio_mmio.device=512@0xfeb00000:12", "init=/init"},
			base + " tsc_early_khz=1000 tsc=reliable nolapic_timer virtio_mmio.device=512@0xfeb00000:12 init=/init"},
		{"kvm with extras", vmm.AccelKVM, false, 0, []string{"a=b"}, base + " a=b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Cmdline(tt.accel, tt.acpi, tt.khz, tt.extra...); got != tt.want {
				t.Errorf("Cmdline(%q, %v, %d, %q)\n got %q\nwant %q", tt.accel, tt.acpi, tt.khz, tt.extra, got, tt.want)
			}
		})
	}
}

func TestProcessName(t *testing.T) {
	for id, want := range map[string]string{"abc": "kiln-abc", "0123456789ab": "kiln-0123456789ab", "": "kiln-"} {
		if got := ProcessName(id); got != want {
			t.Errorf("ProcessName(%q) = %q, want %q", id, got, want)
		}
	}
	// The name must be one argv word so /proc/<pid>/cmdline matching works.
	if strings.ContainsAny(ProcessName("x"), " \x00") {
		t.Error("ProcessName contains a separator")
	}
}
