package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// volumeList lists the root's volumes by name.
func (e *env) volumeList() []string {
	e.t.Helper()
	r := ok(e.t, "volume ls -q", e.kiln("volume", "ls", "-q"))
	return strings.Fields(r.stdout)
}

// refused checks that r is kiln's own failure (exit 125) with a message
// containing each of want.
func refused(t *testing.T, what string, r result, want ...string) {
	t.Helper()
	if r.code != exitKilnError {
		t.Errorf("%s: exit %d, want %d:\n%s", what, r.code, exitKilnError, r)
		return
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("%s: stderr %q does not say %q", what, r.stderr, w)
		}
	}
}

// TestVolumeKeepsDataAcrossRmAndGracefulStop: a program that traps SIGTERM
// writes a marker to a volume when stopped; the volume outlives the VM and
// a new VM sees the marker. Meanwhile a second VM cannot take the volume,
// the volume cannot be removed, and a baked directory is read-only.
func TestVolumeKeepsDataAcrossRmAndGracefulStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bakeDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(bakeDir, "app.conf"), []byte("baked-setting=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.runD("--name", "a", "-v", "data:/data", "--mount", "type=bake,src="+bakeDir+",dst=/etc/app",
		e.hello(), "-sleep", "10m", "-marker", "/data/marker", "-cat", "/etc/app/app.conf", "-write", "/etc/app/new")
	e.awaitLog("a", "sleeping", 1)
	logs := ok(t, "logs a", e.kiln("logs", "a")).stdout
	if !strings.Contains(logs, "cat /etc/app/app.conf: baked-setting=1") {
		t.Errorf("the baked file is not in the guest:\n%s", logs)
	}
	if !strings.Contains(logs, "write: open /etc/app/new: read-only file system") {
		t.Errorf("a write to the baked directory did not fail as read-only:\n%s", logs)
	}

	// A second running VM on the volume: a conflict naming both, and
	// nothing left of the second VM.
	refused(t, "second VM on the volume", e.kiln("run", "-d", "--kernel", e.kernel, "--name", "b", "-v", "data:/data", e.hello()),
		"volume data is in use by running VM a")
	if ps := ok(t, "ps -a", e.kiln("ps", "-a", "-q")).stdout; len(strings.Fields(ps)) != 1 {
		t.Errorf("after the refused start, VMs: %q, want only a", ps)
	}
	if dirs := e.vmDirs(); len(dirs) != 1 {
		t.Errorf("VM directories after the refused start: %v", dirs)
	}
	refused(t, "volume rm in use", e.kiln("volume", "rm", "data"), "volume data is in use by VM a")
	ok(t, "volume create spare", e.kiln("volume", "create", "--size", "64m", "spare"))
	if r := ok(t, "volume prune", e.kiln("volume", "prune", "-f")); !strings.HasPrefix(r.stdout, "spare\nTotal reclaimed space: ") {
		t.Errorf("volume prune: %q, want spare removed", r.stdout)
	}

	// A daemon restarted while a is running still knows a holds the volume.
	e.stopDaemon()
	refused(t, "second VM on the volume after a daemon restart", e.kiln("run", "-d", "--kernel", e.kernel, "--name", "c", "-v", "data:/data", e.hello()),
		"volume data is in use by running VM a")

	var v []struct {
		Name       string   `json:"name"`
		SizeMiB    int      `json:"sizeMiB"`
		UsedBytes  int64    `json:"usedBytes"`
		Path       string   `json:"path"`
		UsedBy     []string `json:"usedBy"`
		AttachedTo string   `json:"attachedTo"`
	}
	r := ok(t, "volume inspect", e.kiln("volume", "inspect", "data"))
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || len(v) != 1 {
		t.Fatalf("volume inspect: %v\n%s", err, r.stdout)
	}
	if v[0].SizeMiB != 10240 || v[0].AttachedTo != "a" || len(v[0].UsedBy) != 1 || v[0].UsedBy[0] != "a" ||
		v[0].UsedBytes <= 0 || v[0].UsedBytes > 64<<20 || !strings.HasPrefix(v[0].Path, e.root+"/volumes/data/") {
		t.Errorf("volume inspect: %+v", v[0])
	}

	ok(t, "stop a", e.kiln("stop", "a"))
	logs = ok(t, "logs a", e.kiln("logs", "a")).stdout
	if !strings.Contains(logs, "marker written to /data/marker") {
		t.Errorf("the program did not write its marker on stop:\n%s", logs)
	}
	ok(t, "rm a", e.kiln("rm", "a"))
	if got := e.volumeList(); len(got) != 1 || got[0] != "data" {
		t.Fatalf("volumes after rm of the VM: %v, want [data]", got)
	}

	r = ok(t, "run with the volume again", e.run("--rm", "-v", "data:/data", e.hello(), "-cat", "/data/marker"))
	if !strings.Contains(r.stdout, "cat /data/marker: stopped gracefully by terminated") {
		t.Errorf("the new VM does not see the marker:\n%s", r)
	}
	ok(t, "volume rm", e.kiln("volume", "rm", "data"))
	if got := e.volumeList(); len(got) != 0 {
		t.Errorf("volumes after volume rm: %v", got)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "volumes")); len(ents) != 0 {
		t.Errorf("left in the volume directory: %v", ents)
	}
}

