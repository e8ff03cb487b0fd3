package network

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a locked thread moved into a fresh network
// namespace, which goes when fn returns.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	// The thread is not unlocked: it ends with the goroutine, and with it
	// the namespace, rather than going back to the pool in the wrong one.
	orig, err := netns.Get()
	if err != nil {
		t.Error(err)
		return
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Errorf("creating a network namespace: %v", err)
		return
	}
	defer ns.Close()
	defer netns.Set(orig)
	fn()
}

func TestApplyFirewallIsIdempotentAndRemovesOldRules(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() {
			vm1, vm2 := netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.3")
			fw := Firewall{
				Networks: []FirewallNetwork{
					{Bridge: BridgeName("n"), Subnet: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"), Egress: true},
					{Bridge: BridgeName("m"), Subnet: netip.MustParsePrefix("10.98.0.0/24"), Gateway: netip.MustParseAddr("10.98.0.1")},
				},
				Ports: []FirewallPort{VMPort("vm1", vm1), VMPort("vm2", vm2)},
				DNATs: []DNAT{
					{Protocol: TCP, HostPort: 8080, VMIP: vm1, GuestPort: 80},
					{Protocol: UDP, HostIP: "127.0.0.1", HostPort: 5353, VMIP: vm2, GuestPort: 53},
				},
			}
			for range 2 {
				if err := ApplyFirewall(fw); err != nil {
					t.Errorf("ApplyFirewall: %v", err)
					return
				}
			}
			got, exists, err := FirewallDNATTargets()
			if err != nil || !exists || len(got) != 4 {
				t.Errorf("DNAT targets after applying twice = %v, %v, %v; want 4 (2 ports x prerouting, output)", got, exists, err)
				return
			}
			fw.DNATs = fw.DNATs[:1]
			if err := ApplyFirewall(fw); err != nil {
				t.Error(err)
				return
			}
			got, _, _ = FirewallDNATTargets()
			for _, a := range got {
				if a == vm2 {
					t.Errorf("a DNAT to %s outlived its port", vm2)
				}
			}
			if len(got) != 2 {
				t.Errorf("DNAT targets = %v, want vm1 twice", got)
			}
			wantRules(t, TableName, "localnet", []string{
				`iifname "kb-*" nfproto ipv4 saddr 127.0.0.0/8 drop`,
				`iifname "kb-*" nfproto ipv4 daddr 127.0.0.0/8 drop`,
			})
			n, m := BridgeName("n"), BridgeName("m")
			wantRules(t, TableName, "input", []string{
				`iifname "kb-*" ct state established,related accept`,
				`iifname "` + n + `" nfproto ipv4 daddr 10.99.0.1/32 l4proto udp dport 53 accept`,
				`iifname "` + n + `" nfproto ipv4 daddr 10.99.0.1/32 l4proto tcp dport 53 accept`,
				`iifname "` + m + `" nfproto ipv4 daddr 10.98.0.1/32 l4proto udp dport 53 accept`,
				`iifname "` + m + `" nfproto ipv4 daddr 10.98.0.1/32 l4proto tcp dport 53 accept`,
				`iifname "kb-*" l4proto icmp accept`,
				`iifname "kb-*" drop`,
			})
			port := func(tap, mac, ip string) []string {
				return []string{
					fmt.Sprintf(`iifname %q ether saddr %s ether type ip saddr %s/32 accept`, tap, mac, ip),
					fmt.Sprintf(`iifname %q ether saddr %s ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether %s arp saddr ip %s accept`, tap, mac, mac, ip),
				}
			}
			vm1Rules := port(TAPName("vm1"), MAC("vm1"), "10.99.0.2")
			wantBridgeRules := func(want ...[]string) {
				t.Helper()
				want = append(want, []string{`iifname "kn-*" drop`})
				if got, want := familyRuleTexts(t, nftables.TableFamilyBridge, TableName, "prerouting"), slices.Concat(want...); !slices.Equal(got, want) {
					t.Errorf("rules of bridge %s prerouting:\n\t%s\nwant:\n\t%s", TableName, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
				}
			}
			wantBridgeRules(vm1Rules, port(TAPName("vm2"), MAC("vm2"), "10.99.0.3"))
			fw.Ports = fw.Ports[:1]
			if err := ApplyFirewall(fw); err != nil {
				t.Error(err)
				return
			}
			wantBridgeRules(vm1Rules)
			if err := ApplyFirewall(Firewall{}); err != nil {
				t.Error(err)
				return
			}
			if _, exists, _ := FirewallDNATTargets(); exists {
				t.Error("the table is left without networks")
			}
			if c, err := nftables.New(); err == nil {
				if tables, _ := c.ListTablesOfFamily(nftables.TableFamilyBridge); len(tables) != 0 {
					t.Errorf("bridge tables %v are left without networks", tables)
				}
			}
		})
	}()
	<-done
}
