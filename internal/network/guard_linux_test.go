package network

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/errdefs"
)

// The uid ranges of the tests' guard, as kiln's: the VMMs', and within it
// the host-access one, off its ends.
const (
	testUIDMin        = 1879048192
	testUIDMax        = 1879113727
	testHostAccessMin = testUIDMin + 8
	testHostAccessMax = testUIDMin + 9
)

func testGuard() *Guard {
	return &Guard{
		UIDMin:        testUIDMin,
		UIDMax:        testUIDMax,
		HostAccessMin: testHostAccessMin,
		HostAccessMax: testHostAccessMax,
		// 10.0.0.1 is not closed by the guard: it needs no exception.
		Resolvers: []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::1")},
	}
}

// testGuardRules are the rules of testGuard's guard-vmm chain.
var testGuardRules = []string{
	"nfproto ipv4 daddr 127.0.0.53/32 l4proto udp dport 53 accept",
	"nfproto ipv4 daddr 127.0.0.53/32 l4proto tcp dport 53 accept",
	"nfproto ipv6 daddr ::1/128 l4proto udp dport 53 accept",
	"nfproto ipv6 daddr ::1/128 l4proto tcp dport 53 accept",
	"skuid 1879048200-1879048201 nfproto ipv4 daddr 127.0.0.0/8 accept",
	"skuid 1879048200-1879048201 nfproto ipv6 daddr ::1/128 accept",
	"nfproto ipv4 daddr 127.0.0.0/8 l4proto tcp reject tcp-reset",
	"nfproto ipv4 daddr 127.0.0.0/8 reject icmpx port-unreachable",
	"nfproto ipv6 daddr ::1/128 l4proto tcp reject tcp-reset",
	"nfproto ipv6 daddr ::1/128 reject icmpx port-unreachable",
	"nfproto ipv4 daddr 169.254.0.0/16 l4proto tcp reject tcp-reset",
	"nfproto ipv4 daddr 169.254.0.0/16 reject icmpx port-unreachable",
	"nfproto ipv6 daddr fe80::/10 l4proto tcp reject tcp-reset",
	"nfproto ipv6 daddr fe80::/10 reject icmpx port-unreachable",
}

// wantTestGuard checks the guard's table holds testGuard's chains and
// rules, and nothing else.
func wantTestGuard(t *testing.T) {
	t.Helper()
	chains := tableChains(t, GuardTableName)
	if got := slices.Sorted(maps.Keys(chains)); !slices.Equal(got, []string{guardChain, guardVMMChain}) {
		t.Errorf("chains of table %s = %v, want just the guard's", GuardTableName, got)
	}
	base := chains[guardChain]
	if base == nil || base.Hooknum == nil || *base.Hooknum != *nftables.ChainHookOutput ||
		base.Type != nftables.ChainTypeFilter || base.Priority == nil || *base.Priority != *nftables.ChainPriorityFilter ||
		base.Policy == nil || *base.Policy != nftables.ChainPolicyAccept {
		t.Errorf("chain %s = %+v, want type filter hook output priority filter policy accept", guardChain, base)
	}
	if vmm := chains[guardVMMChain]; vmm == nil || vmm.Hooknum != nil {
		t.Errorf("chain %s = %+v, want a regular chain", guardVMMChain, vmm)
	}
	wantRules(t, GuardTableName, guardChain, []string{
		"skuid 1879048192-1879113727 ct state new jump guard-vmm",
	})
	wantRules(t, GuardTableName, guardVMMChain, testGuardRules)
}

