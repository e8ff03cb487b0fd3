package qemu

import (
	"strconv"

	"kiln.dev/kiln/internal/vmm"
)

// tapArgs gives the VM a virtio-net device on the host's persistent TAP
// device, opened by name: kiln made it (and put it on its bridge) before
// QEMU starts, and it outlives QEMU, so no script runs and nothing is torn
// down when QEMU exits.
func tapArgs(n *vmm.NetConfig) []string {
	netdev := "tap,id=net0,ifname=" + n.TAP + ",script=no,downscript=no"
	if n.TAPFD > 0 {
		// Handed over open: a jailed QEMU cannot open a TAP itself.
		netdev = "tap,id=net0,fd=" + strconv.Itoa(n.TAPFD)
	}
	return []string{
		"-netdev", netdev,
		"-device", "virtio-net-device,netdev=net0,mac=" + optValue(n.MAC),
	}
}
