package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// These tests play hostile guests without VMs. Each runs in a network
// namespace of its own (the host), where the bridges are; a stand-in for
// a VM is another namespace whose eth0 is a veth with the VM's MAC, the
// other end of which is a port of the bridge named as the VM's TAP. What
// the guest sends is written raw on its eth0 through a packet socket, so
// it can be anything a hostile guest kernel could send.

// testVM is a stand-in for a VM on a bridge.
type testVM struct {
	port FirewallPort
	ns   netns.NsHandle
	host netns.NsHandle // the test's namespace, to come back to
}

// newTestVM makes a VM's namespace and its port on bridge; cidr (if not
// "") is given to its eth0, with a default route through gateway. nil
// (after reporting why) when it cannot.
func newTestVM(t *testing.T, host netns.NsHandle, bridge string, port FirewallPort, cidr, gateway string) *testVM {
	t.Helper()
	ns, err := netns.New() // the thread is in it now
	if err != nil {
		t.Errorf("creating a namespace for %s: %v", port.TAP, err)
		return nil
	}
	if err := netns.Set(host); err != nil {
		t.Errorf("coming back to the test's namespace: %v", err)
		return nil
	}
	vm := &testVM{port: port, ns: ns, host: host}
	t.Cleanup(func() { ns.Close() })
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Error(err)
		return nil
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: port.TAP, MasterIndex: br.Attrs().Index},
		PeerName:  "eth0", PeerHardwareAddr: port.MAC, PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Errorf("adding port %s: %v", port.TAP, err)
		return nil
	}
	tap, err := netlink.LinkByName(port.TAP)
	if err == nil {
		err = netlink.LinkSetUp(tap)
	}
	if err != nil {
		t.Errorf("bringing up port %s: %v", port.TAP, err)
		return nil
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err == nil {
		err = h.LinkSetUp(eth0)
	}
	if err == nil && cidr != "" {
		var a *netlink.Addr
		if a, err = netlink.ParseAddr(cidr); err == nil {
			err = h.AddrAdd(eth0, a)
		}
		if err == nil {
			err = h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gateway)})
		}
	}
	if err != nil {
		t.Errorf("readying eth0 of %s: %v", port.TAP, err)
		return nil
	}
	// A link sends nothing until the kernel has seen its carrier come up
	// (linkwatch, which may take a second), the bridge's included.
	deadline := time.Now().Add(5 * time.Second)
	for _, l := range []struct {
		h    *netlink.Handle
		name string
	}{{nil, bridge}, {nil, port.TAP}, {h, "eth0"}} {
		for {
			var link netlink.Link
			if l.h == nil {
				link, err = netlink.LinkByName(l.name)
			} else {
				link, err = l.h.LinkByName(l.name)
			}
			if err == nil && link.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s is not up: %v", l.name, err)
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return vm
}

// in runs fn on the test's thread moved into the VM's namespace: sockets
// made there stay there.
func (vm *testVM) in(fn func()) {
	netns.Set(vm.ns)
	defer netns.Set(vm.host)
	fn()
}

// packetSocket opens a raw packet socket on a link of the current
// namespace: what it reads is every frame the link receives, what it
// writes goes out as it is.
func packetSocket(t *testing.T, link string) int {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Errorf("packet socket on %s: %v", link, err)
		return -1
	}
	all := int(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, unix.ETH_P_ALL))) // htons
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, all)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(all), Ifindex: l.Attrs().Index})
	}
	if err != nil {
		t.Errorf("packet socket on %s: %v", link, err)
		return -1
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// received drains a packet socket of the frames that came in (not those
// the link sent).
func received(fd int) [][]byte {
	var out [][]byte
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return out
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethFrame(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := append(append(slices.Clone(dst), src...), byte(typ>>8), byte(typ))
	return append(b, payload...)
}

// ipv4Packet is an IPv4 header (no options, checksummed) and payload.
func ipv4Packet(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	return append(h, payload...)
}

// ipv6Packet is an IPv6 header with no next header, and payload.
func ipv6Packet(src, dst netip.Addr, payload []byte) []byte {
	h := make([]byte, 40)
	h[0], h[6], h[7] = 0x60, 59, 255
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, payload...)
}

// udpDatagram is a UDP header (no checksum, which IPv4 allows) and
// payload.
func udpDatagram(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h, sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

// arpRequest is an Ethernet/IPv4 ARP request: who has tpa, tell spa (at
// sha). A gratuitous one has spa == tpa.
func arpRequest(sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	b = append(append(b, sha...), spa.AsSlice()...)
	b = append(append(b, make([]byte, 6)...), tpa.AsSlice()...)
	return b
}

// arpSender returns the sender of an ARP frame ("" if it is none).
func arpSender(f []byte) string {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP {
		return ""
	}
	a, _ := netip.AddrFromSlice(f[28:32])
	return fmt.Sprintf("%s %s", net.HardwareAddr(f[22:28]), a)
}

// TestPortsStopSpoofing plays a hostile guest on a bridge that forges
// its source MAC, its IPv4 source and its ARP sender (to take the
// gateway's address or a peer's, or to point its own at another MAC),
// sends IPv6 and VLAN-tagged frames, and a port with no lease that sends
// at all. None of it reaches the peer or the host, nor poisons the
// bridge's forwarding table or the host's neighbour table, while the same
// guest's honest IPv4 and ARP get through.
func TestPortsStopSpoofing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { portsStopSpoofing(t) })
	}()
	<-done
}