func TestApplyGuard(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() {
			for range 2 {
				if err := ApplyGuard(testGuard()); err != nil {
					t.Errorf("ApplyGuard: %v", err)
					return
				}
			}
			wantTestGuard(t)
			// kiln's table is not the guard's business.
			if tableExists(t, TableName) {
				t.Errorf("ApplyGuard made table %s", TableName)
			}

			// The table is a function of the guard: the resolvers' order,
			// repeats, zones and mapped forms make no difference.
			g := testGuard()
			g.Resolvers = []netip.Addr{
				netip.MustParseAddr("::1%lo"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:127.0.0.53"),
				netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.53"),
			}
			if err := ApplyGuard(g); err != nil {
				t.Error(err)
				return
			}
			wantTestGuard(t)
			// A link-local resolver is closed too: it gets an exception,
			// in address order.
			g.Resolvers = append(g.Resolvers, netip.MustParseAddr("169.254.1.1"))
			if err := ApplyGuard(g); err != nil {
				t.Error(err)
				return
			}
			wantRules(t, GuardTableName, guardVMMChain, slices.Concat(testGuardRules[:2], []string{
				"nfproto ipv4 daddr 169.254.1.1/32 l4proto udp dport 53 accept",
				"nfproto ipv4 daddr 169.254.1.1/32 l4proto tcp dport 53 accept",
			}, testGuardRules[2:]))

			// Without host access or resolvers, only the rejects.
			if err := ApplyGuard(&Guard{UIDMin: 5, UIDMax: 5}); err != nil {
				t.Error(err)
				return
			}
			wantRules(t, GuardTableName, guardChain, []string{"skuid 5-5 ct state new jump guard-vmm"})
			rules := ruleTexts(t, GuardTableName, guardVMMChain)
			if len(rules) != 8 || strings.Contains(strings.Join(rules, "\n"), "accept") {
				t.Errorf("rules of %s without exceptions = %q, want the 8 rejects", guardVMMChain, rules)
			}

			// A guard that makes no sense is refused, and the table kept
			// as it was.
			for _, bad := range badGuards {
				if err := ApplyGuard(&bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("ApplyGuard(%+v) = %v, want an invalid argument", bad, err)
				}
			}
			wantRules(t, GuardTableName, guardChain, []string{"skuid 5-5 ct state new jump guard-vmm"})
			if got := ruleTexts(t, GuardTableName, guardVMMChain); !slices.Equal(got, rules) {
				t.Errorf("rules of %s after refused guards = %q, want %q", guardVMMChain, got, rules)
			}

			// nil: the table goes, and going again is no error.
			for range 2 {
				if err := ApplyGuard(nil); err != nil {
					t.Errorf("ApplyGuard(nil): %v", err)
					return
				}
				if tableExists(t, GuardTableName) {
					t.Errorf("table %s is left after ApplyGuard(nil)", GuardTableName)
				}
			}
		})
	}()
	<-done
}

// badGuards are guards ApplyGuard refuses.
var badGuards = []Guard{
	{UIDMin: 10, UIDMax: 9},
	{UIDMin: 1, UIDMax: 2, Resolvers: []netip.Addr{{}}},
	{UIDMin: 10, UIDMax: 20, HostAccessMin: 9, HostAccessMax: 12},  // below
	{UIDMin: 10, UIDMax: 20, HostAccessMin: 18, HostAccessMax: 21}, // above
	{UIDMin: 10, UIDMax: 20, HostAccessMin: 5, HostAccessMax: 30},  // around
	{UIDMin: 10, UIDMax: 20, HostAccessMin: 13, HostAccessMax: 12}, // empty
	{UIDMin: 10, UIDMax: 20, HostAccessMax: 12},                    // from 0
	{UIDMin: 10, UIDMax: 20, HostAccessMin: 12},                    // to 0
}

// TestGuardValidate needs no root. (TestApplyGuard has ApplyGuard refuse
// the bad guards, in a namespace of its own.)
func TestGuardValidate(t *testing.T) {
	for _, g := range badGuards {
		if err := g.validate(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v validates (%v), want an invalid argument", g, err)
		}
	}
	for _, g := range []Guard{
		{UIDMin: 10, UIDMax: 10},
		{UIDMin: 10, UIDMax: 20, HostAccessMin: 10, HostAccessMax: 20},
		{UIDMin: 10, UIDMax: 20, HostAccessMin: 20, HostAccessMax: 20},
		{UIDMin: 0, UIDMax: 20, HostAccessMin: 0, HostAccessMax: 5},
		{UIDMin: 10, UIDMax: 20, Resolvers: []netip.Addr{netip.MustParseAddr("::1%lo"), netip.MustParseAddr("1.1.1.1")}},
	} {
		if err := g.validate(); err != nil {
			t.Errorf("%+v refused: %v", g, err)
		}
	}
}

