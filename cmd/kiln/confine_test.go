package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/vm"
)

// requireRoot skips a test of the jail, which only a root daemon builds.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("VMs are jailed by a root daemon: run the tests as root")
	}
}

// procStatus reads the fields of /proc/<pid>/status a jail sets.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	m, err := readProcStatus(pid)
	if err != nil {
		t.Fatalf("reading QEMU's status: %v", err)
	}
	return m
}

// readProcStatus reads /proc/PID/status as its keys and values.
func readProcStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// cgroupLimits reads, from the host's cgroup files, the memory, CPU and
// pids limits of the cgroups process pid is in (v1 or v2, whichever this
// host has).
func cgroupLimits(t *testing.T, pid int) (memory, cpu, pids string, dirs []string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		v, err := os.ReadFile(p)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(v))
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		ctrls, path := strings.Split(f[1], ","), f[2]
		for _, c := range ctrls {
			dir := filepath.Join("/sys/fs/cgroup", c, path)
			switch c {
			case "memory":
				memory, dirs = read(filepath.Join(dir, "memory.limit_in_bytes")), append(dirs, dir)
			case "cpu":
				cpu, dirs = read(filepath.Join(dir, "cpu.cfs_quota_us"))+"/"+read(filepath.Join(dir, "cpu.cfs_period_us")), append(dirs, dir)
			case "pids":
				pids, dirs = read(filepath.Join(dir, "pids.max")), append(dirs, dir)
			}
		}
		if f[0] == "0" && f[1] == "" && memory == "" {
			dir := filepath.Join("/sys/fs/cgroup", path)
			if _, err := os.Stat(filepath.Join(dir, "memory.max")); err == nil {
				memory, cpu, pids = read(filepath.Join(dir, "memory.max")), read(filepath.Join(dir, "cpu.max")), read(filepath.Join(dir, "pids.max"))
				dirs = append(dirs, dir)
			}
		}
	}
	return memory, cpu, pids, dirs
}