// TestVolumeBadInput: each bad mount is refused with exit 125 and a message
// naming it, and leaves no VM and no volume behind.
func TestVolumeBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	// More than microvm's 24 transports with ACPI hold.
	var many []string
	for i := range 24 {
		many = append(many, "-v", fmt.Sprintf("v%d:/m%d", i, i))
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"relative host path", []string{"-v", "data/x:/x"}, []string{`"data/x" is relative`}},
		{"dot path", []string{"-v", "./x:/x"}, []string{`"./x" is relative`}},
		{"target /", []string{"-v", "v:/"}, []string{`target "/"`}},
		{"target /proc", []string{"-v", "v:/proc"}, []string{`target "/proc"`}},
		{"relative target", []string{"-v", "v:data"}, []string{`target "data"`, "absolute"}},
		{"two mounts on one target", []string{"-v", "v:/data", "--mount", "type=volume,src=w,dst=/data"}, []string{"two mounts on /data"}},
		{"volume name with slash", []string{"--mount", "type=volume,src=a/b,dst=/x"}, []string{`invalid volume name "a/b"`}},
		{"unknown mount type", []string{"--mount", "type=tmpfs,dst=/x"}, []string{`unknown type "tmpfs"`}},
		{"unknown mount key", []string{"--mount", "type=bind,src=/tmp,dst=/x,bind-propagation=shared"}, []string{`unknown key "bind-propagation"`}},
		{"host dir is a file", []string{"-v", "v:/v", "-v", file + ":/x"}, []string{file, "is not a directory"}},
		{"host dir missing", []string{"-v", missing + ":/x"}, []string{missing, "does not exist"}},
		{"too many mounts", many, []string{"too many mounts"}},
	}
	for _, c := range cases {
		args := append([]string{"run", "--kernel", e.kernel}, c.args...)
		refused(t, c.name, e.kiln(append(args, e.hello())...), c.want...)
	}
	refused(t, "volume create a/b", e.kiln("volume", "create", "a/b"), `invalid volume name "a/b"`)
	refused(t, "volume create --size 1k", e.kiln("volume", "create", "--size", "1k", "v"), `invalid volume size "1k"`)
	refused(t, "volume rm missing", e.kiln("volume", "rm", "nope"), "no such volume: nope")
	ok(t, "volume rm -f missing", e.kiln("volume", "rm", "-f", "nope"))
	if got := e.volumeList(); len(got) != 0 {
		t.Errorf("volumes made by refused runs: %v", got)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "volumes")); len(ents) != 0 {
		t.Errorf("left in the volume directory: %v", ents)
	}
	if dirs := e.vmDirs(); len(dirs) != 0 {
		t.Errorf("VM directories left by refused runs: %v", dirs)
	}
	if ps := ok(t, "ps -a", e.kiln("ps", "-a", "-q")).stdout; ps != "" {
		t.Errorf("VMs left by refused runs: %q", ps)
	}
}

