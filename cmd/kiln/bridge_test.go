package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/state"
)

// bridgeHelper runs the helper modes of the bridge tests in a namespace:
//
//	serve ADDR BODY       serve BODY over HTTP on ADDR, print "ready",
//	                      wait for stdin EOF
//	netstate              print kiln's links ("link NAME") and the VM
//	                      addresses its firewall DNATs to ("dnat IP")
//	leak BRIDGE SUBNET IP leave what a crash could: a TAP no VM owns on
//	                      BRIDGE, and a table with a DNAT to IP only
func bridgeHelper(mode string, args []string) error {
	switch mode {
	case "serve":
		l, err := net.Listen("tcp4", args[0])
		if err != nil {
			return err
		}
		go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, args[1]+"\n") }))
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		return nil
	case "netstate":
		for _, p := range []string{network.BridgePrefix, network.TAPPrefix} {
			links, err := network.Links(p)
			if err != nil {
				return err
			}
			for _, l := range links {
				fmt.Println("link", l)
			}
		}
		ips, exists, err := network.FirewallDNATTargets()
		if err != nil {
			return err
		}
		if exists {
			fmt.Println("table")
		}
		for _, ip := range ips {
			fmt.Println("dnat", ip)
		}
		return nil
	case "leak":
		a := &network.Attachment{Network: "leak", Bridge: args[0], TAP: network.TAPPrefix + "000000000000"}
		if err := network.EnsureTAP(a); err != nil {
			return err
		}
		return network.ApplyFirewall(network.Firewall{
			Networks: []network.FirewallNetwork{{Bridge: args[0], Subnet: netip.MustParsePrefix(args[1])}},
			DNATs:    []network.DNAT{{Protocol: network.TCP, HostPort: 1, VMIP: netip.MustParseAddr(args[2]), GuestPort: 1}},
		})
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

// netState is what the netstate helper saw.
type netState struct {
	links map[string]bool
	dnats map[string]int
	table bool
}

func (e *netEnv) netState() netState {
	e.t.Helper()
	out, err := e.helper("netstate")
	if err != nil {
		e.t.Fatal(err)
	}
	s := netState{links: map[string]bool{}, dnats: map[string]int{}}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		switch k {
		case "link":
			s.links[v] = true
		case "dnat":
			s.dnats[v]++
		case "table":
			s.table = true
		}
	}
	return s
}

// ok fails the test unless r succeeded.
func okr(t *testing.T, what string, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s:\n%s", what, r)
	}
	return r
}

// outside makes a second namespace standing for the world beyond the
// host, joined to the test's namespace by a veth pair (192.168.77.1 on the
// host side, 192.168.77.2 outside), with an HTTP server on
// 192.168.77.2:8000 answering "outside".
func (e *netEnv) outside() {
	t := e.t
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	ns := testNetns("out")
	veth := "kv" + hex.EncodeToString(b)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("-n", e.ns, "link", "add", veth+"a", "type", "veth", "peer", "name", veth+"b", "netns", ns)
	run("-n", e.ns, "addr", "add", "192.168.77.1/24", "dev", veth+"a")
	run("-n", e.ns, "link", "set", veth+"a", "up")
	run("-n", ns, "addr", "add", "192.168.77.2/24", "dev", veth+"b")
	run("-n", ns, "link", "set", veth+"b", "up")
	run("-n", ns, "link", "set", "lo", "up")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	serve(t, func(ctx context.Context) *exec.Cmd {
		srv := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
		srv.Env = append(os.Environ(), helperEnv+"=serve", helperArgsEnv+"=192.168.77.2:8000\noutside")
		return srv
	})
}

// serve starts the serve helper that cmd makes, waits until it listens, and
// ends it when the test ends.
func serve(t *testing.T, cmd func(ctx context.Context) *exec.Cmd) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := cmd(ctx)
	stdin, _ := srv.StdinPipe()
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cancel(); srv.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("server %v: %q, %v", srv.Args, line, err)
	}
}

