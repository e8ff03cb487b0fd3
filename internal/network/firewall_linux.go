package network

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName names kiln's nftables tables: one of family inet (routing,
// NAT, what reaches the host) and one of family bridge (what each VM's
// TAP may send). kiln owns both whole: they are rebuilt from state in one
// batch at every change, so no rule outlives what it was made for.
const TableName = "kiln"

// Firewall is everything kiln's tables say.
type Firewall struct {
	Networks []FirewallNetwork
	// Ports are the TAPs of the VMs that hold a lease, with what each may
	// send as. A kiln TAP that is not here may send nothing.
	Ports []FirewallPort
	DNATs []DNAT
}

// FirewallNetwork is a bridge network as the firewall sees it.
type FirewallNetwork struct {
	Bridge string
	Subnet netip.Prefix
	// Gateway is the bridge's address, where the network's name server
	// listens: the one address DNS from the bridge may go to.
	Gateway netip.Addr
	Egress  bool
}

// FirewallPort is a VM's TAP and the addresses it owns: the only source
// MAC its frames, the only sender its ARP and the only source its IPv4
// packets may carry.
type FirewallPort struct {
	TAP string
	MAC net.HardwareAddr
	IP  netip.Addr
}

// VMPort is the port of the VM with this ID and leased address: its TAP
// and its MAC are derived from the ID as the VM's NIC is (TAPName, MAC).
func VMPort(vmID string, ip netip.Addr) FirewallPort {
	mac, _ := net.ParseMAC(MAC(vmID))
	return FirewallPort{TAP: TAPName(vmID), MAC: mac, IP: ip}
}

// DNAT is a published port of a VM on a bridge network.
type DNAT struct {
	Protocol string // TCP or UDP
	// HostIP: "" or DefaultHostIP means every local address.
	HostIP    string
	HostPort  int
	VMIP      netip.Addr
	GuestPort int
}