// loadDebianWithApp loads the Debian fixture as an image with a third
// layer holding /srv/app, owned by 1000:1000, for volume copy-up.
func (e *env) loadDebianWithApp() string {
	t := e.t
	t.Helper()
	if _, err := os.Stat(filepath.Join(debianRootfs, ".complete")); err != nil {
		t.Skipf("no Debian userland at %s: run scripts/fetch-test-rootfs (make test does)", debianRootfs)
	}
	layers := dirLayers(t, debianRootfs, func(top string) bool { return top == "usr" })
	app := layerTar(t,
		tarEntry{name: "srv/app/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		tarEntry{name: "srv/app/seed.txt", body: []byte("seeded by the image\n"), mode: 0o640, uid: 1000, gid: 1000},
		symlink("srv/app/link", "seed.txt"),
	)
	img := testImage(t, func(c *v1.Config) {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		c.Cmd = []string{"/bin/sh"}
	}, layers[0], layers[1], app)
	const ref = "kiln-test/debian-app:bookworm"
	e.loadImage(ref, img)
	return ref
}

// TestVolumeImageCopyUpFullVolumeAndHostDirs, in one Debian VM: a new
// volume takes the image's content at its target with owners and modes; a
// full volume gives the program ENOSPC and nothing else breaks; a host
// directory is shared read-write (the host sees the guest's write) and
// read-only (the guest's write fails). A second VM sees the volume as the
// first left it, not copied again.
func TestVolumeImageCopyUpFullVolumeAndHostDirs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ref := e.loadDebianWithApp()
	rw, ro := t.TempDir(), t.TempDir()
	for _, d := range []string{rw, ro} {
		if err := os.WriteFile(filepath.Join(d, "in.txt"), []byte("from the host "+filepath.Base(d)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ok(t, "volume create --size 16m", e.kiln("volume", "create", "--size", "16m", "small"))
	script := `exec 2>&1
stat -c 'owner %u:%g mode %a %n' /srv/app /srv/app/seed.txt
cat /srv/app/seed.txt; readlink /srv/app/link
rm /srv/app/seed.txt; echo later > /srv/app/added
dd if=/dev/zero of=/small/fill bs=1M count=64 conv=fsync
echo dd-exit=$?
echo ok > /srv/app/after-full && echo other-disk-writable
cat /host/rw/in.txt; echo from-guest > /host/rw/out.txt && echo rw-write-ok
cat /host/ro/in.txt; echo x > /host/ro/new || echo ro-write-failed
grep -E ' /(srv/app|small|host/rw|host/ro) ' /proc/mounts | cut -d' ' -f2-4`
	r := e.run("--rm", "--pull", "never", "--network", "none", "-v", "appdata:/srv/app", "-v", "small:/small",
		"-v", rw+":/host/rw", "-v", ro+":/host/ro:ro", ref, "/bin/sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("run: %s", r)
	}
	for _, want := range []string{
		"owner 1000:1000 mode 750 /srv/app\n",
		"owner 1000:1000 mode 640 /srv/app/seed.txt\n",
		"seeded by the image\nseed.txt\n",
		"No space left on device",
		"dd-exit=1\n",
		"other-disk-writable\n",
		"from the host " + filepath.Base(rw) + "\nrw-write-ok\n",
		"from the host " + filepath.Base(ro) + "\n",
		"Read-only file system\nro-write-failed\n",
		"/srv/app ext4 rw,",
		"/small ext4 rw,",
		"/host/rw 9p rw,",
		"/host/ro 9p ro,",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("guest output lacks %q:\n%s", want, r.stdout)
		}
	}
	if b, err := os.ReadFile(filepath.Join(rw, "out.txt")); err != nil || string(b) != "from-guest\n" {
		t.Errorf("the guest's write to the shared directory: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
		t.Errorf("the guest wrote into the read-only share")
	}

	r = ok(t, "second run", e.run("--rm", "--pull", "never", "--network", "none", "-v", "appdata:/srv/app:ro", ref,
		"/bin/sh", "-c", "exec 2>&1; ls /srv/app; cat /srv/app/added; touch /srv/app/x || echo ro-volume"))
	if want := "added\nafter-full\nlink\nlater\n"; !strings.HasPrefix(r.stdout, want) || !strings.Contains(r.stdout, "Read-only file system\nro-volume\n") {
		t.Errorf("second VM sees:\n%s\nwant it to start with %q (the first VM's changes, no new copy) and a read-only volume", r.stdout, want)
	}
}

// TestAnonymousVolumes: -v /path gives a VM a volume of its own, kept by a
// plain rm (as docker keeps it), removed by rm -v and by --rm.
func TestAnonymousVolumes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "a", "-v", "/data", e.hello(), "-write", "/data/f", "-sleep", "10m")
	e.awaitLog("a", "sleeping", 1)
	if logs := ok(t, "logs a", e.kiln("logs", "a")).stdout; !strings.Contains(logs, "write /data/f: ok") {
		t.Errorf("the program could not write to its anonymous volume:\n%s", logs)
	}
	vols := e.volumeList()
	if len(vols) != 1 || len(vols[0]) != 32 {
		t.Fatalf("volumes after run -v /data: %q, want one with a 32-hex name", vols)
	}
	anon := vols[0]
	if got := strings.TrimSpace(ok(t, "volume inspect", e.kiln("volume", "inspect", "-f", "{{.Anonymous}} {{.AttachedTo}}", anon)).stdout); got != "true a" {
		t.Errorf("volume inspect: %q, want \"true a\"", got)
	}
	// The name is in the VM's spec: a restart attaches the same volume,
	// with the file still there.
	ok(t, "restart a", e.kiln("restart", "a"))
	e.awaitLog("a", "sleeping", 2)
	if vols := e.volumeList(); len(vols) != 1 || vols[0] != anon {
		t.Errorf("volumes after a restart: %q, want only %s", vols, anon)
	}

	ok(t, "rm -f a", e.kiln("rm", "-f", "a"))
	if vols := e.volumeList(); len(vols) != 1 || vols[0] != anon {
		t.Errorf("after rm without -v the volumes are %q, want %s kept", vols, anon)
	}

	e.runD("--name", "b", "--mount", "type=volume,dst=/data", e.hello(), "-sleep", "10m")
	e.awaitLog("b", "sleeping", 1)
	if vols := e.volumeList(); len(vols) != 2 {
		t.Fatalf("volumes with b running: %q, want two", vols)
	}
	ok(t, "rm -f -v b", e.kiln("rm", "-f", "-v", "b"))
	if vols := e.volumeList(); len(vols) != 1 || vols[0] != anon {
		t.Errorf("after rm -v b the volumes are %q, want only a's %s", vols, anon)
	}

	r := e.run("--rm", "-v", "/scratch", e.hello(), "-write", "/scratch/f")
	if r.code != 0 || !strings.Contains(r.stdout, "write /scratch/f: ok") {
		t.Fatalf("run --rm -v /scratch: %s", r)
	}
	if vols := e.volumeList(); len(vols) != 1 || vols[0] != anon {
		t.Errorf("after run --rm the volumes are %q, want only a's %s", vols, anon)
	}
}

// TestVolumeSixteenMountsOnANetworkedImageVM: 8 volumes, 4 host
// directories and 4 baked directories on an image VM with a NIC: more
// virtio devices than microvm wires without ACPI, so the VM boots with
// ACPI and finds them all, each at its target.
func TestVolumeSixteenMountsOnANetworkedImageVM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	needACPIKernel(t, e.kernel)
	e.loadImage("kiln-test/mounts:1", testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/busybox", "sh", "-c"}
	}, userlandLayer(t)))
	args := []string{"--name", "many", "--pull", "never"}
	var script strings.Builder
	script.WriteString("exec 2>&1\n")
	var hostDirs []string
	for i := range 8 {
		args = append(args, "-v", fmt.Sprintf("vol%d:/vol/%d", i, i))
		fmt.Fprintf(&script, "echo %d > /vol/%d/f && echo vol-%d-ok\n", i, i, i)
	}
	for i := range 4 {
		for _, kind := range []string{"host", "baked"} {
			d := t.TempDir()
			if err := os.WriteFile(filepath.Join(d, "in.txt"), []byte(fmt.Sprintf("%s-%d-content\n", kind, i)), 0o644); err != nil {
				t.Fatal(err)
			}
			if kind == "host" {
				hostDirs = append(hostDirs, d)
				args = append(args, "-v", fmt.Sprintf("%s:/host/%d", d, i))
				fmt.Fprintf(&script, "cat /host/%d/in.txt; echo from-guest-%d > /host/%d/out.txt\n", i, i, i)
			} else {
				args = append(args, "--mount", fmt.Sprintf("type=bake,src=%s,dst=/baked/%d", d, i))
				fmt.Fprintf(&script, "cat /baked/%d/in.txt\n", i)
			}
		}
	}
	script.WriteString("cat /sys/block/vd*/queue/read_ahead_kb | sort -u; cat /sys/class/net/eth0/carrier; grep -cE ' /(vol|host|baked)/' /proc/mounts\n")
	r := e.run(append(append(args, "kiln-test/mounts:1"), script.String())...)
	if r.code != 0 {
		t.Fatalf("a VM with 16 mounts and a NIC:\n%s", r)
	}
	for i := range 8 {
		if !strings.Contains(r.stdout, fmt.Sprintf("vol-%d-ok\n", i)) {
			t.Errorf("volume %d was not writable:\n%s", i, r.stdout)
		}
	}
	for i := range 4 {
		for _, kind := range []string{"host", "baked"} {
			if !strings.Contains(r.stdout, fmt.Sprintf("%s-%d-content\n", kind, i)) {
				t.Errorf("the %s directory %d is not at its target:\n%s", kind, i, r.stdout)
			}
		}
		if b, err := os.ReadFile(filepath.Join(hostDirs[i], "out.txt")); err != nil || string(b) != fmt.Sprintf("from-guest-%d\n", i) {
			t.Errorf("host directory %d: the guest's write = %q, %v", i, b, err)
		}
	}
	if !strings.Contains(r.stdout, "\n4096\n1\n16\n") {
		t.Errorf("want every disk's read-ahead 4096 KiB, eth0's carrier on and 16 mounts in /proc/mounts:\n%s", r.stdout)
	}
	dirs := e.vmDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one VM directory, got %v", dirs)
	}
	if b, _ := os.ReadFile(filepath.Join(e.root, "vms", dirs[0], "vm.json")); !bytes.Contains(b, []byte(`"ACPI": true`)) {
		t.Errorf("the VM was not made to boot with ACPI:\n%s", b)
	}
}

// needACPIKernel skips a test whose VM needs more devices than fit
// without ACPI when the test kernel cannot boot with it (its config,
// beside it, says so).
func needACPIKernel(t *testing.T, kernel string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), "config"))
	if err != nil || !bytes.Contains(b, []byte("\nCONFIG_ACPI=y\n")) {
		t.Skipf("the test kernel %s has no config with CONFIG_ACPI=y beside it (%v): run scripts/setup, whose kernel has ACPI", kernel, err)
	}
}
