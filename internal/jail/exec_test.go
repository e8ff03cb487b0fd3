package jail

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary be the jail helper, as kiln's own binary is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ExecArg {
		err := Exec(os.Args[2:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	os.Exit(m.Run())
}

// TestJailConfinesAProcess runs busybox in a jail and checks from the host
// what the kernel says of it: its uid, no capabilities, no_new_privs, its
// own namespaces, a root holding only what was bound; and from inside that
// it cannot write its root or reach the host's files.
func TestJailConfinesAProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the jail needs root: run the tests as root")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not found: apt-get install busybox-static (scripts/setup does)")
	}
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o777); err != nil {
		t.Fatal(err)
	}
	// A host file any user may read: the jail must not show it.
	const secret = "/etc/passwd"
	// busybox runs its applets by name: a /bin of links to it.
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "id", "ls", "touch", "cat", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	// A host directory only its owner (1234) may enter: the jailed uid
	// reaches it through an id-mapped mount, as that owner.
	shared := filepath.Join(dir, "shared")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(shared, 1234, 1235); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 1879048190, 1879048191
	mnt, err := IDMapped(self, shared, uid, gid, true)
	if err != nil {
		t.Fatal(err)
	}
	defer mnt.Close()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	script := `id -u > /out/uid; id -g > /out/gid
touch /newfile 2>/out/touch-root || true
ls / > /out/ls
cat ` + secret + ` > /out/secret 2>&1 || true
echo made > /shared/made; ls -ln /shared > /out/shared-ls
ls /proc > /out/proc
echo done > /out/done
exec sleep 30`
	s := Spec{
		Hostname: "kiln-test",
		Root:     root,
		UID:      uid,
		GID:      gid,
		Binds: []Bind{
			{Src: bin, Dst: "/bin"},
			{Src: out, Dst: "/out", Writable: true},
			{Src: "/dev/null", Dst: "/dev/null", Writable: true, Device: true},
			{Src: shared, Dst: "/shared", Writable: true, MountFD: 3},
		},
		Proc: true,
		Argv: []string{"/bin/busybox", "sh", "-c", script},
		Env:  []string{"PATH=/bin"},
	}
	cmd, err := Command(self, s)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.ExtraFiles = []*os.File{mnt}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(out, "done")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the jailed shell did not finish; its stderr: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := Inspect(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != s.UID || st.GID != s.GID {
		t.Errorf("jailed process runs as %d:%d, want %d:%d", st.UID, st.GID, s.UID, s.GID)
	}
	if st.CapEff != "0000000000000000" || !st.NoNewPrivs {
		t.Errorf("jailed process has CapEff %s, NoNewPrivs %v", st.CapEff, st.NoNewPrivs)
	}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts"} {
		if !slices.Contains(st.Namespaces, ns) {
			t.Errorf("jailed process shares the host's %s namespace (own: %v)", ns, st.Namespaces)
		}
	}
	if got, want := strings.Join(st.Root, " "), "/bin /dev /out /proc /shared"; got != want {
		t.Errorf("the jail's root holds %q, want %q", got, want)
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(out, name))
		return strings.TrimSpace(string(b))
	}
	if read("uid") != fmt.Sprint(s.UID) || read("gid") != fmt.Sprint(s.GID) {
		t.Errorf("inside, id says %s:%s", read("uid"), read("gid"))
	}
	if !strings.Contains(read("touch-root"), "Read-only") {
		t.Errorf("writing the jail's root: %q, want a read-only file system", read("touch-root"))
	}
	if strings.Contains(read("secret"), "root:") {
		t.Errorf("the jailed process read a host file outside its jail: %q", read("secret"))
	}
	// Only the jail's own processes (the shell, pid 1, and the ls it ran):
	// no /proc/sys, kcore, sysrq-trigger, no host process.
	for _, e := range strings.Fields(read("proc")) {
		if _, err := strconv.Atoi(e); err != nil && e != "self" && e != "thread-self" {
			t.Errorf("the jail's /proc shows %q", e)
		}
		if n, _ := strconv.Atoi(e); n > 100 {
			t.Errorf("the jail's /proc shows pid %d: not the jail's own pid namespace", n)
		}
	}
	var made syscall.Stat_t
	if err := syscall.Stat(filepath.Join(shared, "made"), &made); err != nil {
		t.Errorf("the jailed process could not write the id-mapped directory: %v (ls: %s)", err, read("shared-ls"))
	} else if made.Uid != 1234 || made.Gid != 1235 {
		t.Errorf("a file the jailed uid made is owned by %d:%d on the host, want the directory's owner 1234:1235", made.Uid, made.Gid)
	}
	if !strings.Contains(read("shared-ls"), fmt.Sprintf("%d %d", uid, gid)) {
		t.Errorf("inside, the directory's files are not the jailed uid's: %q", read("shared-ls"))
	}
	if _, err := os.Stat(filepath.Join(root, "bin")); err == nil {
		t.Error("the jail's mounts show on the host")
	}
}