// ApplyFirewall replaces kiln's tables with fw, in one netlink batch:
// each table is added (if missing), deleted and made anew, so the result
// is the same whatever was there, and no packet sees one table new and the
// other old. With no networks both are removed. The guard that keeps VMMs
// off the host's own services is not in them: it has a table of its own
// (ApplyGuard).
//
//	inet kiln:
//	localnet (filter, prerouting, raw): from a kiln bridge with source or
//	                          destination in 127/8: drop (before NAT and
//	                          conntrack: route_localnet is on for the bridges)
//	prerouting, output (nat): published ports: [ip daddr H | fib daddr type local]
//	                          l4proto dport P -> dnat to VMIP:G
//	postrouting (nat):        from 127/8 to a kiln bridge, and from an egress
//	                          network to elsewhere: masquerade
//	forward (filter):         established/related, published (ct status dnat),
//	                          within one bridge, and out of egress networks (to
//	                          anything but another kiln bridge): accept;
//	                          anything else from or to a kiln bridge: drop
//	input (filter):           from a kiln bridge only replies, DNS (53) to
//	                          that bridge's own gateway, and ICMP
//
//	bridge kiln:
//	prerouting (filter):      from each VM's TAP, IPv4 from its MAC and IP,
//	                          and Ethernet/IPv4 ARP from its MAC whose sender
//	                          is its MAC and IP: accept; anything else from a
//	                          kiln TAP (other addresses, IPv6, VLAN tags,
//	                          other protocols, a TAP with no lease): drop
func ApplyFirewall(fw Firewall) error {
	c, err := nftables.New()
	if err != nil {
		return privErr("opening nftables", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	bt := &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
	for _, tab := range []*nftables.Table{t, bt} {
		c.AddTable(tab)
		c.DelTable(tab)
	}
	if len(fw.Networks) > 0 {
		build(c, c.AddTable(t), fw)
		buildPorts(c, c.AddTable(bt), fw.Ports)
	}
	if err := c.Flush(); err != nil {
		return privErr("applying firewall tables inet and bridge "+TableName, err)
	}
	return nil
}

func build(c *nftables.Conn, t *nftables.Table, fw Firewall) {
	accept := policy(nftables.ChainPolicyAccept)
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: accept})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: accept})
	localnet := c.AddChain(&nftables.Chain{Name: "localnet", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: accept})
	rule := ruleAdder(c, t)

	// route_localnet lets the host route 127/8 to a bridge (published
	// ports on 127.0.0.1), and with it the kernel would take 127/8 from the
	// bridge too: a VM could reach the host's loopback services, or a
	// published port of another VM through its DNAT. Nothing from a VM
	// has such an address on the wire (the replies to a published port
	// on 127.0.0.1 come to the gateway, masqueraded), so it is dropped
	// here, before NAT could change it.
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	fromBridge := ifname(unix.NFT_META_IIFNAME, BridgePrefix, expr.CmpOpEq)
	rule(localnet, fromBridge, ipv4(), ipPrefix(12, loopback), verdict(expr.VerdictDrop))
	rule(localnet, fromBridge, ipv4(), ipPrefix(16, loopback), verdict(expr.VerdictDrop))

	for _, d := range fw.DNATs {
		proto := byte(unix.IPPROTO_TCP)
		if d.Protocol == UDP {
			proto = unix.IPPROTO_UDP
		}
		var dst []expr.Any
		if d.HostIP == "" || d.HostIP == DefaultHostIP {
			dst = fibLocal()
		} else if a, err := netip.ParseAddr(d.HostIP); err == nil {
			dst = ipAddr(16, a)
		} else {
			continue
		}
		to := []expr.Any{
			&expr.Immediate{Register: 1, Data: d.VMIP.AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(d.GuestPort))},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}
		for _, ch := range []*nftables.Chain{pre, out} {
			rule(ch, ipv4(), dst, l4(proto), dport(d.HostPort), to)
		}
	}

	rule(post, ipv4(), ipPrefix(12, loopback), ifname(unix.NFT_META_OIFNAME, BridgePrefix, expr.CmpOpEq), masq())
	for _, n := range fw.Networks {
		if n.Egress {
			rule(post, ipv4(), ipPrefix(12, n.Subnet), ifname(unix.NFT_META_OIFNAME, n.Bridge+"\x00", expr.CmpOpNeq), masq())
		}
	}

	rule(fwd, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	rule(fwd, ctStatus(ipsDstNAT), ifname(unix.NFT_META_OIFNAME, BridgePrefix, expr.CmpOpEq), verdict(expr.VerdictAccept))
	for _, n := range fw.Networks {
		rule(fwd, ifname(unix.NFT_META_IIFNAME, n.Bridge+"\x00", expr.CmpOpEq), ifname(unix.NFT_META_OIFNAME, n.Bridge+"\x00", expr.CmpOpEq), verdict(expr.VerdictAccept))
		if n.Egress { // out, but not into another kiln network
			rule(fwd, ifname(unix.NFT_META_IIFNAME, n.Bridge+"\x00", expr.CmpOpEq), ifname(unix.NFT_META_OIFNAME, BridgePrefix, expr.CmpOpNeq), verdict(expr.VerdictAccept))
		}
	}
	rule(fwd, ifname(unix.NFT_META_IIFNAME, BridgePrefix, expr.CmpOpEq), verdict(expr.VerdictDrop))
	rule(fwd, ifname(unix.NFT_META_OIFNAME, BridgePrefix, expr.CmpOpEq), verdict(expr.VerdictDrop))

	rule(in, fromBridge, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	// DNS goes only to the VM's own gateway: another network's name
	// server would forward for a network without egress, and a resolver
	// of the host's (on another of its addresses) is no VM's business.
	for _, n := range fw.Networks {
		if !n.Gateway.Is4() {
			continue
		}
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(in, ifname(unix.NFT_META_IIFNAME, n.Bridge+"\x00", expr.CmpOpEq), ipv4(), ipAddr(16, n.Gateway), l4(proto), dport(53), verdict(expr.VerdictAccept))
		}
	}
	rule(in, fromBridge, l4(unix.IPPROTO_ICMP), verdict(expr.VerdictAccept))
	rule(in, fromBridge, verdict(expr.VerdictDrop))
}

// bridgeFilterPriority is what nft calls priority filter in the bridge
// family (NF_BR_PRI_FILTER_BRIDGED).
var bridgeFilterPriority = nftables.ChainPriorityRef(-200)