// TestGuardTableOutlivesFirewall: kiln's table and the guard's come and go
// apart. A daemon with no bridge networks removes kiln's table; the guard,
// which another daemon's VMMs may need, stays.
func TestGuardTableOutlivesFirewall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() {
			fw := Firewall{
				Networks: []FirewallNetwork{{Bridge: BridgeName("g"), Subnet: netip.MustParsePrefix("10.98.0.0/24")}},
				DNATs:    []DNAT{{Protocol: TCP, HostPort: 8080, VMIP: netip.MustParseAddr("10.98.0.2"), GuestPort: 80}},
			}
			if err := ApplyGuard(testGuard()); err != nil {
				t.Errorf("ApplyGuard: %v", err)
				return
			}
			if err := ApplyFirewall(fw); err != nil {
				t.Errorf("ApplyFirewall: %v", err)
				return
			}
			kilnChains := []string{"forward", "input", "localnet", "output", "postrouting", "prerouting"}
			if got := slices.Sorted(maps.Keys(tableChains(t, TableName))); !slices.Equal(got, kilnChains) {
				t.Errorf("chains of table %s = %v, want %v", TableName, got, kilnChains)
			}
			wantTestGuard(t)

			// The guard going leaves kiln's table.
			if err := ApplyGuard(nil); err != nil {
				t.Error(err)
				return
			}
			if tableExists(t, GuardTableName) {
				t.Errorf("table %s is left after ApplyGuard(nil)", GuardTableName)
			}
			if got, exists, err := FirewallDNATTargets(); err != nil || !exists || len(got) != 2 {
				t.Errorf("DNAT targets after ApplyGuard(nil) = %v, %v, %v; want the VM twice", got, exists, err)
			}

			// kiln's table going (no networks) leaves the guard's.
			if err := ApplyGuard(testGuard()); err != nil {
				t.Error(err)
				return
			}
			if err := ApplyFirewall(Firewall{}); err != nil {
				t.Error(err)
				return
			}
			if _, exists, _ := FirewallDNATTargets(); exists {
				t.Errorf("table %s is left without networks", TableName)
			}
			wantTestGuard(t)
			if err := ApplyGuard(nil); err != nil {
				t.Error(err)
				return
			}
			if tableExists(t, GuardTableName) {
				t.Errorf("table %s is left after ApplyGuard(nil)", GuardTableName)
			}
		})
	}()
	<-done
}

// guardHelperEnv tells the test binary, run again as a VMM's uid, what to
// do (TestGuardHelperProcess).
const guardHelperEnv = "KILN_TEST_GUARD_HELPER"

// TestGuardHelperProcess is not a test: it is the child process of
// TestGuardRejectsVMMs, the test binary run as a VMM's uid. It prints its
// network namespace and what happened, one "guard-helper:" line each.
//
//	dial tcp|udp ADDR:  prints ok, refused, not-permitted, timeout or
//	                    another error
//	listen tcp ADDR:    prints listening PORT, then answers one connection
//	                    with "pong"
//	apply guard test|nil: ApplyGuard(testGuard()) or ApplyGuard(nil);
//	                    prints ok, unavailable (errdefs.ErrUnavailable) or
//	                    another error
func TestGuardHelperProcess(t *testing.T) {
	args := strings.Fields(os.Getenv(guardHelperEnv))
	if len(args) != 3 {
		t.Skip("a helper for TestGuardRejectsVMMs")
	}
	say := func(f string, a ...any) { fmt.Printf("guard-helper: "+f+"\n", a...) }
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		say("error %v", err)
		os.Exit(0)
	}
	say("netns %s", ns)
	switch args[0] {
	case "dial":
		say("%s", dialOutcome(args[1], args[2]))
	case "listen":
		l, err := net.Listen(args[1], args[2])
		if err != nil {
			say("error %v", err)
			break
		}
		say("listening %d", l.Addr().(*net.TCPAddr).Port)
		l.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := l.Accept()
		if err != nil {
			say("error %v", err)
			break
		}
		c.Write([]byte("pong\n"))
		c.Close()
		say("served")
	case "apply":
		var g *Guard
		if args[2] == "test" {
			g = testGuard()
		}
		switch err := ApplyGuard(g); {
		case err == nil:
			say("ok")
		case errors.Is(err, errdefs.ErrUnavailable):
			say("unavailable")
		default:
			say("error %v", err)
		}
	}
	os.Exit(0) // no PASS line: the parent reads stdout
}

