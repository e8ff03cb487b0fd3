package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// GuardTableName is the guard's nftables table (family inet). It is apart
// from kiln's (TableName), which each daemon rebuilds from its own bridge
// networks and removes when it has none: the guard must hold whatever any
// daemon on the host does, so its table says nothing but the Guard it was
// made from.
const GuardTableName = "kiln-guard"

// Guard is what keeps a VM on QEMU's user-mode network (slirp) off the
// host's own services. slirp makes the guest's connections as the QEMU
// process, and sends those to 10.0.2.2 (and every other address of its
// virtual network but the DNS one) to 127.0.0.1, and those to 169.254.x.y
// wherever the host routes them (a cloud's metadata service): from the
// host's side they are new connections made by QEMU's uid. kiln runs each
// VMM as its own uid from a range it owns, so the socket's uid tells them
// apart from everything else on the host.
//
// Every field is configuration, not state: the table made from a Guard is
// the same whichever daemon makes it, and does not change as VMs come and
// go.
type Guard struct {
	// UIDMin and UIDMax bound, inclusively, the uids kiln's VMMs run as.
	UIDMin, UIDMax uint32
	// HostAccessMin and HostAccessMax bound, inclusively, the uids whose VM
	// opted in to reach the host (docker's --add-host
	// host.kiln.internal:host-gateway): loopback stays open to them.
	// Link-local does not: the opt-in is to the host, not to a metadata
	// service. Both 0 means none; otherwise the range lies within
	// [UIDMin, UIDMax].
	HostAccessMin, HostAccessMax uint32
	// Resolvers are the name servers slirp forwards DNS to that the guard
	// would otherwise close (the loopback ones of the host's resolv.conf:
	// LoopbackResolvers): port 53, UDP and TCP, to them stays open to
	// every VMM, or no guest could resolve a name. Their order, repeats,
	// zones and the ones the guard does not close make no difference.
	Resolvers []netip.Addr
}

// guardedDsts are the destinations the guard closes to VMMs: the host's
// loopback, and link-local (metadata services, link-local name servers and
// whatever else is on the host's links without being meant for guests).
var guardedDsts = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
}

// The guard's chains, in its table.
const (
	guardChain    = "guard"     // hooked on output: VMMs' new connections
	guardVMMChain = "guard-vmm" // what it jumps to: the exceptions, the rejects
)

func (g *Guard) validate() error {
	if g.UIDMin > g.UIDMax {
		return invalid(fmt.Sprintf("firewall guard: uid range %d-%d is empty", g.UIDMin, g.UIDMax))
	}
	if g.hasHostAccess() {
		if g.HostAccessMin > g.HostAccessMax {
			return invalid(fmt.Sprintf("firewall guard: host-access uid range %d-%d is empty", g.HostAccessMin, g.HostAccessMax))
		}
		if g.HostAccessMin < g.UIDMin || g.HostAccessMax > g.UIDMax {
			return invalid(fmt.Sprintf("firewall guard: host-access uid range %d-%d is not within the VMMs' %d-%d", g.HostAccessMin, g.HostAccessMax, g.UIDMin, g.UIDMax))
		}
	}
	for _, a := range g.Resolvers {
		if !a.IsValid() {
			return invalid("firewall guard: a resolver has no address")
		}
	}
	return nil
}

func (g *Guard) hasHostAccess() bool { return g.HostAccessMin != 0 || g.HostAccessMax != 0 }

// resolvers returns the Resolvers the guard needs an exception for, as on
// the wire (no zone, IPv4 unmapped), sorted and once each: the rules do
// not depend on how the list was put.
func (g *Guard) resolvers() []netip.Addr {
	var out []netip.Addr
	for _, r := range g.Resolvers {
		r = r.WithZone("").Unmap()
		if slices.ContainsFunc(guardedDsts, func(p netip.Prefix) bool { return p.Contains(r) }) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// ApplyGuard replaces the guard's table (inet kiln-guard) with g, in one
// netlink batch: the table is added (if missing), deleted and made anew,
// as ApplyFirewall does kiln's, so the result is the same whatever was
// there. nil removes the table (there or not). The table is a function of
// g alone: daemons with the same configuration write the same table, and
// each batch is one transaction, so daemons applying it at once leave one
// whole table. ApplyFirewall never touches it.
//
//	guard (filter, output):   a new connection (ct state new) from a socket
//	                          of a VMM's uid ([UIDMin, UIDMax]): jump to
//	                          guard-vmm; anything else passes
//	guard-vmm:                port 53 (UDP, TCP) to a resolver, and 127/8 or
//	                          ::1 from a uid in [HostAccessMin,
//	                          HostAccessMax]: accept; to 127/8, ::1,
//	                          169.254/16 or fe80::/10: reject (TCP reset,
//	                          else ICMP port unreachable: refused at once,
//	                          not a timeout)
//
// Replies from a VMM's sockets (its published ports) are not new and pass.
func ApplyGuard(g *Guard) error {
	if g != nil {
		if err := g.validate(); err != nil {
			return err
		}
	}
	c, err := nftables.New()
	if err != nil {
		return guardPrivErr("opening nftables", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: GuardTableName}
	c.AddTable(t)
	c.DelTable(t)
	if g != nil {
		buildGuard(c, c.AddTable(t), g)
	}
	if err := c.Flush(); err != nil {
		return guardPrivErr("applying firewall table inet "+GuardTableName, err)
	}
	return nil
}

// buildGuard adds the guard's chains. The base chain sends only VMMs' new
// connections on: everything else on the host pays one rule, and a reply a
// VMM's socket sends (to a connection the host made to a port QEMU listens
// on) is not new, so it is never rejected. A packet with no socket (one
// the kernel makes) has no uid and does not match.
func buildGuard(c *nftables.Conn, t *nftables.Table, g *Guard) {
	base := c.AddChain(&nftables.Chain{Name: guardChain, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: policy(nftables.ChainPolicyAccept)})
	vmm := c.AddChain(&nftables.Chain{Name: guardVMMChain, Table: t})
	rule := func(ch *nftables.Chain, es ...[]expr.Any) {
		var all []expr.Any
		for _, e := range es {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}

	rule(base, skuidRange(g.UIDMin, g.UIDMax), ctState(expr.CtStateBitNEW), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: guardVMMChain}})

	// Accepting here ends the base chain too: the rejects below are skipped.
	for _, r := range g.resolvers() {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(vmm, daddr(netip.PrefixFrom(r, r.BitLen())), l4(proto), dport(53), verdict(expr.VerdictAccept))
		}
	}
	if g.hasHostAccess() {
		for _, p := range guardedDsts {
			if p.Addr().IsLoopback() {
				rule(vmm, skuidRange(g.HostAccessMin, g.HostAccessMax), daddr(p), verdict(expr.VerdictAccept))
			}
		}
	}
	tcpReset := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	unreachable := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}
	for _, p := range guardedDsts {
		rule(vmm, daddr(p), l4(unix.IPPROTO_TCP), tcpReset)
		rule(vmm, daddr(p), unreachable)
	}
}

// guardPrivErr is privErr for the guard, whose lack of CAP_NET_ADMIN is
// not about bridge networks.
func guardPrivErr(what string, err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission) {
		return errdefs.Mark(fmt.Errorf("%s: the daemon needs CAP_NET_ADMIN to keep jailed VMs off the host's own services (run it as root with its capabilities)", what), errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, err)
}