// TestJailOfARunningVM checks a running VM's QEMU from the host, as the
// kernel reports it: its own uid from kiln's range, no capabilities,
// no_new_privs, a seccomp filter, its own namespaces, a root holding only
// its VM's files, a cgroup with memory, CPU and pids limits. inspect shows
// the same. After kill -9 of the daemon the VM is reattached and keeps its
// jail; rm leaves no cgroup, uid, jail or QEMU behind.
func TestJailOfARunningVM(t *testing.T) {
	// Serial: after rm it checks its VM's uid is free, and another test's VM could take it at once.
	requireRoot(t)
	e := newEnv(t)
	ok(t, "run -d", e.run("-d", "--name", "jailed", "--memory", "128m", "--cpus", "1", "-p", "127.0.0.1::80", httpd(t)))
	pid, _ := strconv.Atoi(e.inspect("jailed", "{{.State.PID}}"))
	if pid == 0 {
		t.Fatal("no QEMU pid")
	}
	st := procStatus(t, pid)
	uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
	if uid < jail.DefaultUIDMin || uid > jail.DefaultUIDMax {
		t.Errorf("QEMU runs as uid %d, want one of kiln's range %d-%d", uid, jail.DefaultUIDMin, jail.DefaultUIDMax)
	}
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"} {
		if st[k] != want {
			t.Errorf("QEMU's %s is %q, want %q", k, st[k], want)
		}
	}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts"} {
		ours, _ := os.Readlink("/proc/self/ns/" + ns)
		theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if ours == theirs {
			t.Errorf("QEMU shares the host's %s namespace (%s)", ns, ours)
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil {
		t.Fatal(err)
	}
	var top []string
	for _, d := range ents {
		top = append(top, d.Name())
	}
	if got := strings.Join(top, " "); got != "dev lib lib64 proc usr vm" {
		t.Errorf("QEMU's root holds %q, want only dev lib lib64 proc usr vm", got)
	}
	for _, hostPath := range []string{"etc/passwd", "root", "tmp", strings.TrimPrefix(e.root, "/")} {
		if _, err := os.Stat(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), hostPath)); err == nil {
			t.Errorf("QEMU's root shows the host's /%s", hostPath)
		}
	}
	memory, cpu, pids, dirs := cgroupLimits(t, pid)
	if want := strconv.Itoa((128 + 192 + 32) << 20); memory != want {
		t.Errorf("QEMU's cgroup memory limit is %q, want %s (guest, plus QEMU's own)", memory, want)
	}
	if cpu != "200000/100000" && cpu != "200000 100000" {
		t.Errorf("QEMU's cgroup CPU quota is %q, want two CPUs (the guest's one, and one for QEMU's own threads)", cpu)
	}
	if pids != "256" {
		t.Errorf("QEMU's cgroup pids limit is %q, want 256", pids)
	}
	if got := e.inspect("jailed", "{{.Confinement.Jailed}} {{.Confinement.UID}} {{.Confinement.CapEff}} {{.Confinement.NoNewPrivs}} {{.Confinement.Seccomp}} {{.Confinement.Namespaces}} {{.Confinement.Cgroup.MemoryLimit}} {{.Confinement.Cgroup.PidsLimit}}"); got != fmt.Sprintf("true %d 0000000000000000 true filter [mnt pid ipc uts] %s 256", uid, memory) {
		t.Errorf("inspect shows the confinement as %q", got)
	}

	// The daemon dies; a new one takes the VM back, jail and all.
	dpid := e.daemonPID()
	syscall.Kill(dpid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(dpid, 0) == nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond) // the kill is asynchronous; nothing to wait on
	}
	if got := e.inspect("jailed", "{{.State.Status}} {{.State.PID}} {{.Confinement.UID}}"); got != fmt.Sprintf("running %d %d", pid, uid) {
		t.Errorf("after kill -9 of the daemon: %q, want running %d %d", got, pid, uid)
	}
	port := e.inspect("jailed", "{{(index .Ports 0).HostPort}}")
	if out := httpGet(t, "127.0.0.1:"+port); !strings.Contains(out, "hello from kiln VM jailed") {
		t.Errorf("the reattached VM's published port answers %q", out)
	}
	ok(t, "rm -f", e.kiln("rm", "-f", "jailed"))
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("rm left the VM's cgroup %s", d)
		}
	}
	if jail.UIDInUse(jail.LockDir, uid) {
		t.Errorf("rm left uid %d in use", uid)
	}
	if pids := qemuUnder(e.root); len(pids) != 0 {
		t.Errorf("rm left QEMU running: %v", pids)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("rm left VM directories (and jails): %v", d)
	}
}