// TestBridgePortsNamesIsolationEgress boots two servers and two clients:
// network "open" (with egress) and network "iso" (isolated VMs, no egress).
func TestBridgePortsNamesIsolationEgress(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	e.outside()
	okr(t, "network create open", e.kiln("network", "create", "open", "--subnet", "10.91.0.0/24", "--egress"))
	okr(t, "network create iso", e.kiln("network", "create", "iso", "--subnet", "10.92.0.0/24", "--isolate-vms"))
	e.runD("--name", "web", "--network", "open", "-p", "127.0.0.1:18095:80", "-p", "127.0.0.1:15395:53/udp", "-p", "18099:80", httpd(t), "-udp", ":53")
	e.runD("--name", "web2", "--network", "iso", "--ip", "10.92.0.50", httpd(t))
	e.awaitLog("web", "serving HTTP", 1)
	e.awaitLog("web2", "serving HTTP", 1)

	// Published ports, from the host: on loopback, and on all addresses.
	for _, url := range []string{"http://127.0.0.1:18095/", "http://192.168.77.1:18099/"} {
		if body, err := e.helper("get", url); err != nil || body != "hello from kiln VM web\n" {
			t.Errorf("GET %s (published) = %q, %v", url, body, err)
		}
	}
	if echo, err := e.helper("udp", "127.0.0.1:15395", "ping over udp"); err != nil || echo != "ping over udp" {
		t.Errorf("UDP echo through the published port = %q, %v", echo, err)
	}
	if r := e.kiln("port", "web"); r.code != 0 || r.stdout != "53/udp -> 127.0.0.1:15395\n80/tcp -> 0.0.0.0:18099\n80/tcp -> 127.0.0.1:18095\n" {
		t.Errorf("kiln port web:\n%s", r)
	}
	// The daemon holds the published ports: neither a bridge VM nor a
	// user-mode one can take them.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--network", "iso", "-p", "127.0.0.1:18095:80"}, "port 18095 is already in use on 127.0.0.1"},
		{[]string{"-p", "18099:80"}, "port 18099 is already in use on 0.0.0.0"},
	} {
		r := e.run(append(append([]string{"-d"}, tt.args...), httpd(t))...)
		if r.code != 125 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("run %v with a port web publishes:\n%s", tt.args, r)
		}
	}
	if got := e.inspect("web2", "{{.Config.Network}} {{.NetworkSettings.IPAddress}}/{{.NetworkSettings.PrefixLen}} via {{.NetworkSettings.Gateway}}"); got != "iso 10.92.0.50/24 via 10.92.0.1" {
		t.Errorf("inspect web2 = %q", got)
	}

	// On "open": the server by name, and the outside; egress is not a way
	// into another network.
	r := okr(t, "client on open", e.run("--rm", "--network", "open", e.hello(), "-get", "http://web/", "-get", "http://192.168.77.2:8000/", "-get", "http://10.92.0.50/"))
	for _, want := range []string{"resolve web: 10.91.0.2\n", "get http://web/: hello from kiln VM web\n", "get http://192.168.77.2:8000/: outside\n", "get http://10.92.0.50/: error "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("client on open: no %q:\n%s", want, r)
		}
	}
	// On "iso": the name resolves (the gateway answers), but the VMs do not
	// reach each other, nor the outside.
	r = okr(t, "client on iso", e.run("--rm", "--network", "iso", e.hello(), "-get", "http://web2/", "-get", "http://192.168.77.2:8000/"))
	for _, want := range []string{"resolve web2: 10.92.0.50\n", "get http://web2/: error ", "get http://192.168.77.2:8000/: error "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("client on iso: no %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.stdout, "hello from kiln VM web2") || strings.Contains(r.stdout, ": outside") {
		t.Errorf("an isolated VM without egress got through:\n%s", r)
	}
	okr(t, "rm", e.kiln("rm", "-f", "web", "web2"))
	okr(t, "network rm", e.kiln("network", "rm", "open", "iso"))
	if s := e.netState(); len(s.links) != 0 || s.table {
		t.Errorf("left after removing every VM and network: links %v, table %v", s.links, s.table)
	}
}

