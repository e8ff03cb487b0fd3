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
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/testenv"
)

// Network tests run their daemon, and so its VMs' QEMU forwards, inside a
// network namespace the test creates and removes: the first kiln command
// runs under `ip netns exec`, which makes the daemon it starts live there;
// later commands reach that daemon over its unix socket. Traffic goes only
// to 127.0.0.1 inside the namespace, from helper processes (this test binary
// re-executed under `ip netns exec`, see init).

// helperEnv selects a helper mode when this test binary is re-executed;
// helperArgs carries its arguments, separated by newlines.
const (
	helperEnv     = "KILN_NET_HELPER"
	helperArgsEnv = "KILN_NET_HELPER_ARGS"
)

func init() {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	args := strings.Split(os.Getenv(helperArgsEnv), "\n")
	if err := runHelper(mode, args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runHelper is the client side of the network tests, run in the namespace:
//
//	get URL            print the body of an HTTP GET (retried while the
//	                   forward resets: QEMU accepts before the guest listens)
//	udp ADDR MESSAGE   send MESSAGE, print the reply
//	listen ADDR        hold a TCP listener, print "ready", wait for stdin EOF
func runHelper(mode string, args []string) error {
	switch mode {
	case "get":
		var last error
		for range 60 {
			c := &http.Client{Timeout: 5 * time.Second}
			resp, err := c.Get(args[0])
			if err == nil {
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode == 200 {
					os.Stdout.Write(b)
					return nil
				}
				last = fmt.Errorf("GET %s: %s %q (%v)", args[0], resp.Status, b, err)
			} else {
				last = err
			}
			time.Sleep(250 * time.Millisecond)
		}
		return last
	case "udp":
		c, err := net.Dial("udp4", args[0])
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1500)
		var last error
		for range 20 {
			if _, err := c.Write([]byte(args[1])); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil {
				os.Stdout.Write(buf[:n])
				return nil
			}
			last = err
		}
		return fmt.Errorf("no UDP echo from %s: %w", args[0], last)
	case "serve", "netstate", "leak":
		return bridgeHelper(mode, args)
	case "listen":
		l, err := net.Listen("tcp4", args[0])
		if err != nil {
			return err
		}
		defer l.Close()
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

// netEnv is an env whose daemon lives in a network namespace of its own.
type netEnv struct {
	*env
	ns string
}

func requireNetns(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip not found: apt-get install iproute2")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root (sudo go test ...)")
	}
}

// testNetns names a network namespace for this test process:
// kiln-PURPOSE-PID-RANDOM, so that sweepStaleNetns can tell the ones of a
// test binary that died without its cleanups (killed by go test's
// timeout, say) from those of one still running.
func testNetns(purpose string) string {
	sweepOnce.Do(sweepStaleNetns)
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("kiln-%s-%d-%s", purpose, os.Getpid(), hex.EncodeToString(b))
}

var sweepOnce sync.Once

var testNetnsRE = regexp.MustCompile(`^kiln-(test|out)-([0-9]+)-[0-9a-f]+$`)

// sweepStaleNetns removes the test namespaces of test processes that no
// longer run (with whatever was left in them).
func sweepStaleNetns() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m := testNetnsRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[2])
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if out, err := exec.Command("ip", "netns", "pids", e.Name()).Output(); err == nil {
			for _, p := range strings.Fields(string(out)) {
				if n, err := strconv.Atoi(p); err == nil {
					syscall.Kill(n, syscall.SIGKILL)
				}
			}
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

func newNetEnv(t *testing.T) *netEnv {
	t.Helper()
	return newNetEnvWith(t, nil)
}

// newNetEnvWith is newNetEnv with extraEnv in the environment of its kiln
// commands and daemon.
func newNetEnvWith(t *testing.T, extraEnv []string) *netEnv {
	t.Helper()
	testenv.NeedVM(t) // first: no namespace is made for a test that skips
	requireNetns(t)
	ns := testNetns("test")
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	// Registered before newEnv's cleanup, so it runs after it: the daemon
	// and VMs are gone when the namespace is removed.
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("bringing up lo in %s: %v: %s", ns, err, out)
	}
	e := &netEnv{env: newEnv(t), ns: ns}
	e.extraEnv = extraEnv
	e.startDaemon()
	return e
}

// startDaemon starts the root's daemon inside the namespace (prefix, if
// given, runs before kiln: a command that drops privileges, say).
func (e *netEnv) startDaemon(prefix ...string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.command(ctx, "ps")
	// nsenter, not `ip netns exec`: that one also gives the daemon a mount
	// namespace with a /sys of its own, where no cgroup is mounted, and a
	// daemon there cannot jail VMs.
	cmd.Args = append(append([]string{"nsenter", "--net=/run/netns/" + e.ns}, prefix...), cmd.Args...)
	cmd.Path = mustLookPath(e.t, "nsenter")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("starting the daemon in %s: %v: %s", e.ns, err, out)
	}
	e.checkDaemonInNetns()
}

