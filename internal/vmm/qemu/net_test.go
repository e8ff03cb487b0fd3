package qemu

import (
	"slices"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestNetArgs(t *testing.T) {
	tests := []struct {
		name string
		net  *vmm.NetConfig
		want []string
	}{
		{"none", nil, []string{"-nic", "none"}},
		{
			"user, no forwards",
			&vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:12:34:56"},
			[]string{"-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"},
		},
		{
			"user, tcp and udp forwards",
			&vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:ab:cd:ef", Forwards: []vmm.Forward{
				{Protocol: "tcp", HostIP: "0.0.0.0", HostPort: 8080, GuestPort: 80},
				{Protocol: "udp", HostIP: "127.0.0.1", HostPort: 5353, GuestPort: 53},
			}},
			[]string{
				"-netdev", "user,id=net0,hostfwd=tcp:0.0.0.0:8080-:80,hostfwd=udp:127.0.0.1:5353-:53",
				"-device", "virtio-net-device,netdev=net0,mac=52:54:00:ab:cd:ef",
			},
		},
		{
			"unplugged (a template's)",
			&vmm.NetConfig{Mode: vmm.NetUnplugged, MAC: "52:54:00:00:00:01"},
			[]string{"-netdev", "hubport,id=net0,hubid=0", "-device", "virtio-net-device,netdev=net0,mac=52:54:00:00:00:01"},
		},
		{
			// Validate refuses such values; the escaping is the last line
			// of defence against an option smuggled into the list.
			"commas escaped",
			&vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:00:00:01,x=y", Forwards: []vmm.Forward{
				{Protocol: "tcp", HostIP: "1.2.3.4,smb=/", HostPort: 1, GuestPort: 2},
			}},
			[]string{
				"-netdev", "user,id=net0,hostfwd=tcp:1.2.3.4,,smb=/:1-:2",
				"-device", "virtio-net-device,netdev=net0,mac=52:54:00:00:00:01,,x=y",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := netArgs(tt.net); !slices.Equal(got, tt.want) {
				t.Errorf("netArgs =\n %q\nwant\n %q", got, tt.want)
			}
		})
	}
}

func TestArgvWithNet(t *testing.T) {
	c := vmm.Config{
		ID: "n1", Dir: "/d", Kernel: "/k", Cmdline: "c", MemoryMiB: 128, CPUs: 1, Accel: vmm.AccelTCG,
		Net: &vmm.NetConfig{Mode: vmm.NetUser, MAC: "52:54:00:01:02:03", Forwards: []vmm.Forward{{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80}}},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	a := Argv("qemu", &c)
	if slices.Contains(a, "-nic") {
		t.Errorf("Argv with a network still has -nic none: %q", a)
	}
	i := slices.Index(a, "-netdev")
	if i < 0 || a[i+1] != "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80" || a[i+2] != "-device" || a[i+3] != "virtio-net-device,netdev=net0,mac=52:54:00:01:02:03" {
		t.Errorf("Argv = %q", a)
	}
}

func TestNetConfigValidate(t *testing.T) {
	base := func() vmm.Config {
		return vmm.Config{ID: "n1", Dir: "/d", Kernel: "/k", MemoryMiB: 128, CPUs: 1, Accel: vmm.AccelTCG}
	}
	bad := []*vmm.NetConfig{
		{Mode: "bridge", MAC: "52:54:00:01:02:03"},
		{Mode: vmm.NetUser, MAC: "52:54:00:01:02"},
		{Mode: vmm.NetUser, MAC: "52:54:00:01:02:03", Forwards: []vmm.Forward{{Protocol: "sctp", HostIP: "0.0.0.0", HostPort: 1, GuestPort: 1}}},
		{Mode: vmm.NetUser, MAC: "52:54:00:01:02:03", Forwards: []vmm.Forward{{Protocol: "tcp", HostIP: "1.2.3.4,smb=/", HostPort: 1, GuestPort: 1}}},
		{Mode: vmm.NetUser, MAC: "52:54:00:01:02:03", Forwards: []vmm.Forward{{Protocol: "tcp", HostIP: "0.0.0.0", HostPort: 0, GuestPort: 1}}},
		{Mode: vmm.NetUnplugged, MAC: "52:54:00:01:02:03", Forwards: []vmm.Forward{{Protocol: "tcp", HostIP: "0.0.0.0", HostPort: 1, GuestPort: 1}}},
	}
	for _, n := range bad {
		c := base()
		c.Net = n
		if err := c.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", n)
		}
	}
}
