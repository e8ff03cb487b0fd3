package vm

import (
	"fmt"
	"io"
	"net/netip"
	"sync"

	"kiln.dev/kiln/internal/agent"
	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/vmm"
)

// validateBridge checks the fields of a VM on a bridge network: --ip only
// there, and an attachment that matches the network.
func (s *Spec) validateBridge() error {
	bridge := network.IsBridge(s.Network)
	if s.IP != "" {
		if !bridge {
			return errdefs.Invalid(fmt.Sprintf("invalid IP %q: --ip needs a bridge network (--network NAME)", s.IP))
		}
		if a, err := netip.ParseAddr(s.IP); err != nil || !a.Is4() {
			return errdefs.Invalid(fmt.Sprintf("invalid IP %q: want an IPv4 address", s.IP))
		}
	}
	switch {
	case bridge && s.Attach == nil:
		return fmt.Errorf("network %s: no address leased for the VM: %w", s.Network, errdefs.ErrInvalidArgument)
	case !bridge && s.Attach != nil:
		return errdefs.Invalid(fmt.Sprintf("VM on network %q has a bridge attachment", s.Network))
	case bridge && s.Attach.Network != s.Network:
		return errdefs.Invalid(fmt.Sprintf("VM on network %q is attached to network %q", s.Network, s.Attach.Network))
	}
	return nil
}

// bridgeNIC is the interface of a VM on a bridge network: a virtio-net
// device on its TAP, and the guest's address, its gateway as default route
// and as name server (the daemon answers DNS there). The guest is told its
// MAC too: one restored from a template has the template's until
// kiln-init sets it.
func bridgeNIC(id string, a *network.Attachment) (*vmm.NetConfig, *agent.Network) {
	mac := network.MAC(id)
	return &vmm.NetConfig{Mode: vmm.NetTAP, MAC: mac, TAP: a.TAP},
		&agent.Network{Interface: network.UserInterface, Address: a.GuestCIDR(), Gateway: a.Gateway, DNS: []string{a.Gateway}, MAC: mac}
}

// attachBridge readies the host side of a bridge VM before each start: its
// bridge (re-made if it went) and its TAP on it.
func (vm *VM) attachBridge() error {
	a := vm.Spec.Attach
	if a == nil {
		return nil
	}
	subnet, err := netip.ParsePrefix(a.Subnet)
	if err != nil {
		return fmt.Errorf("VM %s: network %s: subnet %q: %w", vm.Name, a.Network, a.Subnet, err)
	}
	gw, err := netip.ParseAddr(a.Gateway)
	if err != nil {
		return fmt.Errorf("VM %s: network %s: gateway %q: %w", vm.Name, a.Network, a.Gateway, err)
	}
	if err := network.EnsureBridge(a.Bridge, gw, subnet); err != nil {
		return fmt.Errorf("starting VM %s on network %s: %w", vm.Name, a.Network, err)
	}
	if err := network.EnsureTAP(a); err != nil {
		return fmt.Errorf("starting VM %s on network %s: %w", vm.Name, a.Network, err)
	}
	return nil
}

// portHolds are the sockets held on the host for the published ports of
// running bridge VMs, by VM ID (see network.Hold). They belong to the
// process: a daemon that starts again takes them anew (HoldResolvedPorts).
var portHolds = struct {
	sync.Mutex
	m map[string][]io.Closer
}{m: map[string][]io.Closer{}}

// holdPorts resolves the published ports of a bridge VM for this start and
// holds them; what it held for an earlier run is let go first.
func (vm *VM) holdPorts() ([]network.PortMapping, error) {
	ReleasePorts(vm.ID)
	bound, held, err := network.Hold(vm.Spec.Ports)
	if err != nil {
		return nil, err
	}
	portHolds.Lock()
	portHolds.m[vm.ID] = held
	portHolds.Unlock()
	return bound, nil
}

// HoldResolvedPorts holds the ports an earlier start resolved for the VM
// id (one that kept running while no daemon ran), unless they are held
// already. The supervisor calls it as it rebuilds the networks.
func HoldResolvedPorts(id string, ports []network.PortMapping) error {
	portHolds.Lock()
	_, ok := portHolds.m[id]
	portHolds.Unlock()
	if ok || len(ports) == 0 {
		return nil
	}
	_, held, err := network.Hold(ports)
	if err != nil {
		return err
	}
	portHolds.Lock()
	portHolds.m[id] = held
	portHolds.Unlock()
	return nil
}

// ReleasePorts lets go of the host ports held for the VM id: its run
// ended, or it is removed.
func ReleasePorts(id string) {
	portHolds.Lock()
	held := portHolds.m[id]
	delete(portHolds.m, id)
	portHolds.Unlock()
	for _, c := range held {
		c.Close()
	}
}