func portsStopSpoofing(t *testing.T) {
	host, err := netns.Get()
	if err != nil {
		t.Error(err)
		return
	}
	defer host.Close()
	subnet, gw := netip.MustParsePrefix("10.97.0.0/24"), netip.MustParseAddr("10.97.0.1")
	bridge := BridgeName("spoof")
	if err := EnsureBridge(bridge, gw, subnet); err != nil {
		t.Errorf("EnsureBridge: %v", err)
		return
	}
	aIP, bIP, cIP := netip.MustParseAddr("10.97.0.2"), netip.MustParseAddr("10.97.0.3"), netip.MustParseAddr("10.97.0.4")
	a := newTestVM(t, host, bridge, VMPort("vm-a", aIP), "", "")
	b := newTestVM(t, host, bridge, VMPort("vm-b", bIP), "", "")
	c := newTestVM(t, host, bridge, VMPort("vm-c", cIP), "", "") // no lease
	if a == nil || b == nil || c == nil {
		return
	}
	aMAC, bMAC := a.port.MAC, b.port.MAC
	fakeMAC := net.HardwareAddr{0x52, 0x54, 0x00, 0x66, 0x66, 0x66}

	var aOut, bOut, cOut, bIn int
	a.in(func() { aOut = packetSocket(t, "eth0") })
	b.in(func() { bOut, bIn = packetSocket(t, "eth0"), packetSocket(t, "eth0") })
	c.in(func() { cOut = packetSocket(t, "eth0") })
	hostIn := packetSocket(t, bridge)
	if t.Failed() {
		return
	}
	send := func(fd int, frame []byte) {
		if _, err := unix.Write(fd, frame); err != nil {
			t.Errorf("sending a frame: %v", err)
		}
	}
	// marked is an IPv4 broadcast from src (MAC, address) carrying a mark
	// to find it by; IP protocol 253 is for experiments.
	marked := func(mac net.HardwareAddr, src netip.Addr, mark string) []byte {
		return ethFrame(broadcastMAC, mac, unix.ETH_P_IP, ipv4Packet(src, netip.MustParseAddr("10.97.0.255"), 253, []byte(mark)))
	}
	// arrived reports which marks and ARP senders reached the peer and
	// the host.
	arrived := func() (peer, host map[string]bool) {
		time.Sleep(200 * time.Millisecond) // frames in flight; nothing to wait on
		peer, host = map[string]bool{}, map[string]bool{}
		for _, got := range []struct {
			fd   int
			seen map[string]bool
		}{{bIn, peer}, {hostIn, host}} {
			for _, f := range received(got.fd) {
				if s := arpSender(f); s != "" {
					got.seen["arp "+s] = true
				}
				for _, m := range []string{"honest", "forged-mac", "forged-ip", "ipv6", "vlan", "no-lease"} {
					if bytes.Contains(f, []byte("mark:"+m+".")) {
						got.seen[m] = true
					}
				}
			}
		}
		return peer, host
	}

	// IPv6 to all nodes (no next header) and IPv4 behind a VLAN tag:
	// well-formed, or the bridge would drop them itself.
	ipv6 := ethFrame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, aMAC, unix.ETH_P_IPV6, ipv6Packet(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1"), []byte("mark:ipv6.")))
	vlan := ethFrame(broadcastMAC, aMAC, unix.ETH_P_8021Q, append([]byte{0, 5, 0x08, 0x00}, // VID 5, then IPv4
		ipv4Packet(aIP, netip.MustParseAddr("10.97.0.255"), 253, []byte("mark:vlan."))...))

	// Without the rules all of these get through: what is stopped below
	// is stopped by them.
	send(aOut, marked(aMAC, bIP, "mark:forged-ip."))
	send(aOut, ipv6)
	send(aOut, vlan)
	peer, hostSaw := arrived()
	for _, m := range []string{"forged-ip", "ipv6", "vlan"} {
		if !peer[m] || !hostSaw[m] {
			t.Errorf("without the rules %s reached the peer %v and the host %v, want both: the test proves nothing", m, peer[m], hostSaw[m])
		}
	}
	if t.Failed() {
		return
	}

	fw := Firewall{
		Networks: []FirewallNetwork{{Bridge: bridge, Subnet: subnet, Gateway: gw}},
		Ports:    []FirewallPort{a.port, b.port},
	}
	if err := ApplyFirewall(fw); err != nil {
		t.Errorf("ApplyFirewall: %v", err)
		return
	}
	// The peer speaks first: the bridge learns its MAC on its port.
	send(bOut, marked(bMAC, bIP, "mark:peer."))
	send(aOut, marked(aMAC, aIP, "mark:honest."))
	send(aOut, ethFrame(broadcastMAC, aMAC, unix.ETH_P_ARP, arpRequest(aMAC, aIP, gw)))
	time.Sleep(50 * time.Millisecond) // the host learns the honest entry first
	send(aOut, marked(bMAC, aIP, "mark:forged-mac."))
	send(aOut, marked(aMAC, bIP, "mark:forged-ip."))
	send(aOut, ethFrame(broadcastMAC, aMAC, unix.ETH_P_ARP, arpRequest(aMAC, gw, gw)))     // gratuitous: I am the gateway
	send(aOut, ethFrame(broadcastMAC, aMAC, unix.ETH_P_ARP, arpRequest(aMAC, bIP, gw)))    // I am the peer
	send(aOut, ethFrame(broadcastMAC, aMAC, unix.ETH_P_ARP, arpRequest(fakeMAC, aIP, gw))) // my address is elsewhere
	send(aOut, ethFrame(broadcastMAC, bMAC, unix.ETH_P_ARP, arpRequest(bMAC, bIP, gw)))    // the peer's, whole
	send(aOut, ipv6)
	send(aOut, vlan)
	send(cOut, marked(c.port.MAC, cIP, "mark:no-lease."))
	peer, hostSaw = arrived()

	honestARP := "arp " + aMAC.String() + " " + aIP.String()
	for _, want := range []string{"honest", honestARP} {
		if !peer[want] || !hostSaw[want] {
			t.Errorf("honest %q: reached the peer %v, the host %v; want both", want, peer[want], hostSaw[want])
		}
	}
	for _, forged := range []struct{ what, key string }{
		{"a forged source MAC", "forged-mac"},
		{"a forged IPv4 source", "forged-ip"},
		{"ARP claiming the gateway's address", "arp " + aMAC.String() + " " + gw.String()},
		{"ARP claiming the peer's address", "arp " + aMAC.String() + " " + bIP.String()},
		{"ARP with another sender MAC", "arp " + fakeMAC.String() + " " + aIP.String()},
		{"the peer's ARP, forged whole", "arp " + bMAC.String() + " " + bIP.String()},
		{"IPv6", "ipv6"},
		{"a VLAN-tagged frame", "vlan"},
		{"a frame from a TAP with no lease", "no-lease"},
	} {
		if peer[forged.key] || hostSaw[forged.key] {
			t.Errorf("%s reached the peer %v, the host %v; want neither", forged.what, peer[forged.key], hostSaw[forged.key])
		}
	}

	// The host's neighbours: the guest's honest ARP made its entry, and
	// nothing moved it or gave it another address.
	brLink, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Error(err)
		return
	}
	neighs, err := netlink.NeighList(brLink.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Error(err)
		return
	}
	gotA := false
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		switch {
		case ip == aIP && bytes.Equal(n.HardwareAddr, aMAC):
			gotA = true
		case (ip == aIP || ip == bIP) && len(n.HardwareAddr) > 0:
			t.Errorf("the host's neighbour %s is at %s: poisoned", ip, n.HardwareAddr)
		}
	}
	if !gotA {
		t.Errorf("the host has no neighbour %s at %s after its honest ARP: %+v", aIP, aMAC, neighs)
	}
	// The bridge's forwarding table: the peer's MAC is still on its own
	// port.
	fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		t.Error(err)
		return
	}
	aPort, _ := netlink.LinkByName(a.port.TAP)
	bPort, _ := netlink.LinkByName(b.port.TAP)
	for _, e := range fdb {
		if bytes.Equal(e.HardwareAddr, bMAC) && e.LinkIndex != bPort.Attrs().Index {
			t.Errorf("the bridge forwards the peer's MAC to port %d, not its own %d (%s's is %d)", e.LinkIndex, bPort.Attrs().Index, a.port.TAP, aPort.Attrs().Index)
		}
	}

	// The rules follow the state: a VM whose lease went may send nothing
	// more; without networks both tables go.
	fw.Ports = fw.Ports[1:]
	if err := ApplyFirewall(fw); err != nil {
		t.Error(err)
		return
	}
	send(aOut, marked(aMAC, aIP, "mark:honest."))
	if peer, host := arrived(); peer["honest"] || host["honest"] {
		t.Errorf("a port whose lease went still reached the peer %v, the host %v", peer["honest"], host["honest"])
	}
	if err := ApplyFirewall(Firewall{}); err != nil {
		t.Error(err)
		return
	}
	send(aOut, marked(aMAC, bIP, "mark:forged-ip."))
	if peer, _ := arrived(); !peer["forged-ip"] {
		t.Error("the bridge table outlived the networks")
	}
}

