package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	emptyimage "github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/testenv"
)

// shimEnv is one test's containerd, with the kiln shim on its PATH and a
// kiln root of its own.
type shimEnv struct {
	t        *testing.T
	dir      string // binaries: kiln, kiln-init, the shim, hello
	kilnRoot string
	config   string
	sock     string
	log      string
	kernel   string
	rootfs   string // a root filesystem holding /bin/hello
	stdin    string // the stdin of the commands run
	cmd      *exec.Cmd
}

// testKernel is the guest kernel: $KILN_TEST_KERNEL, or the default kernel
// of the default root (what scripts/setup builds).
func testKernel(t *testing.T) string {
	if p := os.Getenv("KILN_TEST_KERNEL"); p != "" {
		return p
	}
	root := os.Getenv(rootEnv)
	if root == "" {
		root = defaultRoot
	}
	k, err := kernel.NewStore(root).Get(kernel.DefaultName)
	if err != nil {
		t.Skipf("no guest kernel (%v): run scripts/setup (or `kiln kernel build`), or set KILN_TEST_KERNEL", err)
	}
	return k.Path
}

func build(t *testing.T, dir string) {
	t.Helper()
	if err := testenv.Build(dir, raceEnabled,
		testenv.Binary{Out: "kiln", Pkg: "kiln.dev/kiln/cmd/kiln"},
		testenv.Binary{Out: "kiln-init", Pkg: "kiln.dev/kiln/cmd/kiln-init", Static: true},
		testenv.Binary{Out: "containerd-shim-kiln-v2", Pkg: "kiln.dev/kiln/cmd/containerd-shim-kiln-v2"},
		testenv.Binary{Out: "hello", Pkg: "kiln.dev/kiln/examples/hello", Static: true}); err != nil {
		t.Fatal(err)
	}
}