func mustLookPath(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// checkDaemonInNetns makes sure the daemon (whose VMs listen for the
// forwards) is in the test's namespace, not the host's.
func (e *netEnv) checkDaemonInNetns() {
	e.t.Helper()
	var want, got syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+e.ns, &want); err != nil {
		e.t.Fatal(err)
	}
	pid := e.daemonPID()
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
		e.t.Fatalf("daemon pid %d: %v", pid, err)
	}
	if got.Ino != want.Ino {
		e.t.Fatalf("daemon pid %d is not in network namespace %s", pid, e.ns)
	}
}

// helper runs this test binary as a helper in the namespace and returns
// its output.
func (e *netEnv) helper(mode string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.helperCmd(ctx, mode, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helper %s %q: %w: %s", mode, args, err, errb.String())
	}
	return out.String(), nil
}

func (e *netEnv) helperCmd(ctx context.Context, mode string, args ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.ns, exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperArgsEnv+"="+strings.Join(args, "\n"))
	return cmd
}

var (
	httpdOnce sync.Once
	httpdErr  error
)

// httpd returns the path of examples/httpd, built once.
func httpd(t *testing.T) string {
	t.Helper()
	p := filepath.Join(binDir, "httpd")
	httpdOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", p, "kiln.dev/kiln/examples/httpd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			httpdErr = fmt.Errorf("building httpd: %v\n%s", err, out)
		}
	})
	if httpdErr != nil {
		t.Fatal(httpdErr)
	}
	return p
}

func TestNetPublishedTCPAndUDPPortsAnswer(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	e.runD("--name", "web", "-p", "127.0.0.1:18080:80", "-p", "127.0.0.1:15353:53/udp", httpd(t), "-udp", ":53")
	e.awaitLog("web", "serving HTTP", 1)
	body, err := e.helper("get", "http://127.0.0.1:18080/")
	if err != nil || body != "hello from kiln VM web\n" {
		t.Fatalf("GET through the published port = %q, %v", body, err)
	}
	echo, err := e.helper("udp", "127.0.0.1:15353", "ping over udp")
	if err != nil || echo != "ping over udp" {
		t.Fatalf("UDP echo through the published port = %q, %v", echo, err)
	}
	r := e.kiln("port", "web")
	if r.code != 0 || r.stdout != "53/udp -> 127.0.0.1:15353\n80/tcp -> 127.0.0.1:18080\n" {
		t.Errorf("kiln port web:\n%s", r)
	}
	if got := e.inspect("web", "{{.Config.Network}} {{range .Ports}}{{.HostIP}}:{{.HostPort}}->{{.GuestPort}}/{{.Protocol}} {{end}}"); got != "user 127.0.0.1:18080->80/tcp 127.0.0.1:15353->53/udp" {
		t.Errorf("inspect = %q", got)
	}
	if r := e.kiln("rm", "-f", "web"); r.code != 0 {
		t.Fatalf("rm -f web:\n%s", r)
	}
}

func TestPortEphemeralIsReportedAndResolvedAtEachStart(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	e.runD("--name", "eph", "-p", "127.0.0.1::80", httpd(t))
	e.awaitLog("eph", "serving HTTP", 1)
	get := func() {
		t.Helper()
		r := e.kiln("port", "eph", "80/tcp")
		if r.code != 0 || !regexp.MustCompile(`^127\.0\.0\.1:[1-9][0-9]*\n$`).MatchString(r.stdout) {
			t.Fatalf("kiln port eph 80/tcp:\n%s", r)
		}
		body, err := e.helper("get", "http://"+strings.TrimSpace(r.stdout)+"/")
		if err != nil || body != "hello from kiln VM eph\n" {
			t.Fatalf("GET through the ephemeral port %s = %q, %v", strings.TrimSpace(r.stdout), body, err)
		}
	}
	get()
	if r := e.kiln("port", "eph", "81"); r.code == 0 || !strings.Contains(r.stderr, "no public port '81/tcp'") {
		t.Errorf("kiln port eph 81:\n%s", r)
	}
	// A restart resolves the ports again.
	if r := e.kiln("restart", "-t", "2", "eph"); r.code != 0 {
		t.Fatalf("restart:\n%s", r)
	}
	e.awaitLog("eph", "serving HTTP", 2)
	get()
	if r := e.kiln("rm", "-f", "eph"); r.code != 0 {
		t.Fatalf("rm -f eph:\n%s", r)
	}
	if r := e.kiln("port", "eph"); r.code == 0 {
		t.Errorf("kiln port on a removed VM succeeded:\n%s", r)
	}
}

