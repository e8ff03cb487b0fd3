package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/vmm"
)

// TestJailedMapsEveryHostPath checks that a jailed QEMU's command line names
// no host path: each file is bound at a path under /vm, writable only where
// the VM writes.
func TestJailedMapsEveryHostPath(t *testing.T) {
	c := vmm.Config{
		ID: "abc", Dir: "/var/lib/kiln/vms/abc", Kernel: "/var/lib/kiln/kernels/default/vmlinux",
		Initrd: "/var/lib/kiln/vms/abc/initrd", Cmdline: "console=ttyS0", MemoryMiB: 128, CPUs: 1, Accel: vmm.AccelTCG,
		Sandbox: true,
		Ports: []vmm.Port{
			{Name: "kiln.stdout", File: "/var/lib/kiln/vms/abc/stdout.log"},
			{Name: "kiln.control", Socket: "/var/lib/kiln/vms/abc/agent.sock"},
		},
		Drives: []vmm.Drive{
			{ID: "root", Path: "/var/lib/kiln/images/rootfs/x.sqfs", ReadOnly: true, Serial: "kiln-root"},
			{ID: "data", Path: "/var/lib/kiln/vms/abc/disk.ext4", Serial: "kiln-data"},
		},
		Shares: []vmm.Share{{ID: "s0", Path: "/srv/site", Tag: "kiln0", ReadOnly: true}},
		Net:    &vmm.NetConfig{Mode: vmm.NetTAP, TAP: "kn-0123456789ab", MAC: "52:54:00:01:02:03"},
		Jail:   &vmm.Jail{UID: 1879048200, GID: 1879048200, Helper: "/usr/bin/kiln", Root: "/var/lib/kiln/vms/abc/jail"},
	}
	j, binds := jailed(&c)
	want := []jail.Bind{
		{Src: "/var/lib/kiln/vms/abc/console.in", Dst: "/vm/console.in", Writable: true},
		{Src: "/var/lib/kiln/vms/abc/console.out", Dst: "/vm/console.out", Writable: true},
		{Src: "/var/lib/kiln/kernels/default/vmlinux", Dst: "/vm/kernel"},
		{Src: "/var/lib/kiln/vms/abc/initrd", Dst: "/vm/initrd"},
		{Src: "/var/lib/kiln/vms/abc/stdout.log", Dst: "/vm/port-kiln.stdout", Writable: true},
		{Src: "/var/lib/kiln/images/rootfs/x.sqfs", Dst: "/vm/drive-root"},
		{Src: "/var/lib/kiln/vms/abc/disk.ext4", Dst: "/vm/drive-data", Writable: true},
		{Src: "/srv/site", Dst: "/vm/share-s0"},
		{Src: "/dev/null", Dst: "/dev/null", Writable: true, Device: true},
		{Src: "/dev/urandom", Dst: "/dev/urandom", Writable: true, Device: true},
	}
	if !slices.Equal(binds, want) {
		t.Errorf("binds:\n got %+v\nwant %+v", binds, want)
	}
	if c.Kernel != "/var/lib/kiln/kernels/default/vmlinux" || c.Drives[0].Path != "/var/lib/kiln/images/rootfs/x.sqfs" {
		t.Error("jailed changed the config it was given")
	}
	j.Net = &vmm.NetConfig{Mode: vmm.NetTAP, TAP: "kn-0123456789ab", MAC: "52:54:00:01:02:03", TAPFD: 5}
	argv := strings.Join(Argv("/usr/bin/qemu-system-x86_64", &j), " ")
	for _, host := range []string{"/var/lib/kiln", "/srv/site", "ifname="} {
		if strings.Contains(argv, host) {
			t.Errorf("jailed argv names %q:\n%s", host, argv)
		}
	}
	for _, s := range []string{"-sandbox " + Sandbox, "-kernel /vm/kernel", "-initrd /vm/initrd", "pipe,id=console,path=/vm/console ",
		"file=/vm/drive-data,", "path=/vm/share-s0,", "-netdev tap,id=net0,fd=5 "} {
		if !strings.Contains(argv, s) {
			t.Errorf("jailed argv lacks %q:\n%s", s, argv)
		}
	}

	c.Accel = vmm.AccelKVM
	_, binds = jailed(&c)
	if b := binds[len(binds)-1]; b.Dst != "/dev/kvm" || !b.Device {
		t.Errorf("a KVM VM's jail lacks /dev/kvm: %+v", binds)
	}
}

// TestRunFilesOfQEMU checks that the files a jailed QEMU gets include its
// loader, its libraries and TCG, as the loader would find them.
func TestRunFilesOfQEMU(t *testing.T) {
	bin, err := FindBinary("")
	if err != nil {
		t.Skipf("%v", err)
	}
	rf, err := findRunFiles(bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dsts []string
	for _, b := range rf.binds {
		if b.Writable || b.Device {
			t.Errorf("run file bound writable or as a device: %+v", b)
		}
		if _, err := os.Stat(b.Src); err != nil {
			t.Errorf("run file source: %v", err)
		}
		dsts = append(dsts, b.Dst)
	}
	all := strings.Join(dsts, " ")
	for _, want := range []string{bin, "ld-linux-x86-64.so.2", "/libc.so.6", "/libglib-2.0.so.0", "bios-microvm.bin"} {
		if !strings.Contains(all, want) {
			t.Errorf("run files lack %s: %s", want, all)
		}
	}
	if _, err := os.Stat(filepath.Join(moduleDir, modules[0])); err == nil && !strings.Contains(all, modules[0]) {
		t.Errorf("run files lack the TCG module: %s", all)
	}
	if rf.libPath == "" {
		t.Error("no library path")
	}
}

// TestGrant checks who gets what: the VM's own files become its uid's, a
// shared read-only file of kiln's root is opened to all, a user's file
// elsewhere is left alone and refused.
func TestGrant(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root: run the tests as root")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "vms", "abc")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := &vmm.Config{ID: "abc", Dir: dir, Jail: &vmm.Jail{UID: 1879048300, GID: 1879048301}}
	write := func(p string) string {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	own := write(filepath.Join(dir, "initrd"))
	shared := write(filepath.Join(root, "rootfs.sqfs"))
	users := write(filepath.Join(t.TempDir(), "vmlinuz"))
	if err := grant(own, c, false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(own); fi.Sys().(*syscall.Stat_t).Uid != 1879048300 || fi.Mode().Perm() != 0o600 {
		t.Errorf("the VM's own file: %v uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}
	if err := grant(shared, c, false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(shared); fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o644 {
		t.Errorf("a shared read-only file of kiln's root: %v uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}
	if err := grant(users, c, false); err == nil || !strings.Contains(err.Error(), "chmod o+r") {
		t.Errorf("grant of a user's unreadable file = %v, want a refusal with the fix", err)
	}
	if fi, _ := os.Stat(users); fi.Mode().Perm() != 0o600 {
		t.Errorf("grant changed a user's file to %v", fi.Mode())
	}
}