// httpGet fetches / from addr, bounded.
func httpGet(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		out, err := exec.CommandContext(ctx, "bash", "-c", `exec 3<>/dev/tcp/${0%:*}/${0#*:} && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3`, addr).Output()
		if err == nil && len(out) > 0 {
			return string(out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return ""
}

// TestJailBadInput: what the jail cannot grant is refused before anything
// is made, with the value and the fix.
func TestJailBadInput(t *testing.T) {
	// Serial: it looks for leftovers among the host's kiln cgroups, which other tests' VMs make.
	requireRoot(t)
	e := newEnv(t)
	// More memory than the share of the host kiln may give VMs (the limit
	// adds QEMU's own to the guest's).
	host := vm.ThisHost().MemoryMiB
	big := fmt.Sprintf("%dm", host*95/100)
	groups := func() map[string]bool {
		m := map[string]bool{}
		for _, h := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			ents, _ := os.ReadDir(filepath.Join(h, vm.CgroupParent))
			for _, d := range ents {
				if d.IsDir() {
					m[filepath.Join(h, d.Name())] = true
				}
			}
		}
		return m
	}
	before := groups()
	r := e.run("--rm", "--memory", big, e.hello())
	if r.code != 125 || !strings.Contains(r.stderr, "MiB") || !strings.Contains(r.stderr, "memory-share") {
		t.Errorf("run --memory %s on a host of %d MiB: want exit 125 naming the figures and the fix:\n%s", big, host, r)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("a refused run left VM directories: %v", d)
	}
	for g := range groups() {
		if !before[g] {
			t.Errorf("a refused run left a cgroup: %s", g)
		}
	}
	// A uid range holding a host user.
	e2 := newEnv(t)
	cmd := e2.command(context.Background(), "run", "--rm", "--kernel", e2.kernel, e2.hello())
	cmd.Env = append(cmd.Env, jail.UIDsEnv+"=65000-66000")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 125 || !strings.Contains(string(out), "65000-66000") || !strings.Contains(string(out), "nobody") {
		t.Errorf("a uid range holding user nobody: want exit 125 naming the range and the user, got %d:\n%s", code, out)
	}
	if d := e2.vmDirs(); len(d) != 0 {
		t.Errorf("a refused run left VM directories: %v", d)
	}
	// --unconfined is the explicit way out: QEMU then runs as the daemon.
	ok(t, "run -d --unconfined", e.run("-d", "--name", "free", "--unconfined", httpd(t)))
	if got := e.inspect("free", "{{.Confinement.Jailed}} {{.Confinement.UID}} {{.Confinement.Seccomp}}"); got != "false 0 disabled" {
		t.Errorf("an unconfined VM's confinement shows as %q", got)
	}
	ok(t, "rm -f", e.kiln("rm", "-f", "free"))
}

// TestHostDirectoryGivesTheGuestNoHostPrivilege plays a guest root that
// tries to turn a shared host directory into host privilege: a setuid-root
// copy of bash, a device node, chown and chmod of a file the host put
// there. The host's files stay as they were; what the guest made belongs
// to the directory's owner, without a setuid bit or a device.
func TestHostDirectoryGivesTheGuestNoHostPrivilege(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	e := newEnv(t)
	loadDebian(t, e, nil)
	dir := t.TempDir()
	if err := os.Chown(dir, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("host's\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(existing, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	script := `exec 2>&1
cp /bin/bash /x/sh && chown 0:0 /x/sh && chmod 4755 /x/sh && echo setuid-made
mknod /x/mem c 1 1 && echo mknod-made
chmod 6777 /x/existing && chown 0:0 /x/existing && echo existing-changed
mkdir /x/d && chmod 2777 /x/d && echo dir-made
stat -c '%A %u:%g %n' /x/sh /x/existing /x/mem /x/d
cat /x/existing`
	r := ok(t, "run", e.run("--rm", "--pull", "never", "--network", "none", "-v", dir+":/x", "kiln-test/debian:bookworm", "/bin/sh", "-c", script))
	if !strings.Contains(r.stdout, "host's") {
		t.Errorf("the guest cannot read the host's file in the shared directory:\n%s", r.stdout)
	}
	for _, name := range []string{"sh", "mem", "d", "existing"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Errorf("%s: %v (guest said:\n%s)", name, err, r.stdout)
			continue
		}
		mode := st.Mode
		if mode&(syscall.S_ISUID|syscall.S_ISGID) != 0 {
			t.Errorf("the guest made %s setuid/setgid on the host: mode %o", name, mode)
		}
		if ft := mode & syscall.S_IFMT; ft == syscall.S_IFCHR || ft == syscall.S_IFBLK {
			t.Errorf("the guest made a device node %s on the host", name)
		}
		if st.Uid != 4321 || st.Gid != 4322 {
			t.Errorf("%s is owned by %d:%d on the host, want the directory's owner 4321:4322", name, st.Uid, st.Gid)
		}
		if name == "existing" && mode&0o7777 != 0o640 {
			t.Errorf("the guest changed the host file's mode to %o", mode&0o7777)
		}
		if name != "existing" && mode&0o077 != 0 {
			t.Errorf("what the guest made (%s) is open to other host users: mode %o", name, mode&0o777)
		}
	}
}

// TestUserModeGuestReachesOutsideNotTheHost: from a guest as root on the
// default network, a service on the host's 127.0.0.1 (reached through
// slirp's 10.0.2.2) and a link-local address are refused; a server outside
// answers. With --add-host NAME:host-gateway the host's service answers,
// and link-local stays closed.
func TestUserModeGuestReachesOutsideNotTheHost(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	e := newNetEnv(t)
	e.outside()
	loadDebian(t, e.env, nil)
	for _, a := range []struct{ addr, body string }{{"127.0.0.1:18090", "host-loopback"}, {"169.254.169.254:80", "metadata"}} {
		if strings.HasPrefix(a.addr, "169.254.") {
			if out, err := exec.Command("ip", "-n", e.ns, "addr", "add", "169.254.169.254/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Fatalf("adding a link-local address: %v: %s", err, out)
			}
		}
		serve(t, func(ctx context.Context) *exec.Cmd { return e.helperCmd(ctx, "serve", a.addr, a.body) })
	}
	get := func(host, port string) string {
		return `(exec 3<>/dev/tcp/` + host + `/` + port + ` && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>&1 | tail -n1; echo "` + host + `:` + port + ` rc=${PIPESTATUS[0]}"`
	}
	script := strings.Join([]string{get("10.0.2.2", "18090"), get("169.254.169.254", "80"), get("192.168.77.2", "8000")}, "\n")
	r := e.run("--rm", "--pull", "never", "kiln-test/debian:bookworm", "/bin/bash", "-c", script)
	if strings.Contains(r.stdout, "host-loopback") {
		t.Errorf("a guest reached a service on the host's 127.0.0.1:\n%s", r)
	}
	if strings.Contains(r.stdout, "metadata") {
		t.Errorf("a guest reached a link-local address:\n%s", r)
	}
	if !strings.Contains(r.stdout, "outside") {
		t.Errorf("a guest did not reach a server outside:\n%s", r)
	}
	if !strings.Contains(r.stdout, "Connection refused") {
		t.Errorf("the host's loopback should refuse at once:\n%s", r)
	}

	script = strings.Join([]string{get("host.kiln.internal", "18090"), get("169.254.169.254", "80")}, "\n")
	r = e.run("--rm", "--pull", "never", "--add-host", "host.kiln.internal:host-gateway", "kiln-test/debian:bookworm", "/bin/bash", "-c", script)
	if !strings.Contains(r.stdout, "host-loopback") {
		t.Errorf("with --add-host host.kiln.internal:host-gateway the guest did not reach the host's service:\n%s", r)
	}
	if strings.Contains(r.stdout, "metadata") {
		t.Errorf("the host-gateway opt-in opened link-local addresses too:\n%s", r)
	}
}

// TestGuestMemoryHogHarmsNoOne: a guest that allocates past its memory is
// killed inside its own VM (or, were QEMU itself to grow, by its cgroup);
// the daemon and a neighbour VM stay up.
func TestGuestMemoryHogHarmsNoOne(t *testing.T) {
	// Serial: it presses the host's memory on purpose.
	requireRoot(t)
	e := newEnv(t)
	ok(t, "run -d neighbour", e.run("-d", "--name", "neighbour", "-p", "127.0.0.1::80", httpd(t)))
	daemon := e.daemonPID()
	// 400 MiB touched in a 128 MiB guest. The program runs from the
	// initramfs, so the guest has no file pages to thrash on and its OOM
	// killer acts at once (a program on a disk can keep a guest without
	// swap reclaiming its own code for minutes under TCG).
	r := e.run("--rm", "--network", "none", "--memory", "128m", e.hello(), "-alloc-mb", "400")
	if r.code == 0 || strings.Contains(r.stdout, "allocated 400 MiB") {
		t.Errorf("a guest allocating 400 MiB in 128 MiB was not stopped:\n%s", r)
	}
	if e.daemonPID() != daemon || syscall.Kill(daemon, 0) != nil {
		t.Errorf("the daemon (pid %d) did not survive a guest's memory hog", daemon)
	}
	if got := e.inspect("neighbour", "{{.State.Status}}"); got != "running" {
		t.Errorf("the neighbour VM is %q after a guest's memory hog", got)
	}
	port := e.inspect("neighbour", "{{(index .Ports 0).HostPort}}")
	if out := httpGet(t, "127.0.0.1:"+port); !strings.Contains(out, "hello from kiln VM neighbour") {
		t.Errorf("the neighbour VM answers %q after a guest's memory hog", out)
	}
	ok(t, "rm -f neighbour", e.kiln("rm", "-f", "neighbour"))
}