func newShimEnv(t *testing.T) *shimEnv {
	testenv.NeedVM(t)
	for _, p := range []string{"containerd", "ctr", "script"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not found: run scripts/setup (it installs containerd, and util-linux's script)", p)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not found: run scripts/setup")
	}
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
	k := testKernel(t)
	tmp := t.TempDir()
	e := &shimEnv{
		t: t, dir: filepath.Join(tmp, "bin"), kilnRoot: filepath.Join(tmp, "kiln"),
		config: filepath.Join(tmp, "containerd.toml"), sock: filepath.Join(tmp, "c.sock"),
		log: filepath.Join(tmp, "containerd.log"), kernel: k, rootfs: filepath.Join(tmp, "rootfs"),
	}
	build(t, e.dir)
	if err := os.MkdirAll(filepath.Join(e.rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	hello, err := os.ReadFile(filepath.Join(e.dir, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.rootfs, "bin", "hello"), hello, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(tmp, "croot"), filepath.Join(tmp, "cstate"), e.sock, e.sock+".ttrpc")
	if err := os.WriteFile(e.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cleanup)
	e.startContainerd()
	return e
}

func (e *shimEnv) env() []string {
	return append(os.Environ(), "PATH="+e.dir+":"+os.Getenv("PATH"), rootEnv+"="+e.kilnRoot, kernelEnv+"="+e.kernel,
		"GORACE=log_path="+filepath.Join(e.dir, "race"))
}

// checkRaces fails the test with the race reports of the race-built
// binaries it ran (the shims, whose stderr goes nowhere, and the kiln
// daemon), written under GORACE's log_path.
func (e *shimEnv) checkRaces() {
	files, _ := filepath.Glob(filepath.Join(e.dir, "race.*"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && len(b) > 0 {
			e.t.Errorf("a race-built binary reported a data race (%s):\n%s", f, b)
		}
	}
}

// startContainerd starts containerd and waits until it answers.
func (e *shimEnv) startContainerd() {
	e.t.Helper()
	logf, err := os.OpenFile(e.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", e.config)
	cmd.Env = e.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting containerd: %v", err)
	}
	e.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := e.tryCtr("version"); r.code == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("containerd did not answer at %s within 30s; its log:\n%s", e.sock, e.readLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killContainerd kills containerd (SIGKILL: its shims and their VMs stay).
func (e *shimEnv) killContainerd() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Kill()
	_ = e.cmd.Wait()
	e.cmd = nil
}

// killKilnDaemon kills the kiln root's daemon with SIGKILL and waits for
// it to be gone.
func (e *shimEnv) killKilnDaemon() {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.kilnRoot, "run", "kiln.pid"))
	if err != nil {
		e.t.Fatalf("the kiln daemon's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		e.t.Fatalf("the kiln daemon's pid file holds %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		e.t.Fatalf("killing the kiln daemon (pid %d): %v", pid, err)
	}
	alive := func() bool { // a zombie is gone: its parent may never reap it
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		_, rest, _ := strings.Cut(string(st), ") ")
		return !strings.HasPrefix(rest, "Z")
	}
	for deadline := time.Now().Add(10 * time.Second); alive(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatalf("the kiln daemon (pid %d) outlived SIGKILL", pid)
		}
	}
}

func (e *shimEnv) readLog() string {
	b, _ := os.ReadFile(e.log)
	return string(b)
}

// shims returns the pids of the shims this test's containerd started.
func (e *shimEnv) shims() []int {
	return procsWith("containerd-shim-kiln-v2", "-address\x00"+e.sock+"\x00")
}

// procsWith returns the pids of the processes whose command line holds
// both strings.
func procsWith(a, b string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cl, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cl, []byte(a)) || !bytes.Contains(cl, []byte(b)) {
			continue
		}
		var pid int
		fmt.Sscanf(strings.TrimPrefix(p, "/proc/"), "%d", &pid)
		pids = append(pids, pid)
	}
	return pids
}

// cleanup ends containerd, the shims, the kiln daemon and any VM of the
// test's root, and unmounts what is left under its directories.
func (e *shimEnv) cleanup() {
	e.killContainerd()
	// After a failure, what the test left running is no news.
	report := e.t.Errorf
	if e.t.Failed() {
		report = e.t.Logf
	}
	for _, pid := range e.shims() {
		report("shim %d left running", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if b, err := os.ReadFile(filepath.Join(e.kilnRoot, "run", "kiln.pid")); err == nil {
		var pid int
		fmt.Sscanf(string(b), "%d", &pid)
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	for _, pid := range qemuOf(e.kilnRoot) {
		report("QEMU %d of %s left running", pid, e.kilnRoot)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	unmountUnder(filepath.Dir(e.kilnRoot))
	e.checkRaces()
}

// qemuOf returns the QEMU processes of a kiln root: a jailed one carries
// KILN_ROOT=root in its environment, an unconfined one names the root's
// files on its command line.
func qemuOf(root string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cl, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cl, []byte("qemu-system")) {
			continue
		}
		env, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "environ"))
		if !bytes.Contains(cl, []byte(root+"/")) && !bytes.Contains(append([]byte{0}, env...), []byte("\x00KILN_ROOT="+root+"\x00")) {
			continue
		}
		var pid int
		fmt.Sscanf(strings.TrimPrefix(p, "/proc/"), "%d", &pid)
		pids = append(pids, pid)
	}
	return pids
}

// unmountUnder lazily unmounts every mount under dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mps = append(mps, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mps)))
	for _, m := range mps {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func (e *shimEnv) tryCtr(args ...string) result {
	return e.run("ctr", append([]string{"--address", e.sock}, args...)...)
}

func (e *shimEnv) run(name string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = e.env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if e.stdin != "" {
		cmd.Stdin = strings.NewReader(e.stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return result{code: -1, stderr: err.Error()}
	}
	return result{code, out.String(), errb.String()}
}

// ctr runs ctr and fails the test unless it exits with want.
func (e *shimEnv) ctr(want int, args ...string) result {
	e.t.Helper()
	r := e.tryCtr(args...)
	if r.code != want {
		e.t.Fatalf("ctr %s: want exit %d, got %s\ncontainerd's log:\n%s", strings.Join(args, " "), want, r, e.readLog())
	}
	return r
}

func (e *shimEnv) kiln(args ...string) result {
	return e.run(filepath.Join(e.dir, "kiln"), append([]string{"--root", e.kilnRoot}, args...)...)
}

// taskStatus returns the status ctr task ls shows for id, or "".
func (e *shimEnv) taskStatus(id string) string {
	e.t.Helper()
	r := e.ctr(0, "task", "ls")
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

func (e *shimEnv) waitStatus(id, want string, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := e.taskStatus(id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s is %q after %s, want %s", id, got, within, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const runtimeFlag = "--runtime=" + runtimeName

// TestContainerd drives kiln VMs as containerd tasks with ctr: a task
// that runs to its exit code, and a long one that takes an exec, outlives
// a containerd restart, ends on SIGTERM and is deleted with nothing left.
func TestContainerd(t *testing.T) {
	e := newShimEnv(t)

	r := e.ctr(3, "run", "--rm", runtimeFlag, "--rootfs", e.rootfs, "id1", "/bin/hello", "-exit", "3", "a", "b")
	if !strings.Contains(r.stdout, "hello from default-id1") || !strings.Contains(r.stdout, `args: ["a" "b"]`) {
		t.Errorf("ctr run printed no greeting and args:\n%s", r)
	}
	if !strings.Contains(r.stderr, "this line went to stderr") {
		t.Errorf("ctr run printed not the program's stderr:\n%s", r)
	}

	e.ctr(0, "run", "-d", runtimeFlag, "--rootfs", e.rootfs, "id2", "/bin/hello", "-sleep", "10m", "-exit", "7")
	e.waitStatus("id2", "RUNNING", 5*time.Second)
	r = e.ctr(0, "task", "exec", "--exec-id", "e1", "id2", "/bin/hello", "x")
	if !strings.Contains(r.stdout, `args: ["x"]`) {
		t.Errorf("ctr task exec printed not the exec's args:\n%s", r)
	}
	e.ctr(5, "task", "exec", "--exec-id", "e2", "id2", "/bin/hello", "-exit", "5")
	e.stdin = "from stdin\n"
	r = e.ctr(0, "task", "exec", "--exec-id", "e3", "id2", "/bin/hello", "-cat", "/proc/self/fd/0")
	e.stdin = ""
	if !strings.Contains(r.stdout, "cat /proc/self/fd/0: from stdin") {
		t.Errorf("ctr task exec: the command did not read its stdin:\n%s", r)
	}
	// A tty: ctr needs one of its own, which script(1) gives it.
	r = e.run("script", "-qec", fmt.Sprintf("ctr --address %s task exec -t --exec-id e4 id2 /bin/hello -exit 4", e.sock), "/dev/null")
	if r.code != 4 || !strings.Contains(r.stdout, "hello from default-id2") || !strings.Contains(r.stdout, "this line went to stderr") {
		t.Errorf("ctr task exec -t: want exit 4 and the command's stdout and stderr on its tty, got %s", r)
	}
	r = e.ctr(0, "task", "metrics", "id2")
	if !regexp.MustCompile(`(?m)^memory\.usage +[1-9][0-9]* *$`).MatchString(r.stdout) {
		t.Errorf("ctr task metrics shows no memory usage:\n%s", r)
	}

	e.ctr(0, "task", "pause", "id2")
	e.waitStatus("id2", "PAUSED", 5*time.Second)
	if got := e.kiln("inspect", "--format", "{{.State.Status}}", "default-id2"); strings.TrimSpace(got.stdout) != "paused" {
		t.Errorf("ctr task pause: the VM is %q, want paused", got.stdout)
	}
	e.ctr(0, "task", "resume", "id2")
	e.waitStatus("id2", "RUNNING", 5*time.Second)

	e.killContainerd()
	e.startContainerd()
	e.waitStatus("id2", "RUNNING", 5*time.Second)

	// The kiln daemon dies: the VM runs on, and the shim, whose wait for
	// the VM's end broke, waits again through a daemon it starts. The task
	// is not reported ended, and its exit code is still the program's.
	e.killKilnDaemon()
	time.Sleep(2 * time.Second)
	e.waitStatus("id2", "RUNNING", 5*time.Second)

	e.ctr(0, "task", "kill", "-s", "SIGTERM", "id2")
	e.waitStatus("id2", "STOPPED", time.Minute)
	if r := e.kiln("logs", "default-id2"); !strings.Contains(r.stdout, "got terminated, exiting") {
		t.Errorf("the VM's program did not report the SIGTERM:\n%s", r)
	}
	r = e.ctr(0, "task", "delete", "id2")
	if !strings.Contains(r.stderr, "exit code 7") {
		t.Errorf("ctr task delete does not report the program's exit code 7:\n%s", r)
	}
	e.ctr(0, "container", "delete", "id2")

	ps := e.kiln("ps", "-a")
	if lines := strings.Split(strings.TrimSpace(ps.stdout), "\n"); ps.code != 0 || len(lines) != 1 {
		t.Errorf("kiln ps -a lists VMs after the tasks' deletion:\n%s", ps)
	}
	if ents, err := os.ReadDir(filepath.Join(e.kilnRoot, "vms")); err != nil || len(ents) != 0 {
		t.Errorf("the kiln root's vms/ holds %d entries (%v) after the tasks' deletion", len(ents), err)
	}
	e.waitNoShims()
}

// TestContainerdRefusesTerminal checks that a task asking for a tty is
// refused with the reason, and leaves no VM.
func TestContainerdRefusesTerminal(t *testing.T) {
	e := newShimEnv(t)
	// ctr run -t needs a terminal of its own; a spec with
	// process.terminal is what ctr makes of it, given here directly.
	spec := filepath.Join(t.TempDir(), "config.json")
	r := e.ctr(0, "oci", "spec")
	var sp specs.Spec
	if err := json.Unmarshal([]byte(r.stdout), &sp); err != nil || sp.Process == nil {
		t.Fatalf("ctr oci spec printed no spec with a process (%v):\n%s", err, r.stdout)
	}
	sp.Process.Terminal, sp.Process.Args, sp.Root.Path = true, []string{"/bin/hello"}, e.rootfs
	b, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spec, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r = e.tryCtr("run", "--rm", runtimeFlag, "--config", spec, "id3")
	if r.code == 0 || !strings.Contains(r.stderr, "tty") {
		t.Errorf("a task with a terminal: want a refusal naming the tty, got %s", r)
	}
	e.tryCtr("container", "delete", "id3")
	e.waitNoShims()
	if ps := e.kiln("ps", "-a"); strings.Contains(ps.stdout, "id3") {
		t.Errorf("a refused task left a VM:\n%s", ps)
	}
}

// waitNoShims fails the test unless every shim is gone within 10s.
func (e *shimEnv) waitNoShims() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pids := e.shims(); len(pids) > 0 {
		e.t.Errorf("shims %v still run after their tasks' deletion", pids)
	}
}

// TestContainerdPodNetwork: a task whose spec names a network namespace
// (a pod's, its interface set up by CNI; here a veth to a gateway
// namespace) runs in a VM that takes over the interface: the program sees
// the pod's address and reaches the gateway.
func TestContainerdPodNetwork(t *testing.T) {
	e := newShimEnv(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip not found: run scripts/setup (iproute2)")
	}
	gw, pod := fmt.Sprintf("kshim-gw-%d", os.Getpid()), fmt.Sprintf("kshim-pod-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	for _, ns := range []string{gw, pod} {
		ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	ip("-n", gw, "link", "add", "kgw0", "type", "veth", "peer", "name", "eth0", "netns", pod)
	ip("-n", gw, "addr", "add", "10.219.0.1/24", "dev", "kgw0")
	ip("-n", gw, "link", "set", "kgw0", "up")
	ip("-n", pod, "addr", "add", "10.219.0.2/24", "dev", "eth0")
	ip("-n", pod, "link", "set", "eth0", "up")
	ip("-n", pod, "link", "set", "lo", "up")
	ip("-n", pod, "route", "add", "default", "via", "10.219.0.1")

	// Nothing listens on the gateway's port 1: a refusal is its answer.
	r := e.ctr(0, "run", "--rm", runtimeFlag, "--with-ns", "network:/run/netns/"+pod, "--rootfs", e.rootfs, "pod1",
		"/bin/hello", "-ifaces", "-get", "http://10.219.0.1:1/")
	if !regexp.MustCompile(`iface eth0 up 10\.219\.0\.2/24`).MatchString(r.stdout) {
		t.Errorf("the VM does not have the pod's interface and address:\n%s", r)
	}
	if !strings.Contains(r.stdout, "connection refused") {
		t.Errorf("the VM did not reach the pod's gateway (a refusal from 10.219.0.1:1):\n%s", r)
	}
	e.waitNoShims()
	// The task's removal gave the namespace back: no TAP, no redirect.
	if out, err := exec.Command("ip", "-n", pod, "link", "show", "kiln0").CombinedOutput(); err == nil {
		t.Errorf("the VM's TAP is left in the pod's namespace:\n%s", out)
	}
	if out, _ := exec.Command("tc", "-n", pod, "qdisc", "show", "dev", "eth0").Output(); strings.Contains(string(out), "ingress") {
		t.Errorf("the redirect of the pod's eth0 is left:\n%s", out)
	}
}

// TestContainerdImage: a task of an image containerd unpacked has its
// rootfs as snapshot mounts, which the shim mounts for the VM's root and
// unmounts at delete.
func TestContainerdImage(t *testing.T) {
	e := newShimEnv(t)
	archive := filepath.Join(t.TempDir(), "hello.tar")
	writeImage(t, archive, "kiln.test/hello:1", filepath.Join(e.dir, "hello"))
	e.ctr(0, "image", "import", archive)

	r := e.ctr(6, "run", "--rm", runtimeFlag, "kiln.test/hello:1", "img1")
	if !strings.Contains(r.stdout, `args: ["from" "image"]`) {
		t.Errorf("ctr run of the image did not run its command:\n%s", r)
	}
	e.waitNoShims()
	f, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if state := filepath.Join(filepath.Dir(e.config), "cstate"); strings.Contains(string(f), state+"/") {
		t.Errorf("mounts are left under containerd's state %s after the task's deletion", state)
	}
}

// writeImage writes a docker archive of a one-layer image, tagged tag,
// holding the program at /bin/hello as its command.
func writeImage(t *testing.T, archive, tag, program string) {
	t.Helper()
	prog, err := os.ReadFile(program)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(prog))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(prog); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(emptyimage.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/bin/hello", "-exit", "6", "from", "image"}
	cf.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, ref, img); err != nil {
		t.Fatal(err)
	}
}