// dialOutcome connects and exchanges a line. A TCP connection the guard
// rejects is refused (its reset); a UDP datagram fails to be sent at all
// (EPERM: the verdict on the sender's own packet in output is a drop,
// whatever ICMP error follows it), which slirp turns into an ICMP
// unreachable to the guest. A timeout is reported as such: for TCP, a drop
// would be one, not the refusal wanted.
func dialOutcome(proto, addr string) string {
	c, err := net.DialTimeout(proto, addr, 3*time.Second)
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err = c.Write([]byte("ping\n")); err == nil {
			_, err = bufio.NewReader(c).ReadString('\n')
		}
	}
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EPERM):
		return "not-permitted"
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return "timeout"
	}
	return "error " + err.Error()
}

func TestGuardRejectsVMMs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces and other uids need root: run the tests as root")
	}
	bin := shareTestBinary(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() { guardBehaviour(t, bin) })
	}()
	<-done
}

func guardBehaviour(t *testing.T, bin string) {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err == nil {
		err = netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(169, 254, 169, 254), Mask: net.CIDRMask(32, 32)}})
	}
	if err != nil {
		t.Errorf("readying lo: %v", err)
		return
	}
	// The child is started from this thread, which inNewNetns moved into
	// the namespace: it must be there too, or nothing below means much.
	ns, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Error(err)
		return
	}

	// The host's services, as root: each answers a line with a line.
	tcpLo := serveTCP(t, "tcp4", "127.0.0.1:0")
	udpLo := serveUDP(t, "udp4", "127.0.0.1:0")
	tcpLL := serveTCP(t, "tcp4", "169.254.169.254:0")
	dnsTCP := serveTCP(t, "tcp4", "127.0.0.53:53")
	dnsUDP := serveUDP(t, "udp4", "127.0.0.53:53")
	notDNS := serveUDP(t, "udp4", "127.0.0.1:53") // port 53, not a resolver
	if t.Failed() {
		return
	}
	tcp6 := "" // where the kernel has IPv6
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Logf("no IPv6 loopback, ::1 untested: %v", err)
	} else {
		l.Close()
		tcp6 = serveTCP(t, "tcp6", "[::1]:0")
	}

	// Without the guard every uid gets through: what is refused below is
	// refused by it.
	g := testGuard()
	g.Resolvers = g.Resolvers[:1] // 127.0.0.53
	guarded, guardedMax := uint32(testUIDMin), uint32(testUIDMax)
	if got := child(t, bin, ns, &guarded, "dial tcp "+tcpLo); got != "ok" {
		t.Errorf("before the guard, uid %d dialing %s: %s, want ok", guarded, tcpLo, got)
		return
	}
	if err := ApplyGuard(g); err != nil {
		t.Errorf("ApplyGuard: %v", err)
		return
	}

	root, below, above := uint32(0), uint32(testUIDMin-1), uint32(testUIDMax+1)
	host, hostMax := g.HostAccessMin, g.HostAccessMax
	belowHost, aboveHost := g.HostAccessMin-1, g.HostAccessMax+1
	for _, c := range []struct {
		what string
		uid  *uint32 // nil: root, unchanged
		do   string
		want string
	}{
		{"VMM to loopback", &guarded, "dial tcp " + tcpLo, "refused"},
		{"VMM at the top of the range to loopback", &guardedMax, "dial tcp " + tcpLo, "refused"},
		{"VMM to loopback, UDP", &guarded, "dial udp " + udpLo, "not-permitted"},
		{"VMM to link-local", &guarded, "dial tcp " + tcpLL, "refused"},
		{"VMM to ::1", &guarded, "dial tcp " + tcp6, "refused"},
		{"VMM to the resolver, UDP", &guarded, "dial udp " + dnsUDP, "ok"},
		{"VMM to the resolver, TCP", &guarded, "dial tcp " + dnsTCP, "ok"},
		{"VMM to port 53 of another loopback address", &guarded, "dial udp " + notDNS, "not-permitted"},
		{"host-access VMM to loopback", &host, "dial tcp " + tcpLo, "ok"},
		{"host-access VMM to loopback, UDP", &host, "dial udp " + udpLo, "ok"},
		{"host-access VMM to ::1", &host, "dial tcp " + tcp6, "ok"},
		{"host-access VMM to link-local", &host, "dial tcp " + tcpLL, "refused"},
		{"host-access VMM at the top of its range to loopback", &hostMax, "dial tcp " + tcpLo, "ok"},
		{"VMM just below the host-access range to loopback", &belowHost, "dial tcp " + tcpLo, "refused"},
		{"VMM just above the host-access range to loopback", &aboveHost, "dial tcp " + tcpLo, "refused"},
		{"uid below the range to loopback", &below, "dial tcp " + tcpLo, "ok"},
		{"uid above the range to loopback", &above, "dial tcp " + tcpLo, "ok"},
		{"uid above the range to link-local", &above, "dial tcp " + tcpLL, "ok"},
		{"root (as uid 0) to loopback", &root, "dial tcp " + tcpLo, "ok"},
		{"root to link-local", nil, "dial tcp " + tcpLL, "ok"},
	} {
		if c.do == "dial tcp " {
			continue // to tcp6, and no IPv6
		}
		start := time.Now()
		if got := child(t, bin, ns, c.uid, c.do); got != c.want {
			t.Errorf("%s (%s): %s, want %s", c.what, c.do, got, c.want)
		} else if c.want != "ok" && time.Since(start) > 2*time.Second {
			t.Errorf("%s: refused only after %v, want at once", c.what, time.Since(start))
		}
	}

	// A VMM's listening socket (a published port QEMU forwards) still
	// answers the host: its replies are not new connections.
	listening(t, bin, ns, guarded)

	// kiln's table going (a daemon with no bridge networks) leaves the
	// guard; ApplyGuard(nil) takes it away.
	if err := ApplyFirewall(Firewall{}); err != nil {
		t.Errorf("ApplyFirewall: %v", err)
		return
	}
	if got := child(t, bin, ns, &guarded, "dial tcp "+tcpLo); got != "refused" {
		t.Errorf("after ApplyFirewall(Firewall{}), uid %d dialing %s: %s, want refused", guarded, tcpLo, got)
	}
	if err := ApplyGuard(nil); err != nil {
		t.Errorf("ApplyGuard(nil): %v", err)
		return
	}
	if got := child(t, bin, ns, &guarded, "dial tcp "+tcpLo); got != "ok" {
		t.Errorf("after ApplyGuard(nil), uid %d dialing %s: %s, want ok", guarded, tcpLo, got)
	}
}

