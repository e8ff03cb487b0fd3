package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// daemonRSS returns the resident set of the root's daemon, in bytes.
func (e *env) daemonRSS() int64 {
	e.t.Helper()
	st := procStatus(e.t, e.daemonPID())
	kb, err := strconv.ParseInt(strings.TrimSuffix(st["VmRSS"], " kB"), 10, 64)
	if err != nil {
		e.t.Fatalf("reading the daemon's VmRSS %q: %v", st["VmRSS"], err)
	}
	return kb << 10
}

// waitLog waits up to d for a line containing want in the VM's logs.
func (e *env) waitLog(vm, want string, d time.Duration) bool {
	e.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if r := e.kiln("logs", vm); strings.Contains(r.stdout, want) {
			return true
		}
	}
	return false
}

// TestGuestConsoleFloodIsCappedAndKillNeedsNoAgent plays a guest that
// floods its serial console: the host keeps no more of it than the cap
// (the newest part), the daemon stays small and answers. Then the guest
// stops answering altogether (its QEMU frozen): kill -s KILL still ends it
// at once, without waiting on the guest's agent.
func TestGuestConsoleFloodIsCappedAndKillNeedsNoAgent(t *testing.T) {
	// Serial: t.Setenv, and bounds on the daemon's RSS and on how long a kill takes.
	const capBytes = 128 << 10
	t.Setenv("KILN_CONSOLE_MAX_SIZE", strconv.Itoa(capBytes))
	e := newEnv(t)
	id := strings.TrimSpace(ok(t, "run -d flood", e.run("-d", "--name", "flood", e.hello(), "-console", "1000000", "-sleep", "1h")).stdout)
	if !e.waitLog("flood", "console flood done", 3*time.Minute) {
		t.Fatalf("the guest never finished flooding its console:\n%s", e.kiln("logs", "flood"))
	}
	start := time.Now()
	ok(t, "ps during the flood", e.kiln("ps"))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("kiln ps took %v after a console flood", d)
	}
	if rss := e.daemonRSS(); rss > 100<<20 {
		t.Errorf("the daemon's RSS is %d MiB after a console flood", rss>>20)
	}
	dir := filepath.Join(e.root, "vms", id)
	var kept int64
	for _, f := range []string{"console.log", "console.log.1"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("after a 1 MB flood and a %d-byte cap: %v", capBytes, err)
		}
		kept += st.Size()
	}
	if kept > capBytes {
		t.Errorf("the host kept %d bytes of console, the cap is %d", kept, capBytes)
	}
	if r := ok(t, "logs --console", e.kiln("logs", "--console", "flood")); !strings.Contains(r.stdout, "console flood done: ") {
		t.Errorf("the console log lost its newest line; it ends %q", r.stdout[max(0, len(r.stdout)-200):])
	}

	pids := qemuUnder(e.root)
	if len(pids) != 1 {
		t.Fatalf("want the VM's one QEMU, found %v", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	ok(t, "kill of a frozen VM", e.kiln("kill", "flood"))
	// The agent's reply deadline is 10 s: a kill through it would take that.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("kill of a VM whose guest does not answer took %v", d)
	}
	for end := time.Now().Add(30 * time.Second); e.inspect("flood", "{{.State.Status}}") != "exited"; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the killed VM is still %s", e.inspect("flood", "{{.State.Status}}"))
		}
	}
	if code := e.inspect("flood", "{{.State.ExitCode}}"); code != "137" {
		t.Errorf("a killed VM's exit code is %s, want 137", code)
	}
	ok(t, "rm flood", e.kiln("rm", "flood"))
}

// TestFullDiskReachesTheGuestAndTheReserveRefusesNewDisks runs kiln on a
// 200 MiB filesystem. Below the free-space reserve no volume or VM is
// made, and nothing is left of them. With no reserve, a guest that fills
// the filesystem gets an I/O error and goes on (it reports it and exits),
// where QEMU's default would pause the VM while kiln shows it running.
func TestFullDiskReachesTheGuestAndTheReserveRefusesNewDisks(t *testing.T) {
	// Serial: t.Setenv, and the free-space reserve is of the host's file system.
	requireRoot(t)
	e := newEnv(t)
	if err := unix.Mount("kiln-test", e.root, "tmpfs", 0, "size=200m,mode=0711"); err != nil {
		t.Skipf("cannot mount a small tmpfs for kiln's root: %v", err)
	}
	t.Cleanup(func() {
		e.stopDaemon()
		_ = unix.Unmount(e.root, unix.MNT_DETACH)
	})

	t.Setenv("KILN_DISK_RESERVE", "1g")
	for _, args := range [][]string{{"volume", "create", "big"}, {"run", "--kernel", e.kernel, "--rm", "-v", "big:/data", e.hello()}} {
		r := e.kiln(args...)
		if r.code != 125 || !strings.Contains(r.stderr, "not enough free space") || !strings.Contains(r.stderr, "--disk-reserve") {
			t.Errorf("kiln %s below the reserve: want exit 125 naming the free space and --disk-reserve:\n%s", strings.Join(args, " "), r)
		}
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("refused VMs left directories %v", d)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "volumes")); len(ents) != 0 {
		t.Errorf("a refused volume left %v", ents)
	}

	e.stopDaemon()
	t.Setenv("KILN_DISK_RESERVE", "0")
	ok(t, "volume create big", e.kiln("volume", "create", "big"))
	r := e.run("--rm", "-v", "big:/data", e.hello(), "-fill", "/data/fill")
	if r.code != 0 || !strings.Contains(r.stdout, "fill: stopped after") || !strings.Contains(r.stdout, "input/output error") {
		t.Fatalf("a guest filling the host's filesystem: want its write to fail with an I/O error and the VM to end:\n%s", r)
	}
	t.Logf("guest on a full disk: %s", strings.TrimSpace(r.stdout[strings.Index(r.stdout, "fill:"):]))
	ok(t, "ps on a full disk", e.kiln("ps", "-a"))
}