// TestBridgeRemoveAndCrashLeaveNothing checks that rm, and a daemon killed
// with SIGKILL and started again, leave no TAP, lease or rule of a removed
// VM, and lose nothing of a VM that exists.
func TestBridgeRemoveAndCrashLeaveNothing(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	okr(t, "network create", e.kiln("network", "create", "n", "--subnet", "10.93.0.0/24"))
	bridge := network.BridgeName("n")
	e.runD("--name", "a", "--network", "n", "-p", "127.0.0.1:18096:80", httpd(t))
	e.awaitLog("a", "serving HTTP", 1)
	ipA, tapA := e.inspect("a", "{{.NetworkSettings.IPAddress}}"), e.inspect("a", "{{.NetworkSettings.TAP}}")
	if s := e.netState(); !s.links[bridge] || !s.links[tapA] || s.dnats[ipA] != 2 {
		t.Fatalf("VM a running: links %v, DNATs %v; want %s, %s and 2 DNATs to %s", s.links, s.dnats, bridge, tapA, ipA)
	}
	okr(t, "rm -f a", e.kiln("rm", "-f", "a"))
	if s := e.netState(); s.links[tapA] || s.dnats[ipA] != 0 || !s.links[bridge] {
		t.Errorf("after rm: links %v, DNATs %v", s.links, s.dnats)
	}
	if got := e.kiln("network", "inspect", "-f", "{{len .VMs}}", "n"); strings.TrimSpace(got.stdout) != "0" {
		t.Errorf("leases after rm:\n%s", got)
	}

	e.runD("--name", "b", "--network", "n", "-p", "127.0.0.1:18097:80", httpd(t))
	e.awaitLog("b", "serving HTTP", 1)
	ipB, tapB := e.inspect("b", "{{.NetworkSettings.IPAddress}}"), e.inspect("b", "{{.NetworkSettings.TAP}}")
	if ipB != ipA {
		t.Errorf("b got %s, want a's released %s", ipB, ipA)
	}
	// A restart keeps the address, the MAC and the TAP, and holds the port
	// again.
	mac := e.inspect("b", "{{.NetworkSettings.MACAddress}}")
	okr(t, "restart b", e.kiln("restart", "-t", "2", "b"))
	e.awaitLog("b", "serving HTTP", 2)
	if got := e.inspect("b", "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.MACAddress}} {{.NetworkSettings.TAP}}"); got != ipB+" "+mac+" "+tapB {
		t.Errorf("after a restart b is %q, was %s %s %s", got, ipB, mac, tapB)
	}
	if body, err := e.helper("get", "http://127.0.0.1:18097/"); err != nil || body != "hello from kiln VM b\n" {
		t.Errorf("GET b after its restart = %q, %v", body, err)
	}
	// The daemon dies as if in the middle of a run: a lease of a VM that
	// was never recorded, a TAP no VM owns, and a table with a stray rule
	// (and without b's rules) are left behind.
	pid := e.daemonPID()
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; syscall.Kill(pid, 0) == nil && i < 200; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	db, err := state.Open(filepath.Join(e.root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Lease(context.Background(), "n", "f00d", netip.MustParseAddr("10.93.0.77")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := e.helper("leak", bridge, "10.93.0.0/24", "10.93.0.77"); err != nil {
		t.Fatal(err)
	}
	if s := e.netState(); !s.links["kn-000000000000"] || s.dnats["10.93.0.77"] == 0 || s.dnats[ipB] != 0 {
		t.Fatalf("the leak did not take: %v %v", s.links, s.dnats)
	}
	e.startDaemon()
	s := e.netState()
	if s.links["kn-000000000000"] || s.dnats["10.93.0.77"] != 0 {
		t.Errorf("after a restart, leaked: links %v, DNATs %v", s.links, s.dnats)
	}
	if !s.links[tapB] || s.dnats[ipB] != 2 || !s.links[bridge] {
		t.Errorf("after a restart, b's TAP or rules are missing: links %v, DNATs %v", s.links, s.dnats)
	}
	if got := e.kiln("network", "inspect", "-f", "{{range .VMs}}{{.Name}}={{.IP}} {{end}}", "n"); strings.TrimSpace(got.stdout) != "b="+ipB {
		t.Errorf("leases after a restart (want b's only):\n%s", got)
	}
	if body, err := e.helper("get", "http://127.0.0.1:18097/"); err != nil || body != "hello from kiln VM b\n" {
		t.Errorf("GET b after the daemon's restart = %q, %v", body, err)
	}
	if r := e.run("-d", "-p", "127.0.0.1:18097:80", httpd(t)); r.code != 125 || !strings.Contains(r.stderr, "port 18097 is already in use on 127.0.0.1") {
		t.Errorf("b's port is not held after the daemon's restart:\n%s", r)
	}
	okr(t, "rm -f b", e.kiln("rm", "-f", "b"))
	if s := e.netState(); s.links[tapB] || s.dnats[ipB] != 0 {
		t.Errorf("after rm of b: links %v, DNATs %v", s.links, s.dnats)
	}
	okr(t, "network rm", e.kiln("network", "rm", "n"))
	if s := e.netState(); len(s.links) != 0 || s.table {
		t.Errorf("after network rm: links %v, table %v", s.links, s.table)
	}
}

// TestBridgeBadInputAndParallelLeases boots nothing: VMs are created
// through the API and never started.
func TestBridgeBadInputAndParallelLeases(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	// A route of the host that a network must not overlap.
	for _, args := range [][]string{
		{"link", "add", "kt-a", "type", "veth", "peer", "name", "kt-b"},
		{"addr", "add", "10.95.0.1/24", "dev", "kt-a"},
		{"link", "set", "kt-a", "up"},
		{"link", "set", "kt-b", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", e.ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	okr(t, "network create small", e.kiln("network", "create", "small", "--subnet", "10.96.0.0/29"))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "create", "x", "--subnet", "10.96.0.0/24"}, "subnet 10.96.0.0/24 overlaps network small (10.96.0.0/29)"},
		{[]string{"network", "create", "x", "--subnet", "10.95.0.0/16"}, "subnet 10.95.0.0/16 overlaps the host's route 10.95.0.0/24 dev kt-a"},
		{[]string{"network", "create", "x", "--subnet", "10.97.0.9/24"}, `invalid subnet "10.97.0.9/24": host bits set`},
		{[]string{"network", "create", "x", "--gateway", "10.97.0.1"}, "network x: a gateway (10.97.0.1) needs its subnet"},
		{[]string{"network", "create", "none", "--subnet", "10.97.0.0/24"}, `invalid network name "none": reserved`},
		{[]string{"network", "create", "small", "--subnet", "10.97.0.0/24"}, `a network named "small" already exists`},
		{[]string{"network", "create", "x", "--subnet", "10.97.0.0/24", "--gateway", "10.98.0.1"}, "invalid gateway 10.98.0.1: not a host address of subnet 10.97.0.0/24"},
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "small", "--ip", "10.1.1.1", e.hello()}, "invalid IP 10.1.1.1: not in network small's subnet 10.96.0.0/29"},
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "small", "--ip", "10.96.0.1", e.hello()}, "invalid IP 10.96.0.1: the gateway of network small"},
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "small", "--ip", "banana", e.hello()}, `invalid IP "banana": want an IPv4 address`},
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "nosuch", e.hello()}, "no such network: nosuch"},
		{[]string{"network", "rm", "nosuch"}, "no such network: nosuch"},
	} {
		r := e.kiln(tt.args...)
		if r.code != 125 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("kiln %v: want exit 125 and %q:\n%s", tt.args, tt.want, r)
		}
	}
	if r := okr(t, "network ls", e.kiln("network", "ls", "-q")); r.stdout != "small\n" {
		t.Errorf("networks after the refused creates:\n%s", r)
	}
	// Without --subnet, the first free /24s of 10.89.0.0/16.
	for i, name := range []string{"auto0", "auto1"} {
		okr(t, "network create "+name, e.kiln("network", "create", name))
		want := fmt.Sprintf("10.89.%d.0/24", i)
		if r := okr(t, "network inspect", e.kiln("network", "inspect", "--format", "{{.Subnet}}", name)); strings.TrimSpace(r.stdout) != want {
			t.Errorf("network %s got subnet %q, want %s", name, strings.TrimSpace(r.stdout), want)
		}
	}
	okr(t, "network rm", e.kiln("network", "rm", "auto0", "auto1"))

	// A /29 holds 5 VMs besides its gateway: 5 parallel creates get 5
	// different addresses.
	c := client.New(filepath.Join(e.root, "run", "kiln.sock"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ips []string
	for i := range 5 {
		wg.Go(func() {
			cr, err := c.Create(context.Background(), api.VMConfig{Name: fmt.Sprint("p", i), Program: e.hello(), Kernel: e.kernel, Network: "small"})
			if err != nil {
				t.Errorf("create p%d: %v", i, err)
				return
			}
			v, err := c.Inspect(context.Background(), cr.ID)
			if err != nil || v.NetworkSettings == nil {
				t.Errorf("inspect p%d: %v %+v", i, err, v)
				return
			}
			mu.Lock()
			ips = append(ips, v.NetworkSettings.IPAddress)
			mu.Unlock()
		})
	}
	wg.Wait()
	sort.Strings(ips)
	if strings.Join(ips, " ") != "10.96.0.2 10.96.0.3 10.96.0.4 10.96.0.5 10.96.0.6" {
		t.Errorf("parallel creates got %v", ips)
	}
	dirs := len(e.vmDirs())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "small", e.hello()}, "network small has no free address: every address of 10.96.0.0/29 is leased"},
		{[]string{"run", "-d", "--kernel", e.kernel, "--network", "small", "--ip", "10.96.0.4", e.hello()}, "IP 10.96.0.4 is already leased on network small"},
		{[]string{"network", "rm", "small"}, "network small is in use by 5 VM(s)"},
	} {
		r := e.kiln(tt.args...)
		if r.code != 125 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("kiln %v: want exit 125 and %q:\n%s", tt.args, tt.want, r)
		}
	}
	if n := len(e.vmDirs()); n != dirs {
		t.Errorf("%d VM directories after refused runs, want %d", n, dirs)
	}
	if r := okr(t, "ps", e.kiln("ps", "-a", "-q")); len(strings.Fields(r.stdout)) != 5 {
		t.Errorf("VMs after refused runs:\n%s", r)
	}
	// Removing the VMs frees their addresses (and they had no TAP: they
	// never started); then the network goes.
	for i := range 5 {
		okr(t, "rm", e.kiln("rm", fmt.Sprint("p", i)))
	}
	if s := e.netState(); len(s.links) != 1 || !s.links[network.BridgeName("small")] {
		t.Errorf("links with no VM: %v", s.links)
	}
	okr(t, "network rm small", e.kiln("network", "rm", "small"))
	if s := e.netState(); len(s.links) != 0 || s.table {
		t.Errorf("after network rm: links %v, table %v", s.links, s.table)
	}
}