// TestApplyGuardWithoutPrivilege: a daemon without CAP_NET_ADMIN is told
// the guard is unavailable, not some netlink error.
func TestApplyGuardWithoutPrivilege(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces and other uids need root: run the tests as root")
	}
	bin := shareTestBinary(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNewNetns(t, func() {
			ns, err := os.Readlink("/proc/thread-self/ns/net")
			if err != nil {
				t.Error(err)
				return
			}
			nobody := uint32(testUIDMax + 1)
			for _, do := range []string{"apply guard test", "apply guard nil"} {
				if got := child(t, bin, ns, &nobody, do); got != "unavailable" {
					t.Errorf("%s as uid %d: %s, want unavailable", do, nobody, got)
				}
			}
			// And as root, the same helper can: the refusal was the uid's.
			if got := child(t, bin, ns, nil, "apply guard test"); got != "ok" {
				t.Errorf("apply guard test as root: %s, want ok", got)
			}
			wantTestGuard(t)
		})
	}()
	<-done
}

// child runs the test binary as uid (nil: as root, unchanged) to do one
// thing in the test's network namespace, and returns what it printed.
func child(t *testing.T, bin, ns string, uid *uint32, do string) string {
	cmd := helperCmd(bin, uid, do)
	out, err := cmd.Output()
	lines := helperLines(string(out))
	if err != nil || len(lines) != 2 {
		return fmt.Sprintf("helper failed: %v: %q", err, out)
	}
	if lines[0] != "netns "+ns {
		t.Errorf("the helper ran in %q, not the test's namespace %q", lines[0], ns)
		return "elsewhere"
	}
	return lines[1]
}