// dirBytes returns the bytes the files in dir take on disk, the VM's
// initrd (written once, at create) aside.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var st unix.Stat_t
		if e.Name() == "initrd" || unix.Lstat(filepath.Join(dir, e.Name()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		n += st.Blocks * 512
	}
	return n
}

// TestGuestStdoutWhileTheDaemonIsDownIsBoundedAndKept plays a guest that
// writes all it can to stdout while the daemon is killed: nothing on the
// host grows (the guest waits on its full pipe), and once a daemon is back
// every line written meanwhile arrives, in order, and the exit code the
// program ended with (while no daemon ran) is known.
func TestGuestStdoutWhileTheDaemonIsDownIsBoundedAndKept(t *testing.T) {
	// Serial: it bounds the daemon's RSS and gives the guest a timed window.
	const lines = 300000
	e := newEnv(t)
	id := strings.TrimSpace(ok(t, "run -d", e.run("-d", "--name", "chatty", e.hello(), "-lines", strconv.Itoa(lines), "-exit", "7")).stdout)
	if !e.waitLog("chatty", "line 1 of", time.Minute) {
		t.Fatalf("the guest never wrote:\n%s", e.kiln("logs", "chatty"))
	}
	if err := syscall.Kill(e.daemonPID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.root, "vms", id)
	before := dirBytes(t, dir)
	time.Sleep(20 * time.Second)
	if grew := dirBytes(t, dir) - before; grew > 0 {
		t.Errorf("with no daemon, the guest's output grew the host's files by %d bytes", grew)
	}
	if len(qemuUnder(e.root)) != 1 {
		t.Fatalf("the VM did not wait for a daemon to take its output")
	}
	ok(t, "ps (a new daemon)", e.kiln("ps"))
	ok(t, "wait", e.kiln("wait", "chatty"))
	if code := e.inspect("chatty", "{{.State.ExitCode}}"); code != "7" {
		t.Errorf("exit code %s, want the program's 7", code)
	}
	if rss := e.daemonRSS(); rss > 100<<20 {
		t.Errorf("the daemon's RSS is %d MiB after taking the backlog", rss>>20)
	}
	// Every line arrives, in order, but for what the killed daemon had
	// read and not yet written when SIGKILL came: at most one read (256
	// KiB, some 13000 of these lines), in one run. What the guest wrote
	// while no daemon ran is all there.
	r := ok(t, "logs", e.kiln("logs", "chatty"))
	next, gaps := 1, 0
	for _, l := range strings.Split(r.stdout, "\n") {
		var n, of int
		if _, err := fmt.Sscanf(l, "line %d of %d", &n, &of); err != nil {
			continue
		}
		if n != next {
			if n < next || n-next > (256<<10)/20 || gaps > 0 {
				t.Fatalf("line %d where %d was due (gap %d): output lost or out of order", n, next, gaps)
			}
			t.Logf("the daemon killed mid-read lost lines %d to %d", next, n-1)
			gaps++
		}
		next = n + 1
	}
	if next != lines+1 {
		t.Errorf("the logs end at line %d of %d", next-1, lines)
	}
	ok(t, "rm", e.kiln("rm", "chatty"))
}

// neighbour returns the MAC the namespace's neighbour table holds for ip
// ("" when none).
func (e *netEnv) neighbour(ip string) string {
	e.t.Helper()
	out, err := exec.Command("ip", "-n", e.ns, "neigh", "show", ip).CombinedOutput()
	if err != nil {
		e.t.Fatalf("ip neigh show %s: %v: %s", ip, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// TestBridgeGuestCannotSpoof runs a root guest on a bridge network that
// sends raw frames claiming its neighbour's and its gateway's addresses
// (ARP replies, UDP from them, UDP under a forged MAC). The host's
// neighbour entry for the neighbour keeps the neighbour's MAC, and the
// neighbour's published port still answers.
func TestBridgeGuestCannotSpoof(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	okr(t, "network create", e.kiln("network", "create", "lan", "--subnet", "10.93.0.0/24"))
	e.runD("--name", "victim", "--network", "lan", "--ip", "10.93.0.10", "-p", "127.0.0.1:18097:80", httpd(t))
	e.awaitLog("victim", "serving HTTP", 1)
	get := func(when string) {
		t.Helper()
		if body, err := e.helper("get", "http://127.0.0.1:18097/"); err != nil || body != "hello from kiln VM victim\n" {
			t.Errorf("GET the victim's published port %s = %q, %v", when, body, err)
		}
	}
	get("before the attack")
	mac := e.inspect("victim", "{{.NetworkSettings.MACAddress}}")
	if got := e.neighbour("10.93.0.10"); got != mac {
		t.Fatalf("the host's neighbour entry for the victim is %q, want its MAC %s", got, mac)
	}
	r := okr(t, "the attacker", e.run("--rm", "--network", "lan", "--ip", "10.93.0.20", e.hello(), "-spoof", "10.93.0.10,10.93.0.1"))
	if !strings.Contains(r.stdout, "spoof: sent ") || strings.Contains(r.stdout, "spoof: sent 0 ") {
		t.Fatalf("the attacking guest sent nothing:\n%s", r)
	}
	if got := e.neighbour("10.93.0.10"); got != "" && got != mac {
		t.Errorf("a spoofing guest poisoned the host's neighbour entry for its neighbour: %s, want %s", got, mac)
	}
	get("after the attack")
	okr(t, "rm", e.kiln("rm", "-f", "victim"))
	okr(t, "network rm", e.kiln("network", "rm", "lan"))
}