// TestBridgeNeedsNetAdmin: a daemon without CAP_NET_ADMIN says what bridge
// networks need and makes nothing. It cannot keep user-mode VMs off the
// host's loopback either (a firewall table), so it refuses them, saying
// why, unless --unconfined; a VM without a network is jailed as ever.
func TestBridgeNeedsNetAdmin(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not found: apt-get install util-linux")
	}
	e := newNetEnv(t)
	e.stopDaemon()
	e.startDaemon("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--")
	r := e.kiln("network", "create", "n", "--subnet", "10.94.0.0/24")
	if r.code != 125 || !strings.Contains(r.stderr, "bridge networks need CAP_NET_ADMIN") {
		t.Errorf("network create without CAP_NET_ADMIN:\n%s", r)
	}
	if r := okr(t, "network ls", e.kiln("network", "ls", "-q")); r.stdout != "" {
		t.Errorf("a network was recorded:\n%s", r)
	}
	if s := e.netState(); len(s.links) != 0 || s.table {
		t.Errorf("made without privileges: links %v, table %v", s.links, s.table)
	}
	r = e.run("--rm", e.hello(), "-ifaces")
	if r.code != 125 || !strings.Contains(r.stderr, "inet kiln-guard") || !strings.Contains(r.stderr, "--unconfined") {
		t.Errorf("user-mode run under a daemon without CAP_NET_ADMIN: want exit 125 naming the guard and the way out:\n%s", r)
	}
	r = okr(t, "user-mode run --unconfined", e.run("--rm", "--unconfined", e.hello(), "-ifaces"))
	if !regexp.MustCompile(`iface eth0 up 10\.0\.2\.15/24`).MatchString(r.stdout) {
		t.Errorf("unconfined user-mode VM under a daemon without CAP_NET_ADMIN:\n%s", r)
	}
	okr(t, "jailed run without a network", e.run("--rm", "--network", "none", e.hello()))
}