// listening has a VMM's uid listen on loopback and root connect to it: the
// SYN-ACK and the data come from the VMM's socket to 127.0.0.1.
func listening(t *testing.T, bin, ns string, uid uint32) {
	cmd := helperCmd(bin, &uid, "listen tcp 127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Error(err)
		return
	}
	if err := cmd.Start(); err != nil {
		t.Errorf("starting the listening helper: %v", err)
		return
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	r := bufio.NewReader(stdout)
	var got []string
	port := ""
	for port == "" {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Errorf("the listening helper said %q, then %v", got, err)
			return
		}
		got = append(got, helperLines(line)...)
		for _, l := range got {
			if p, ok := strings.CutPrefix(l, "listening "); ok {
				port = p
			}
		}
	}
	if len(got) == 0 || got[0] != "netns "+ns {
		t.Errorf("the listening helper ran in %q, not the test's namespace %q", got, ns)
		return
	}
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+port, 3*time.Second)
	if err != nil {
		t.Errorf("connecting to a VMM's listening socket: %v", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); line != "pong\n" {
		t.Errorf("a VMM's listening socket answered %q, %v; want pong", line, err)
	}
	rest, _ := io.ReadAll(r)
	if lines := helperLines(string(rest)); !slices.Equal(lines, []string{"served"}) {
		t.Errorf("the listening helper said %q after the connection, want served", lines)
	}
}

func helperCmd(bin string, uid *uint32, do string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^TestGuardHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), guardHelperEnv+"="+do)
	cmd.Dir = filepath.Dir(bin)
	if uid != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: *uid, Gid: *uid}}
	}
	return cmd
}

func helperLines(out string) []string {
	var lines []string
	for l := range strings.Lines(out) {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "guard-helper: "); ok {
			lines = append(lines, s)
		}
	}
	return lines
}

// shareTestBinary copies the test binary where any uid can run it: go test
// builds it in a directory only root may enter.
func shareTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	bin := filepath.Join(dir, "network.test")
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// serveTCP listens on addr and answers every line with "hi".
func serveTCP(t *testing.T, network, addr string) string {
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Errorf("listening on %s %s: %v", network, addr, err)
		return ""
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					c.Write([]byte("hi\n"))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// serveUDP answers every datagram on addr with "hi".
func serveUDP(t *testing.T, network, addr string) string {
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Errorf("listening on %s %s: %v", network, addr, err)
		return ""
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo([]byte("hi\n"), from)
		}
	}()
	return c.LocalAddr().String()
}

// tableChains returns the chains of an inet table, by name. (The test
// helpers here run off the test's goroutine, in a namespace: they report
// with Error, never Fatal.)
func tableChains(t *testing.T, table string) map[string]*nftables.Chain {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Error(err)
		return nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Errorf("listing chains: %v", err)
		return nil
	}
	out := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == table {
			out[ch.Name] = ch
		}
	}
	return out
}

// tableExists tells whether there is an inet table of that name.
func tableExists(t *testing.T, table string) bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Error(err)
		return false
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Errorf("listing tables: %v", err)
		return false
	}
	return slices.ContainsFunc(tables, func(tab *nftables.Table) bool { return tab.Name == table })
}