// TestBridgeDNSOnlyToOwnGateway plays a guest that looks for name servers
// beyond its own gateway's: another network's (which may forward where
// its own network may not), and the host's on loopback (which
// route_localnet would let through). Both are dropped, while its own
// gateway answers over UDP and TCP, and a port published on 127.0.0.1
// still reaches it.
func TestBridgeDNSOnlyToOwnGateway(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { bridgeDNSOnlyToOwnGateway(t) })
	}()
	<-done
}

func bridgeDNSOnlyToOwnGateway(t *testing.T) {
	host, err := netns.Get()
	if err != nil {
		t.Error(err)
		return
	}
	defer host.Close()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Errorf("bringing lo up: %v", err)
		return
	}
	nets := []FirewallNetwork{
		{Bridge: BridgeName("one"), Subnet: netip.MustParsePrefix("10.96.1.0/24"), Gateway: netip.MustParseAddr("10.96.1.1")},
		{Bridge: BridgeName("two"), Subnet: netip.MustParsePrefix("10.96.2.0/24"), Gateway: netip.MustParseAddr("10.96.2.1"), Egress: true},
	}
	for _, n := range nets {
		if err := EnsureBridge(n.Bridge, n.Gateway, n.Subnet); err != nil {
			t.Errorf("EnsureBridge: %v", err)
			return
		}
	}
	for _, sysctl := range []string{"route_localnet", "rp_filter"} {
		if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + nets[0].Bridge + "/" + sysctl); err != nil || string(b) != "1\n" {
			t.Errorf("%s of the bridge = %q, %v; want 1", sysctl, b, err)
		}
	}
	vmIP := netip.MustParseAddr("10.96.1.2")
	vm := newTestVM(t, host, nets[0].Bridge, VMPort("vm-one", vmIP), "10.96.1.2/24", "10.96.1.1")
	if vm == nil {
		return
	}
	d := NewDNS(slog.New(slog.DiscardHandler))
	defer d.Close()
	d.Upstream = func() []string { return nil }
	err = d.Update([]DNSZone{
		{Network: "one", Gateway: nets[0].Gateway, Records: map[string]netip.Addr{"web": vmIP}},
		{Network: "two", Gateway: nets[1].Gateway, Egress: true, Records: map[string]netip.Addr{"web": netip.MustParseAddr("10.96.2.2")}},
	})
	if err != nil {
		t.Error(err)
		return
	}
	// The host's own resolvers on loopback: they count what reaches them.
	resolvers := map[string]chan struct{}{}
	for _, addr := range []string{"127.0.0.53:53", "127.0.0.1:53"} {
		c, err := net.ListenPacket("udp4", addr)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		got := make(chan struct{}, 100)
		resolvers[addr] = got
		go func() {
			buf := make([]byte, 1500)
			for {
				if _, _, err := c.ReadFrom(buf); err != nil {
					return
				}
				got <- struct{}{}
			}
		}()
	}

	// What the guest asks, and how: a query over UDP or TCP through its
	// own stack; to loopback, a frame written raw to the gateway's MAC
	// (no guest kernel sends 127/8 out of eth0 by itself).
	var raw int
	vm.in(func() { raw = packetSocket(t, "eth0") })
	br, err := netlink.LinkByName(nets[0].Bridge)
	if err != nil || raw < 0 {
		t.Error(err)
		return
	}
	ask := func(proto, server string) string {
		var r string
		vm.in(func() { r = askDNS(t, proto, server) })
		return r
	}
	askLoopback := func(addr string) bool {
		dst := netip.MustParseAddrPort(addr)
		q := query(t, "web.", dnsmessage.TypeA)
		f := ethFrame(br.Attrs().HardwareAddr, vm.port.MAC, unix.ETH_P_IP, ipv4Packet(vmIP, dst.Addr(), unix.IPPROTO_UDP, udpDatagram(40000, dst.Port(), q)))
		if _, err := unix.Write(raw, f); err != nil {
			t.Errorf("sending to %s: %v", addr, err)
		}
		select {
		case <-resolvers[addr]:
			return true
		case <-time.After(300 * time.Millisecond):
			return false
		}
	}

	// Without the firewall all of it gets through: what is dropped below
	// is dropped by it.
	if got := ask("udp", "10.96.2.1:53"); got != "10.96.2.2" {
		t.Errorf("without the firewall, DNS to another network's gateway: %s, want its answer", got)
	}
	if !askLoopback("127.0.0.53:53") {
		t.Error("without the firewall, DNS to the host's 127.0.0.53 does not arrive: the test proves nothing")
	}

	fw := Firewall{
		Networks: nets,
		Ports:    []FirewallPort{vm.port},
		DNATs:    []DNAT{{Protocol: TCP, HostIP: "127.0.0.1", HostPort: 18080, VMIP: vmIP, GuestPort: 80}},
	}
	if err := ApplyFirewall(fw); err != nil {
		t.Errorf("ApplyFirewall: %v", err)
		return
	}
	for _, proto := range []string{"udp", "tcp"} {
		if got := ask(proto, "10.96.1.1:53"); got != vmIP.String() {
			t.Errorf("DNS over %s to its own gateway: %s, want %s", proto, got, vmIP)
		}
		if got := ask(proto, "10.96.2.1:53"); got != "timeout" {
			t.Errorf("DNS over %s to another network's gateway: %s, want a timeout (dropped)", proto, got)
		}
	}
	for _, addr := range []string{"127.0.0.53:53", "127.0.0.1:53"} {
		if askLoopback(addr) {
			t.Errorf("DNS from the bridge to the host's %s arrived", addr)
		}
	}

	// A port published on 127.0.0.1 reaches the VM: its replies come
	// to the gateway and are turned back to loopback only after the drop.
	var web string
	vm.in(func() { web = serveTCP(t, "tcp4", "0.0.0.0:80") })
	if web == "" {
		return
	}
	if got := dialOutcome("tcp4", "127.0.0.1:18080"); got != "ok" {
		t.Errorf("the port published on 127.0.0.1: %s, want ok", got)
	}
}

// askDNS asks server for web. over proto and returns the address
// answered, "timeout" or what else happened.
func askDNS(t *testing.T, proto, server string) string {
	c, err := net.DialTimeout(proto, server, 500*time.Millisecond)
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return "timeout"
		}
		return err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	q := query(t, "web.", dnsmessage.TypeA)
	var b []byte
	if proto == "tcp" {
		if err = writeTCPMessage(c, q); err == nil {
			b, err = readTCPMessage(c)
		}
	} else if _, err = c.Write(q); err == nil {
		buf := make([]byte, 1500)
		var n int
		n, err = c.Read(buf)
		b = buf[:n]
	}
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return "timeout"
		}
		return err.Error()
	}
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil || len(m.Answers) != 1 {
		return fmt.Sprintf("no answer (%v, %v)", err, m.Header.RCode)
	}
	return netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A).String()
}