// buildPorts adds the chain that holds each VM to its own addresses. It
// hooks bridge prerouting, which sees every frame a port sends before the
// bridge learns its source MAC or passes it on, to another port or to the
// host: a frame dropped here poisons no forwarding entry and no neighbour
// table. What a port may send is listed, the rest dropped: a VM is given
// no IPv6, and needs no other protocol, no VLAN tag (a tagged frame's
// ether type reads 802.1Q here) and no other address.
func buildPorts(c *nftables.Conn, t *nftables.Table, ports []FirewallPort) {
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: bridgeFilterPriority, Policy: policy(nftables.ChainPolicyAccept)})
	rule := ruleAdder(c, t)
	for _, p := range ports {
		if len(p.MAC) != 6 || !p.IP.Is4() || p.TAP == "" {
			continue // no rule: the drop below takes its frames
		}
		tap := ifname(unix.NFT_META_IIFNAME, p.TAP+"\x00", expr.CmpOpEq)
		from := payload(expr.PayloadBaseLLHeader, 6, p.MAC) // ether saddr
		rule(pre, tap, from, etherType(unix.ETH_P_IP), ipAddr(12, p.IP), verdict(expr.VerdictAccept))
		// ARP for IPv4 over Ethernet only, so that the sender's fields
		// are where they are read; the kernel ignores any other kind.
		rule(pre, tap, from, etherType(unix.ETH_P_ARP),
			payload(expr.PayloadBaseNetworkHeader, 0, binaryutil.BigEndian.PutUint16(1)), // arp htype 1 (Ethernet)
			payload(expr.PayloadBaseNetworkHeader, 2, binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)),
			payload(expr.PayloadBaseNetworkHeader, 4, []byte{6}),       // arp hlen 6
			payload(expr.PayloadBaseNetworkHeader, 5, []byte{4}),       // arp plen 4
			payload(expr.PayloadBaseNetworkHeader, 8, p.MAC),           // arp saddr ether
			payload(expr.PayloadBaseNetworkHeader, 14, p.IP.AsSlice()), // arp saddr ip
			verdict(expr.VerdictAccept))
	}
	rule(pre, ifname(unix.NFT_META_IIFNAME, TAPPrefix, expr.CmpOpEq), verdict(expr.VerdictDrop))
}

// ruleAdder returns a function that adds a rule made of the given
// matches and verdict, in order, to a chain of t.
func ruleAdder(c *nftables.Conn, t *nftables.Table) func(*nftables.Chain, ...[]expr.Any) {
	return func(ch *nftables.Chain, es ...[]expr.Any) {
		var all []expr.Any
		for _, e := range es {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
}

// payload matches the bytes at offset off of a header against want.
func payload(base expr.PayloadBase, off uint32, want []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: uint32(len(want))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: want},
	}
}

// etherType matches a frame's ether type.
func etherType(t uint16) []expr.Any {
	return payload(expr.PayloadBaseLLHeader, 12, binaryutil.BigEndian.PutUint16(t))
}

// skuidRange matches packets of a socket whose owner's uid is within
// [lo, hi]. The uid is loaded in host byte order and range compares
// bytes, so it is turned big-endian first (as nft does).
func skuidRange(lo, hi uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: binaryutil.BigEndian.PutUint32(lo), ToData: binaryutil.BigEndian.PutUint32(hi)},
	}
}

func policy(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

func ipv4() []expr.Any { return nfproto(unix.NFPROTO_IPV4) }

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// daddr matches a destination within p, IPv4 or IPv6 (the family checked
// first: in an inet table a packet may be either).
func daddr(p netip.Prefix) []expr.Any {
	if p.Addr().Is4() {
		return append(ipv4(), ipPrefix(16, p)...)
	}
	return append(nfproto(unix.NFPROTO_IPV6), ipPrefix(24, p)...)
}

// ifname matches an interface name: a name ending in NUL matches exactly,
// one without (a prefix) matches every name that starts with it.
func ifname(key expr.MetaKey, name string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(name)},
	}
}

// ipAddr matches the IPv4 address at offset off of the IP header (12
// source, 16 destination).
func ipAddr(off uint32, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// ipPrefix matches the address at offset off of the IP header against p:
// IPv4 (12 source, 16 destination) or IPv6 (8, 24), as p is.
func ipPrefix(off uint32, p netip.Prefix) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	cmp := &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()}
	if p.Bits() == p.Addr().BitLen() {
		return []expr.Any{load, cmp}
	}
	mask := make([]byte, n)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{load, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)}, cmp}
}

func fibLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func dport(p int) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p))},
	}
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func ctStatus(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// FirewallDNATTargets returns the VM addresses kiln's table DNATs to ("" if
// the table does not exist): what tests and reconcile check against state.
func FirewallDNATTargets() ([]netip.Addr, bool, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, false, privErr("opening nftables", err)
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		return nil, false, nil
	}
	var out []netip.Addr
	for _, name := range []string{"prerouting", "output"} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if err != nil {
			return nil, true, fmt.Errorf("listing rules of %s: %w", name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if im, ok := e.(*expr.Immediate); ok && len(im.Data) == 4 && im.Register == 1 {
					a, _ := netip.AddrFromSlice(im.Data)
					out = append(out, a)
				}
			}
		}
	}
	return out, true, nil
}

// ipsDstNAT is conntrack's IPS_DST_NAT status bit: the connection was
// DNATed (a published port).
const ipsDstNAT = 1 << 5
