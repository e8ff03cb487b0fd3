package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/state"
	"kiln.dev/kiln/internal/vm"
)

// netState is the supervisor's share of bridge networking: the name
// servers on the bridges' gateways, and a lock that serialises rebuilding
// the firewall and those servers from state.
type netState struct {
	mu  sync.Mutex
	dns *network.DNS
}

// NetworkView is a bridge network and the VMs on it.
type NetworkView struct {
	state.Network
	VMs []NetworkVM
}

// NetworkVM is a VM's lease on a network.
type NetworkVM struct {
	ID   string
	Name string
	IP   string
}

// NetworkRequest is what kiln network create asks for.
type NetworkRequest struct {
	Name       string
	Subnet     string
	Gateway    string
	Egress     bool
	IsolateVMs bool
	Labels     map[string]string
}

// AutoSubnets is where a network asked for without a subnet gets one, as
// docker picks one: the first /24 in it that overlaps no other network
// and no route of the host.
var AutoSubnets = netip.MustParsePrefix("10.89.0.0/16")

// CreateNetwork records a bridge network and makes its bridge. A subnet
// that overlaps another network or a route of the host is refused; none
// takes a free /24 of AutoSubnets. On any error nothing is left.
func (s *Supervisor) CreateNetwork(ctx context.Context, r NetworkRequest) (*NetworkView, error) {
	if r.Subnet != "" {
		return s.createNetwork(ctx, r)
	}
	if r.Gateway != "" {
		return nil, errdefs.Invalid(fmt.Sprintf("network %s: a gateway (%s) needs its subnet", r.Name, r.Gateway))
	}
	base := AutoSubnets.Addr().As4()
	for i := 0; i < 1<<(24-AutoSubnets.Bits()); i++ {
		a := base
		a[2] += byte(i)
		r.Subnet = netip.PrefixFrom(netip.AddrFrom4(a), 24).String()
		v, err := s.createNetwork(ctx, r)
		if !errors.Is(err, state.ErrSubnetOverlap) {
			return v, err
		}
	}
	return nil, fmt.Errorf("network %s: every /24 of %s overlaps another network or a route of the host: give a subnet: %w", r.Name, AutoSubnets, errdefs.ErrConflict)
}

func (s *Supervisor) createNetwork(ctx context.Context, r NetworkRequest) (v *NetworkView, err error) {
	if err := network.ValidateNetworkName(r.Name); err != nil {
		return nil, err
	}
	subnet, gw, err := network.ParseSubnet(r.Subnet, r.Gateway)
	if err != nil {
		return nil, err
	}
	route, err := network.RouteOverlap(subnet)
	if err != nil {
		return nil, err
	}
	if route != "" {
		return nil, errdefs.Mark(fmt.Errorf("subnet %s overlaps the host's route %s: pick another subnet: %w", subnet, route, errdefs.ErrConflict), state.ErrSubnetOverlap)
	}
	n := &state.Network{Name: r.Name, Subnet: subnet, Gateway: gw, Bridge: network.BridgeName(r.Name), Egress: r.Egress, IsolateVMs: r.IsolateVMs, Created: time.Now().UTC(), Labels: r.Labels}
	if err := s.db.InsertNetwork(ctx, n); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = network.DeleteLink(n.Bridge)
			_ = s.db.DeleteNetwork(context.Background(), n.Name)
		}
	}()
	if err := network.EnsureBridge(n.Bridge, gw, subnet); err != nil {
		return nil, fmt.Errorf("network %s: %w", r.Name, err)
	}
	if err := s.syncNetworks(); err != nil {
		return nil, fmt.Errorf("network %s: %w", r.Name, err)
	}
	return &NetworkView{Network: *n}, nil
}

// RemoveNetwork removes a network no VM is on, and its bridge.
func (s *Supervisor) RemoveNetwork(ctx context.Context, name string) error {
	n, err := s.db.GetNetwork(ctx, name)
	if err != nil {
		return err
	}
	if err := s.db.DeleteNetwork(ctx, name); err != nil {
		return err
	}
	if err := network.DeleteLink(n.Bridge); err != nil {
		return fmt.Errorf("network %s removed, but not its bridge: %w", name, err)
	}
	return s.syncNetworks()
}