func wantRules(t *testing.T, table, chain string, want []string) {
	t.Helper()
	if got := ruleTexts(t, table, chain); !slices.Equal(got, want) {
		t.Errorf("rules of chain %s of table %s:\n\t%s\nwant:\n\t%s", chain, table, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// ruleTexts reads the rules of a chain of an inet table back from the
// kernel, each told in a few words (an nft-like reading of the
// expressions kiln's rules are made of).
func ruleTexts(t *testing.T, table, chain string) []string {
	t.Helper()
	return familyRuleTexts(t, nftables.TableFamilyINet, table, chain)
}

// familyRuleTexts is ruleTexts for a table of any family.
func familyRuleTexts(t *testing.T, family nftables.TableFamily, table, chain string) []string {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Error(err)
		return nil
	}
	tab := &nftables.Table{Family: family, Name: table}
	rules, err := c.GetRules(tab, &nftables.Chain{Name: chain, Table: tab})
	if err != nil {
		t.Errorf("rules of %s: %v", chain, err)
		return nil
	}
	var out []string
	for _, r := range rules {
		out = append(out, ruleText(r.Exprs))
	}
	return out
}

func ruleText(es []expr.Any) string {
	var words []string
	var loaded string // what register 1 holds
	var mask []byte
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Meta:
			loaded, mask = map[expr.MetaKey]string{expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeySKUID: "skuid", expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname"}[e.Key], nil
			if loaded == "" {
				loaded = fmt.Sprintf("meta %d", e.Key)
			}
		case *expr.Payload:
			loaded, mask = fmt.Sprintf("payload %d@%d/%d", e.Base, e.Offset, e.Len), nil
			switch {
			case e.Base == expr.PayloadBaseNetworkHeader && (e.Offset == 16 && e.Len == 4 || e.Offset == 24 && e.Len == 16):
				loaded = "daddr"
			case e.Base == expr.PayloadBaseNetworkHeader && (e.Offset == 12 && e.Len == 4 || e.Offset == 8 && e.Len == 16):
				loaded = "saddr"
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				loaded = "dport"
			case e.Base == expr.PayloadBaseLLHeader && e.Offset == 6 && e.Len == 6:
				loaded = "ether saddr"
			case e.Base == expr.PayloadBaseLLHeader && e.Offset == 12 && e.Len == 2:
				loaded = "ether type"
			case e.Base == expr.PayloadBaseNetworkHeader && e.Len != 4: // only ARP's are read otherwise
				loaded = map[[2]uint32]string{{0, 2}: "arp htype", {2, 2}: "arp ptype", {4, 1}: "arp hlen", {5, 1}: "arp plen", {8, 6}: "arp saddr ether"}[[2]uint32{e.Offset, e.Len}]
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 14:
				loaded = "arp saddr ip"
			}
			if loaded == "" {
				loaded = fmt.Sprintf("payload %d@%d/%d", e.Base, e.Offset, e.Len)
			}
		case *expr.Ct:
			loaded, mask = fmt.Sprintf("ct %d", e.Key), nil
			if e.Key == expr.CtKeySTATE {
				loaded = "ct state"
			}
		case *expr.Byteorder: // how, not what
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			words = append(words, loaded, cmpText(loaded, e, mask))
		case *expr.Range:
			words = append(words, loaded, fmt.Sprintf("%d-%d", binaryutil.BigEndian.Uint32(e.FromData), binaryutil.BigEndian.Uint32(e.ToData)))
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				words = append(words, "accept")
			case expr.VerdictDrop:
				words = append(words, "drop")
			case expr.VerdictJump:
				words = append(words, "jump", e.Chain)
			default:
				words = append(words, fmt.Sprintf("verdict %d", e.Kind))
			}
		case *expr.Reject:
			switch {
			case e.Type == unix.NFT_REJECT_TCP_RST:
				words = append(words, "reject tcp-reset")
			case e.Type == unix.NFT_REJECT_ICMPX_UNREACH && e.Code == unix.NFT_REJECT_ICMPX_PORT_UNREACH:
				words = append(words, "reject icmpx port-unreachable")
			default:
				words = append(words, fmt.Sprintf("reject %d/%d", e.Type, e.Code))
			}
		default:
			words = append(words, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(words, " ")
}

func cmpText(loaded string, e *expr.Cmp, mask []byte) string {
	s := fmt.Sprintf("%x", e.Data)
	switch loaded {
	case "nfproto":
		s = map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[e.Data[0]]
	case "l4proto":
		s = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp"}[e.Data[0]]
	case "dport", "arp htype":
		s = strconv.Itoa(int(binaryutil.BigEndian.Uint16(e.Data)))
	case "iifname", "oifname":
		name, exact := strings.CutSuffix(string(e.Data), "\x00")
		if s = strconv.Quote(name); !exact {
			s = strconv.Quote(name + "*")
		}
	case "ether saddr", "arp saddr ether":
		s = net.HardwareAddr(e.Data).String()
	case "ether type", "arp ptype":
		s = map[uint16]string{unix.ETH_P_IP: "ip", unix.ETH_P_ARP: "arp"}[binaryutil.BigEndian.Uint16(e.Data)]
	case "arp hlen", "arp plen":
		s = strconv.Itoa(int(e.Data[0]))
	case "arp saddr ip":
		a, _ := netip.AddrFromSlice(e.Data)
		s = a.String()
	case "daddr", "saddr":
		a, _ := netip.AddrFromSlice(e.Data)
		bits := a.BitLen()
		if mask != nil {
			bits = 0
			for _, b := range mask {
				for ; b != 0; b <<= 1 {
					bits++
				}
			}
		}
		s = netip.PrefixFrom(a, bits).String()
	case "ct state":
		if e.Op == expr.CmpOpNeq && slices.Equal(e.Data, []byte{0, 0, 0, 0}) {
			switch {
			case slices.Equal(mask, binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW)):
				return "new"
			case slices.Equal(mask, binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)):
				return "established,related"
			}
		}
	}
	if e.Op != expr.CmpOpEq {
		s = fmt.Sprintf("op%d %s", e.Op, s)
	}
	return s
}
