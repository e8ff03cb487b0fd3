package network

import (
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"

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
				Networks: []FirewallNetwork{{Bridge: BridgeName("n"), Subnet: netip.MustParsePrefix("10.99.0.0/24"), Egress: true}},
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
			if out, err := exec.Command("nft", "list", "table", "inet", TableName).CombinedOutput(); err == nil {
				t.Logf("%s", out)
			}
			if err := ApplyFirewall(Firewall{}); err != nil {
				t.Error(err)
				return
			}
			if _, exists, _ := FirewallDNATTargets(); exists {
				t.Error("the table is left without networks")
			}
		})
	}()
	<-done
}