func TestPublishPortInUseIsRefusedBeforeBoot(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	holder := e.helperCmd(ctx, "listen", "127.0.0.1:18081")
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); holder.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("port holder: %q, %v", line, err)
	}
	r := e.run("-d", "--name", "busy", "-p", "127.0.0.1:18081:80", httpd(t))
	if r.code != 125 || !strings.Contains(r.stderr, "port 18081 is already in use on 127.0.0.1") {
		t.Fatalf("run with a taken port:\n%s", r)
	}
	if r := e.kiln("ps", "-a", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("a VM is left after the refused run:\n%s", r)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("VM directories left: %v", d)
	}
	if pids := qemuUnder(e.root); len(pids) != 0 {
		t.Errorf("QEMU started: %v", pids)
	}
}

func TestNetInterfaces(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	r := e.run("--rm", "--network", "none", e.hello(), "-ifaces")
	if r.code != 0 || !strings.Contains(r.stdout, "iface lo up 127.0.0.1/8") || strings.Contains(r.stdout, "eth0") {
		t.Errorf("--network none:\n%s", r)
	}
	r = e.run("--rm", "--name", "nic", e.hello(), "-ifaces")
	if r.code != 0 || !strings.Contains(r.stdout, "iface lo up 127.0.0.1/8") || !strings.Contains(r.stdout, "iface eth0 up 10.0.2.15/24") {
		t.Errorf("default network:\n%s", r)
	}
}

func TestPublishBadValues(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	okr(t, "ps", e.kiln("ps")) // the daemon's start is announced once, here
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-p", "70000:80"}, `invalid port "70000:80": host port: 70000 is out of range`},
		{[]string{"-p", "abc"}, `invalid port "abc": guest port: "abc" is not a number`},
		{[]string{"-p", "80:80/sctp"}, `invalid port "80:80/sctp": protocol "sctp" is not tcp or udp`},
		{[]string{"-p", "1-3:1-2"}, `invalid port "1-3:1-2": host range 1-3 has 3 ports and guest range 1-2 has 2`},
		{[]string{"-p", "8080:80", "-p", "8080:81"}, "tcp port 8080 on 0.0.0.0 is published twice"},
		{[]string{"--network", "bridge0"}, `no such network: bridge0`},
		{[]string{"--network", "bad/name"}, `invalid network "bad/name": use user, none, ns:PATH (a network namespace) or the name of a network`},
		{[]string{"--ip", "10.0.0.5"}, `invalid IP "10.0.0.5": --ip needs a bridge network`},
		{[]string{"--network", "none", "-p", "80"}, `cannot publish 80: --network none gives the VM no network`},
	} {
		r := e.run(append(tt.args, e.hello())...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 125 || len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
			t.Errorf("run %v: want exit 125 and one line with %q:\n%s", tt.args, tt.want, r)
		}
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("VM directories left: %v", d)
	}
}

func TestNetImageVMGetsItsNetworkFiles(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	// The image has resolv.conf as a dangling link, as images with a
	// resolver daemon do: kiln-init replaces the link.
	extra := layerTar(t, symlink("etc/resolv.conf", "../run/resolver/resolv.conf"))
	img := testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/busybox", "sh", "-c"}
		c.Cmd = []string{"cat /etc/resolv.conf /etc/hosts /etc/hostname; busybox ip route"}
	}, userlandLayer(t), extra)
	e.loadImage("kiln-test/netfiles:1", img)
	r := ok(t, "run the image", e.run("--rm", "--pull", "never", "--name", "imgnet", "kiln-test/netfiles:1"))
	for _, want := range []string{
		"nameserver 10.0.2.3\n",
		"127.0.0.1\tlocalhost\n",
		"10.0.2.15\timgnet\n",
		"\nimgnet\n",
		"default via 10.0.2.2 dev eth0",
		"10.0.2.0/24 dev eth0",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("image VM output lacks %q:\n%s", want, r)
		}
	}
}

func TestNetDistributionKernelLoadsVirtioNet(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	image, modules := cloudKernel(t)
	ok(t, "kernel import", e.kiln("kernel", "import", "--name", "cloud", "--modules", modules, image))
	r := e.kiln("run", "--rm", "--kernel", "cloud", e.hello(), "-ifaces")
	if r.code != 0 || !strings.Contains(r.stdout, "iface eth0 up 10.0.2.15/24") {
		t.Errorf("eth0 on the imported kernel (virtio_net as a module):\n%s", r)
	}
}