// Networks returns every network with its VMs.
func (s *Supervisor) Networks(ctx context.Context) ([]*NetworkView, error) {
	nets, err := s.db.ListNetworks(ctx)
	if err != nil {
		return nil, err
	}
	leases, err := s.db.Leases(ctx)
	if err != nil {
		return nil, err
	}
	names := s.vmNames()
	var out []*NetworkView
	for _, n := range nets {
		v := &NetworkView{Network: *n}
		for _, l := range leases {
			if l.Network == n.Name {
				v.VMs = append(v.VMs, NetworkVM{ID: l.VMID, Name: names[l.VMID], IP: l.IP.String()})
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// Network returns one network with its VMs.
func (s *Supervisor) Network(ctx context.Context, name string) (*NetworkView, error) {
	if _, err := s.db.GetNetwork(ctx, name); err != nil {
		return nil, err
	}
	all, err := s.Networks(ctx)
	if err != nil {
		return nil, err
	}
	for _, v := range all {
		if v.Name == name {
			return v, nil
		}
	}
	return nil, fmt.Errorf("no such network: %s: %w", name, errdefs.ErrNotFound)
}

func (s *Supervisor) vmNames() map[string]string {
	s.mu.Lock()
	vms := make([]*managed, 0, len(s.vms))
	for _, m := range s.vms {
		vms = append(vms, m)
	}
	s.mu.Unlock()
	out := map[string]string{}
	for _, m := range vms {
		m.mu.Lock()
		out[m.id] = m.rec.Name
		m.mu.Unlock()
	}
	return out
}

// leaseNetwork gives a VM that is to be created on a bridge network its
// ID, its address (in one transaction with the check that no one else has
// it) and its attachment. release undoes it, for a create that fails.
func (s *Supervisor) leaseNetwork(ctx context.Context, spec *vm.Spec) (release func(), err error) {
	mode, err := network.ParseMode(spec.Network)
	if err != nil || !network.IsBridge(mode) {
		return func() {}, nil // Validate reports a bad mode or a stray --ip
	}
	n, err := s.db.GetNetwork(ctx, mode)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, fmt.Errorf("no such network: %s (make it with kiln network create %s --subnet CIDR): %w", mode, mode, errdefs.ErrNotFound)
		}
		return nil, err
	}
	var want netip.Addr
	if spec.IP != "" {
		if want, err = netip.ParseAddr(spec.IP); err != nil || !want.Is4() {
			return nil, errdefs.Invalid(fmt.Sprintf("invalid IP %q: want an IPv4 address", spec.IP))
		}
	}
	id := spec.ID
	if id == "" {
		if id, err = vm.NewID(); err != nil {
			return nil, err
		}
	}
	l, err := s.db.Lease(ctx, n.Name, id, want)
	if err != nil {
		return nil, err
	}
	spec.ID = id
	spec.Attach = &network.Attachment{
		Network: n.Name, Bridge: n.Bridge, Subnet: n.Subnet.String(), Gateway: n.Gateway.String(),
		IP: l.IP.String(), TAP: network.TAPName(id), Isolated: n.IsolateVMs,
	}
	return func() {
		_ = network.DeleteLink(network.TAPName(id))
		if err := s.db.ReleaseLease(context.Background(), id); err != nil {
			s.log.Warn("releasing address", "vm", id, "err", err)
		}
	}, nil
}

// releaseNetwork frees what a removed VM held on its network: its TAP, its
// lease and its rules; in a network namespace, its TAP and redirects there.
func (s *Supervisor) releaseNetwork(id string, spec vm.Spec) error {
	if spec.Pod != nil {
		return network.DisconnectNS(spec.Pod)
	}
	if spec.Attach == nil {
		return nil
	}
	vm.ReleasePorts(id)
	errTAP := network.DeleteLink(spec.Attach.TAP)
	errLease := s.db.ReleaseLease(context.Background(), id)
	return errors.Join(errTAP, errLease, s.syncNetworks())
}

// networkChanged rebuilds the firewall and name servers in the background,
// for callers that hold a VM's lock (a VM on a bridge network started or
// ended: its published ports come or go).
func (s *Supervisor) networkChanged(spec vm.Spec) {
	if spec.Attach == nil {
		return
	}
	s.spawn(func() {
		if err := s.syncNetworks(); err != nil && s.ctx.Err() == nil {
			s.log.Warn("updating the firewall", "err", err)
		}
	})
}

// syncNetworks rebuilds kiln's firewall table and the name servers from
// state: every network, every lease, the published ports of running VMs.
// It takes VM locks: never call it holding one.
func (s *Supervisor) syncNetworks() error {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	if s.net.dns == nil {
		s.net.dns = network.NewDNS(s.log)
	}
	ctx := s.ctx // cancelled by Close: the firewall is then left as it is
	nets, err := s.db.ListNetworks(ctx)
	if err != nil {
		return err
	}
	leases, err := s.db.Leases(ctx)
	if err != nil {
		return err
	}
	if len(nets) == 0 {
		s.net.dns.Update(nil)
		// Without networks the table goes; a daemon without privileges
		// (user-mode only) never made one and cannot look.
		if err := network.ApplyFirewall(network.Firewall{}); err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
			return err
		}
		return nil
	}
	s.mu.Lock()
	vms := map[string]*managed{}
	for id, m := range s.vms {
		vms[id] = m
	}
	s.mu.Unlock()
	var fw network.Firewall
	zones := map[string]*network.DNSZone{}
	for _, n := range nets {
		fw.Networks = append(fw.Networks, network.FirewallNetwork{Bridge: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway, Egress: n.Egress})
		zones[n.Name] = &network.DNSZone{Network: n.Name, Gateway: n.Gateway, Egress: n.Egress, Records: map[string]netip.Addr{}}
	}
	for _, l := range leases {
		// Every lease's TAP may send as its VM, whatever state the VM is
		// in: the lease, not the VM, says which address is whose.
		fw.Ports = append(fw.Ports, network.VMPort(l.VMID, l.IP))
		m, ok := vms[l.VMID]
		if !ok {
			continue // being created, or an orphan reconcile drops
		}
		m.mu.Lock()
		name, removed, running := m.rec.Name, m.removed, m.runDone != nil && m.machine != nil
		aliases := m.spec.NetworkAliases
		starting := m.starting != nil
		var ports []network.PortMapping
		if running {
			ports = m.machine.Ports()
		}
		m.mu.Unlock()
		if removed {
			continue
		}
		if starting {
			// Its ports are being taken (and are published once it has
			// started, when it syncs again): leave them be.
		} else if !running {
			vm.ReleasePorts(l.VMID)
		} else if err := vm.HoldResolvedPorts(l.VMID, ports); err != nil {
			s.log.Warn("holding the published ports of a running VM", "vm", l.VMID, "err", err)
		}
		if z := zones[l.Network]; z != nil {
			z.Records[strings.ToLower(name)] = l.IP
			for _, a := range aliases {
				// A VM's own name wins over another's alias.
				if _, taken := z.Records[strings.ToLower(a)]; !taken {
					z.Records[strings.ToLower(a)] = l.IP
				}
			}
		}
		for _, p := range ports {
			fw.DNATs = append(fw.DNATs, network.DNAT{Protocol: p.Protocol, HostIP: p.HostIP, HostPort: p.HostPort, VMIP: l.IP, GuestPort: p.GuestPort})
		}
	}
	if err := network.ApplyFirewall(fw); err != nil {
		return err
	}
	if err := network.EnableForwarding(); err != nil {
		return err
	}
	var zs []network.DNSZone
	for _, z := range zones {
		zs = append(zs, *z)
	}
	// A name server that cannot listen (another one holds port 53 on every
	// address) costs name resolution between VMs, not the network: it is
	// logged, not failed.
	if err := s.net.dns.Update(zs); err != nil {
		s.log.Warn("VMs on bridge networks cannot resolve each other's names", "err", err)
	}
	return nil
}

// reconcileNetworks brings the host in line with state after a daemon
// start: leases of VMs that were never recorded are dropped, bridges of
// networks that are gone and TAPs of VMs that are gone are removed, every
// network's bridge is made if missing, and the firewall and name servers
// are rebuilt.
func (s *Supervisor) reconcileNetworks(ctx context.Context) error {
	if n, err := s.db.ReleaseOrphanLeases(ctx); err != nil {
		return err
	} else if n > 0 {
		s.log.Info("released addresses of VMs that do not exist", "count", n)
	}
	nets, err := s.db.ListNetworks(ctx)
	if err != nil {
		return err
	}
	leases, err := s.db.Leases(ctx)
	if err != nil {
		return err
	}
	bridges, taps := map[string]bool{}, map[string]bool{}
	var errs []error
	for _, n := range nets {
		bridges[n.Bridge] = true
		if err := network.EnsureBridge(n.Bridge, n.Gateway, n.Subnet); err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", n.Name, err))
		}
	}
	for _, l := range leases {
		taps[network.TAPName(l.VMID)] = true
	}
	for _, kind := range []struct {
		prefix string
		keep   map[string]bool
	}{{network.TAPPrefix, taps}, {network.BridgePrefix, bridges}} {
		links, err := network.Links(kind.prefix)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range links {
			if !kind.keep[l] {
				s.log.Info("removing a link no VM or network owns", "link", l)
				if err := network.DeleteLink(l); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	errs = append(errs, s.syncNetworks())
	return errors.Join(errs...)
}

// closeNetworks stops the name servers.
func (s *Supervisor) closeNetworks() {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	if s.net.dns != nil {
		s.net.dns.Close()
	}
}
