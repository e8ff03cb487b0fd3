package qemu

import (
	"slices"
	"testing"

	"kiln.dev/kiln/internal/vmm"
)

func TestNetArgsTAP(t *testing.T) {
	got := netArgs(&vmm.NetConfig{Mode: vmm.NetTAP, MAC: "52:54:00:12:34:56", TAP: "kn-0123456789ab"})
	want := []string{
		"-netdev", "tap,id=net0,ifname=kn-0123456789ab,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
	}
	if !slices.Equal(got, want) {
		t.Errorf("netArgs =\n %q\nwant\n %q", got, want)
	}
}