// TestNetworkNamespaceVMTakesOverThePodsInterface: a VM given a network
// namespace (--network ns:PATH, what a container runtime's pod has, its
// interface set up by CNI) becomes that interface: a peer on the
// interface's link reaches the VM's server at the pod's address, and
// removing the VM gives the namespace back as it was.
func TestNetworkNamespaceVMTakesOverThePodsInterface(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	pod := testNetns("out")
	ipc := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ipc("netns", "add", pod)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", pod).Run() })
	// The pod's side of a veth is its eth0; the other side, in the test's
	// namespace, is the pod's gateway.
	ipc("-n", e.ns, "link", "add", "kpod0", "type", "veth", "peer", "name", "eth0", "netns", pod)
	ipc("-n", e.ns, "addr", "add", "10.213.0.1/24", "dev", "kpod0")
	ipc("-n", e.ns, "link", "set", "kpod0", "up")
	ipc("-n", pod, "addr", "add", "10.213.0.2/24", "dev", "eth0")
	ipc("-n", pod, "link", "set", "eth0", "up")
	ipc("-n", pod, "link", "set", "lo", "up")
	ipc("-n", pod, "route", "add", "default", "via", "10.213.0.1")
	out, err := exec.Command("ip", "-n", pod, "link", "show", "eth0").Output()
	if err != nil {
		t.Fatal(err)
	}
	podMAC := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(string(out))
	if podMAC == nil {
		t.Fatalf("no MAC for the pod's eth0:\n%s", out)
	}

	nsPath := "/run/netns/" + pod
	e.runD("--name", "podvm", "--network", "ns:"+nsPath, httpd(t))
	e.awaitLog("podvm", "serving HTTP", 1)
	body, err := e.helper("get", "http://10.213.0.2/")
	if err != nil || body != "hello from kiln VM podvm\n" {
		t.Fatalf("GET of the pod's address from its gateway's side = %q, %v", body, err)
	}
	if got := e.inspect("podvm", "{{.Config.Network}}"); got != "ns:"+nsPath {
		t.Errorf("inspect network = %q", got)
	}
	// The guest took the interface's MAC: the peer's neighbour entry for
	// the pod's address is it.
	if out, _ := exec.Command("ip", "-n", e.ns, "neigh", "show", "10.213.0.2").Output(); !strings.Contains(string(out), podMAC[1]) {
		t.Errorf("the pod's address answers from %q, want the pod's MAC %s", out, podMAC[1])
	}
	if r := e.kiln("rm", "-f", "podvm"); r.code != 0 {
		t.Fatalf("rm -f podvm:\n%s", r)
	}

	// Attack: a guest on the pod's interface reaches what is on the link
	// (a server on the gateway's side), but not the namespace's own stack
	// (a server on an address the pod namespace holds): every frame from
	// the VM leaves by the interface.
	ipc("-n", pod, "addr", "add", "10.213.0.9/32", "dev", "lo")
	serve := func(ns, addr string) {
		t.Helper()
		cmd := exec.Command("ip", "netns", "exec", ns, httpd(t), "-addr", addr)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	serve(e.ns, "10.213.0.1:8081")
	serve(pod, "10.213.0.9:8081")
	r := e.run("--rm", "--network", "ns:"+nsPath, e.hello(), "-get", "http://10.213.0.1:8081/", "-get", "http://10.213.0.9:8081/")
	if !strings.Contains(r.stdout, "get http://10.213.0.1:8081/: hello from") {
		t.Errorf("the guest did not reach the server on its link (the check's control):\n%s", r)
	}
	if !strings.Contains(r.stdout, "get http://10.213.0.9:8081/: error") {
		t.Errorf("the guest reached a server of the pod namespace's own stack:\n%s", r)
	}
	if out, err := exec.Command("ip", "-n", pod, "link", "show", network.PodTAP).CombinedOutput(); err == nil {
		t.Errorf("the VM's TAP is left in the namespace after rm:\n%s", out)
	}
	if out, _ := exec.Command("tc", "-n", pod, "qdisc", "show", "dev", "eth0").Output(); strings.Contains(string(out), "ingress") {
		t.Errorf("the redirect of eth0 is left after rm:\n%s", out)
	}
	if out, _ := exec.Command("ip", "-n", pod, "-4", "addr", "show", "eth0").Output(); !strings.Contains(string(out), "10.213.0.2/24") {
		t.Errorf("the pod's eth0 lost its address:\n%s", out)
	}

	// Bad namespaces are refused before anything is made.
	empty := testNetns("out")
	ipc("netns", "add", empty)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", empty).Run() })
	for _, c := range []struct{ network, want string }{
		{"ns:/run/netns/kiln-no-such-ns", "kiln-no-such-ns"},
		{"ns:run/netns/x", "absolute, clean path"},
		{"ns:/run/netns/" + empty, "no interface with an IPv4 address"},
	} {
		r := e.kiln("run", "--rm", "--kernel", e.kernel, "--network", c.network, e.hello())
		if r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("--network %s: want exit 125 and %q:\n%s", c.network, c.want, r)
		}
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("VM directories left: %v", d)
	}
}
