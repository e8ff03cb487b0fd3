package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/jail"
	"kiln.dev/kiln/internal/network"
)

// templateEnv is a test's kiln whose daemon starts VMs from templates.
// It boots a copy of the test kernel: the kernel is part of a template's
// key, and the shared one may be replaced (a kernel build) while the
// test runs, which would make another template.
func templateEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.extraEnv = []string{"KILN_TEMPLATES=1"}
	b, err := os.ReadFile(e.kernel)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Its config goes along: it says the kernel can boot with ACPI.
	if c, err := os.ReadFile(filepath.Join(filepath.Dir(e.kernel), "config")); err == nil {
		if err := os.WriteFile(filepath.Join(dir, "config"), c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.kernel = filepath.Join(dir, filepath.Base(e.kernel))
	if err := os.WriteFile(e.kernel, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// startKinds counts how a VM's runs started: restored from a template,
// booted, and restores that failed and booted instead.
type startKinds struct{ template, cold, fallback int }

// starts reads the VM's events so far.
func (e *env) starts(name string) startKinds {
	e.t.Helper()
	r := e.kiln("events", "--since", "0", "--until", "0s", "--format", "json")
	if r.code != 0 {
		e.t.Fatalf("events:\n%s", r)
	}
	var k startKinds
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for dec.More() {
		var ev api.Event
		if err := dec.Decode(&ev); err != nil {
			e.t.Fatalf("events: %v\n%s", err, r.stdout)
		}
		if ev.Name != name {
			continue
		}
		switch ev.Action {
		case "started":
			if ev.Attrs["from"] == "template" {
				k.template++
			} else {
				k.cold++
			}
		case "template_fallback":
			k.fallback++
			e.t.Logf("VM %s: template fallback: %s", name, ev.Attrs["error"])
		}
	}
	return k
}

// templateDirs lists the root's templates.
func (e *env) templateDirs() []string {
	ds, _ := filepath.Glob(filepath.Join(e.root, "templates", "[0-9a-f]*"))
	return ds
}

func (e *env) daemonLogHas(text string) bool {
	b, _ := os.ReadFile(filepath.Join(e.root, "daemon.log"))
	return bytes.Contains(b, []byte(text))
}

func TestTemplateRunRestoresProgramArgsEnvAndExit(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	r := e.run("--name", "one", "-e", "GREETING=hi there", e.hello(), "-env", "GREETING", "-exit", "7", "a b", "c")
	if r.code != 7 || !strings.Contains(r.stdout, "hello from one ") || !strings.Contains(r.stdout, `args: ["a b" "c"]`) ||
		!strings.Contains(r.stdout, "GREETING=hi there") || !strings.Contains(r.stderr, "this line went to stderr") {
		t.Fatalf("first VM (makes the template): want exit 7, its args, env and both streams:\n%s", r)
	}
	if k := e.starts("one"); k != (startKinds{template: 1}) {
		t.Fatalf("first VM: want one start from a template, got %+v", k)
	}
	dirs := e.templateDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one template, got %v", dirs)
	}
	r = e.run("--name", "two", e.hello(), "-exit", "3", "x")
	if r.code != 3 || !strings.Contains(r.stdout, "hello from two ") || !strings.Contains(r.stdout, `args: ["x"]`) {
		t.Fatalf("second VM: want exit 3 and its own args:\n%s", r)
	}
	if k := e.starts("two"); k != (startKinds{template: 1}) {
		t.Fatalf("second VM: want one start from a template, got %+v", k)
	}
	if d := e.templateDirs(); len(d) != 1 || d[0] != dirs[0] {
		t.Fatalf("the second VM made another template: %v, was %v", d, dirs)
	}
	r = e.run("--name", "three", "--cold", e.hello(), "-exit", "2")
	if r.code != 2 || !strings.Contains(r.stdout, "hello from three ") {
		t.Fatalf("--cold VM: want exit 2:\n%s", r)
	}
	if k := e.starts("three"); k != (startKinds{cold: 1}) {
		t.Fatalf("--cold VM: want one boot, got %+v", k)
	}
	if !e.daemonLogHas("VM started from a template") {
		t.Error("the daemon log does not say a VM started from a template")
	}
}

func TestTemplateRestoredVMsDifferInRandomMACAndHostname(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	type ident struct{ uuid, mac, host string }
	idOf := func(name string) ident {
		e.runD("--name", name, e.hello(), "-sleep", "120s")
		e.awaitLog(name, "hello from", 1)
		cat := func(path string) string {
			r := e.kiln("exec", name, "/usr/local/bin/hello", "-cat", path)
			m := regexp.MustCompile(`cat ` + regexp.QuoteMeta(path) + `: (\S+)`).FindStringSubmatch(r.stdout)
			if r.code != 0 || m == nil {
				t.Fatalf("exec hello -cat %s in %s:\n%s", path, name, r)
			}
			return m[1]
		}
		id := ident{cat("/proc/sys/kernel/random/uuid"), cat("/sys/class/net/eth0/address"), cat("/proc/sys/kernel/hostname")}
		if k := e.starts(name); k != (startKinds{template: 1}) {
			t.Fatalf("VM %s: want one start from a template, got %+v", name, k)
		}
		if want := network.MAC(e.inspect(name, "{{.ID}}")); id.mac != want {
			t.Errorf("VM %s: eth0 has MAC %s, want its own %s", name, id.mac, want)
		}
		if id.host != name {
			t.Errorf("VM %s: hostname %q", name, id.host)
		}
		return id
	}
	a, b := idOf("alpha"), idOf("beta")
	if len(e.templateDirs()) != 1 {
		t.Fatalf("want both VMs from one template, got %v", e.templateDirs())
	}
	if a.uuid == b.uuid || a.mac == b.mac || a.host == b.host {
		t.Fatalf("two VMs restored from one template share an identity: %+v and %+v", a, b)
	}
	e.kiln("rm", "-f", "alpha", "beta")
}

func TestTemplateDamagedFallsBackToColdBoot(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	if r := e.run("--name", "maker", e.hello()); r.code != 0 {
		t.Fatalf("first run:\n%s", r)
	}
	dirs := e.templateDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one template, got %v", dirs)
	}
	// Corrupt: the state's header overwritten, its size kept, so only
	// QEMU's load finds it out.
	f, err := os.OpenFile(filepath.Join(dirs[0], "state"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r := e.run("--name", "corrupt", e.hello(), "-exit", "4", "still")
	if r.code != 4 || !strings.Contains(r.stdout, `args: ["still"]`) {
		t.Fatalf("VM after the template was corrupted: want it booted, exit 4:\n%s", r)
	}
	if k := e.starts("corrupt"); k != (startKinds{cold: 1, fallback: 1}) {
		t.Fatalf("VM after the template was corrupted: want a fallback and a boot, got %+v", k)
	}
	if d := e.templateDirs(); len(d) != 0 {
		t.Fatalf("the corrupt template was kept: %v", d)
	}
	if !e.daemonLogHas("booting it instead") {
		t.Error("the daemon log has no warning about the failed restore")
	}
	// The next VM makes the template again; then a truncated state.
	if r := e.run("--name", "remade", e.hello()); r.code != 0 || e.starts("remade") != (startKinds{template: 1}) {
		t.Fatalf("VM after the discard: want a new template and a restore (%+v):\n%s", e.starts("remade"), r)
	}
	dirs = e.templateDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one template again, got %v", dirs)
	}
	st, err := os.Stat(filepath.Join(dirs[0], "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dirs[0], "state"), st.Size()/2); err != nil {
		t.Fatal(err)
	}
	r = e.run("--name", "truncated", e.hello(), "-exit", "5")
	if r.code != 5 || e.starts("truncated") != (startKinds{cold: 1, fallback: 1}) {
		t.Fatalf("VM after the template was truncated: want a fallback and a boot, exit 5 (%+v):\n%s", e.starts("truncated"), r)
	}
	if d := e.templateDirs(); len(d) != 0 {
		t.Fatalf("the truncated template was kept: %v", d)
	}
}

func TestTemplateKeyChangesWithMemory(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	if r := e.run("--name", "m256", e.hello()); r.code != 0 || e.starts("m256") != (startKinds{template: 1}) {
		t.Fatalf("256m VM:\n%s", r)
	}
	first := e.templateDirs()
	if len(first) != 1 {
		t.Fatalf("want one template, got %v", first)
	}
	r := e.run("--name", "m192", "--memory", "192m", e.hello())
	if r.code != 0 || e.starts("m192") != (startKinds{template: 1}) {
		t.Fatalf("192m VM: want a start from a template (%+v):\n%s", e.starts("m192"), r)
	}
	if d := e.templateDirs(); len(d) != 2 {
		t.Fatalf("another memory size: want a second template, got %v", d)
	}
	if r := e.kiln("template", "prune"); r.code != 0 || !strings.HasPrefix(r.stdout, "Removed 2 templates\n") {
		t.Fatalf("template prune:\n%s", r)
	}
	if d := e.templateDirs(); len(d) != 0 {
		t.Fatalf("templates left after prune: %v", d)
	}
	if r := e.run("--name", "again", e.hello()); r.code != 0 || e.starts("again") != (startKinds{template: 1}) || len(e.templateDirs()) != 1 {
		t.Fatalf("VM after prune: want a new template and a restore:\n%s", r)
	}
	// The kernel changes (a rebuild): the template no longer matches, the
	// next VM makes another, and a daemon start removes the stale one.
	stale := e.templateDirs()
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(e.kernel, later, later); err != nil {
		t.Fatal(err)
	}
	if r := e.run("--name", "newkernel", e.hello()); r.code != 0 || e.starts("newkernel") != (startKinds{template: 1}) {
		t.Fatalf("VM after the kernel changed: want a start from a new template (%+v):\n%s", e.starts("newkernel"), r)
	}
	if d := e.templateDirs(); len(d) != 2 {
		t.Fatalf("after the kernel changed: want the stale template and a new one, got %v", d)
	}
	e.stopDaemon()
	ok(t, "ps (a new daemon)", e.kiln("ps", "-a"))
	if d := e.templateDirs(); len(d) != 1 || d[0] == stale[0] {
		t.Fatalf("a daemon start left the stale template %s: %v", stale[0], d)
	}
}

func TestTemplatePublishedPortAnswers(t *testing.T) {
	t.Parallel()
	e := newNetEnvWith(t, []string{"KILN_TEMPLATES=1"})
	e.runD("--name", "web", "-p", "127.0.0.1:18090:80", httpd(t))
	e.awaitLog("web", "serving HTTP", 1)
	body, err := e.helper("get", "http://127.0.0.1:18090/")
	if err != nil || body != "hello from kiln VM web\n" {
		t.Fatalf("GET through the published port of a restored VM = %q, %v", body, err)
	}
	if k := e.starts("web"); k != (startKinds{template: 1}) {
		t.Fatalf("want one start from a template, got %+v", k)
	}
	e.kiln("rm", "-f", "web")
}

func TestTemplateCheckpointOfARestoredVM(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	e.runD("--name", "web", "--memory", "128m", "--restart", "always", counter(t))
	e.awaitLog("web", "count 5", 1)
	if k := e.starts("web"); k != (startKinds{template: 1}) {
		t.Fatalf("want one start from a template, got %+v", k)
	}
	if r := e.kiln("checkpoint", "create", "web", "cp1"); r.code != 0 {
		t.Fatalf("checkpoint create of a VM restored from a template:\n%s", r)
	}
	before := e.counts("web")
	last := before[len(before)-1]
	if r := e.kiln("start", "--checkpoint", "cp1", "web"); r.code != 0 {
		t.Fatalf("start --checkpoint:\n%s", r)
	}
	e.awaitLog("web", fmt.Sprintf("count %d", last+3), 1)
	after := e.counts("web")
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Fatalf("the count did not go on where it was: ... %v (saved at %d)", after[max(0, i-3):min(len(after), i+3)], last)
		}
	}
	e.kiln("rm", "-f", "web")
}

// TestTemplateImageVMsOnUserAndBridgeNetworks restores image VMs (a
// busybox userland) from one template: each runs its own command, env,
// user and volume, sees its own disks at their real size (the template
// booted with 1 MiB stand-ins), a published port answers, and a VM on a
// bridge network (a TAP where the template had no backend) gets its
// address on the bridge.
func TestTemplateImageVMsOnUserAndBridgeNetworks(t *testing.T) {
	t.Parallel()
	e := newNetEnvWith(t, []string{"KILN_TEMPLATES=1"})
	img := testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/busybox", "sh", "-c"}
	}, userlandLayer(t))
	e.loadImage("kiln-test/tmpl:1", img)

	web := `echo "$GREETING" > /data/greeting; mkdir -p /www; echo "served by $(hostname)" > /www/index.html
echo serving; exec busybox httpd -f -p 80 -h /www`
	e.runD("--name", "web", "--pull", "never", "-e", "GREETING=hi from web", "-v", "data:/data",
		"-p", "127.0.0.1:18092:80", "kiln-test/tmpl:1", web)
	e.awaitLog("web", "serving", 1)
	body, err := e.helper("get", "http://127.0.0.1:18092/")
	if err != nil || body != "served by web\n" {
		t.Fatalf("GET through the published port of a restored image VM = %q, %v", body, err)
	}
	if k := e.starts("web"); k != (startKinds{template: 1}) {
		t.Fatalf("web: want one start from a template, got %+v", k)
	}
	okr(t, "stop web", e.kiln("stop", "web")) // a volume is one running VM's

	// 8 MiB into the VM's own writable disk, which the template knew as a
	// 1 MiB stand-in.
	script := `cat /data/greeting; echo "uid=$(id -u) gid=$(id -g)"
dd if=/dev/zero of=/home/app/big bs=1M count=8 2>/dev/null && echo wrote-8MiB
exit 5`
	r := e.run("--rm", "--pull", "never", "--name", "second", "-u", "app", "-v", "data:/data", "kiln-test/tmpl:1", script)
	if r.code != 5 || !strings.Contains(r.stdout, "hi from web\n") || !strings.Contains(r.stdout, "uid=1000 gid=1001\n") ||
		!strings.Contains(r.stdout, "wrote-8MiB") {
		t.Fatalf("second image VM: want exit 5, web's volume, uid 1000 and an 8 MiB write:\n%s", r)
	}

	okr(t, "network create", e.kiln("network", "create", "tn", "--subnet", "10.94.0.0/24"))
	r = e.run("--name", "bridged", "--pull", "never", "--network", "tn", "-v", "data:/data", "kiln-test/tmpl:1",
		"busybox ip -4 addr show eth0; cat /sys/class/net/eth0/address")
	if r.code != 0 || !strings.Contains(r.stdout, "inet 10.94.0.") {
		t.Fatalf("VM on a bridge network: want an address in 10.94.0.0/24:\n%s", r)
	}
	if mac := e.inspect("bridged", "{{.NetworkSettings.MACAddress}}"); !strings.Contains(r.stdout, mac+"\n") {
		t.Errorf("the bridged VM's eth0 does not have its MAC %s:\n%s", mac, r)
	}
	for _, name := range []string{"second", "bridged"} {
		if k := e.starts(name); k != (startKinds{template: 1}) {
			t.Errorf("%s: want one start from a template, got %+v", name, k)
		}
	}
	// One key: the same drives (image, disk, volume) and a NIC, whatever
	// its backend.
	if d := e.templateDirs(); len(d) != 1 {
		t.Errorf("want one template for the three VMs, got %v", d)
	}
	e.kiln("rm", "-f", "web", "bridged")
}

// TestTemplateBootIsJailed watches the QEMU that boots a template (the
// first start of its key) from the host: like every VM's, it runs as a
// uid of kiln's range, without capabilities, with no_new_privs and a
// seccomp filter, in its own mount namespace, with a root that holds only
// what QEMU needs.
func TestTemplateBootIsJailed(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	e := templateEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "run", "--kernel", e.kernel, "--name", "first", e.hello())
	done := make(chan error, 1)
	go func() { done <- cmd.Run() }()
	checked := false
	for !checked {
		select {
		case err := <-done:
			t.Fatalf("the run ended (%v) before the template's QEMU was seen", err)
		case <-time.After(10 * time.Millisecond):
		}
		pid := templateQEMU()
		if pid == 0 {
			continue
		}
		// QEMU installs its seccomp filter once it has read its options:
		// wait for it (a few ms), or for the process to end.
		st, err := readProcStatus(pid)
		for end := time.Now().Add(5 * time.Second); err == nil && st["Seccomp"] != "2" && time.Now().Before(end); {
			time.Sleep(2 * time.Millisecond)
			st, err = readProcStatus(pid)
		}
		root, rerr := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
		ourNS, _ := os.Readlink("/proc/self/ns/mnt")
		theirNS, nerr := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil || rerr != nil || nerr != nil {
			continue // it ended meanwhile, or is still becoming QEMU
		}
		checked = true
		uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
		if uid < jail.DefaultUIDMin || uid > jail.DefaultUIDMax {
			t.Errorf("the template's QEMU runs as uid %d, want one of kiln's range %d-%d", uid, jail.DefaultUIDMin, jail.DefaultUIDMax)
		}
		for k, want := range map[string]string{"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"} {
			if st[k] != want {
				t.Errorf("the template's QEMU: %s is %q, want %q", k, st[k], want)
			}
		}
		if ourNS == theirNS {
			t.Errorf("the template's QEMU shares the host's mount namespace (%s)", ourNS)
		}
		var top []string
		for _, d := range root {
			top = append(top, d.Name())
		}
		if got := strings.Join(top, " "); got != "dev lib lib64 proc usr vm" {
			t.Errorf("the template's QEMU's root holds %q, want only dev lib lib64 proc usr vm", got)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("kiln run: %v", err)
	}
	if k := e.starts("first"); k != (startKinds{template: 1}) {
		t.Errorf("want one start from a template, got %+v", k)
	}
}

// templateQEMU returns the pid of a QEMU booting a template, or 0.
func templateQEMU() int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("\x00-name\x00kiln-template-")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		return pid
	}
	return 0
}

// TestTemplateWithACPI: a bare VM with six volumes has more devices than
// microvm wires without ACPI, so it and its template boot with ACPI; two
// such VMs start from one template and find all their volumes.
func TestTemplateWithACPI(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	needACPIKernel(t, e.kernel)
	var vols []string
	for i := range 6 {
		vols = append(vols, "-v", fmt.Sprintf("w%d:/w%d", i, i))
	}
	for _, name := range []string{"a1", "a2"} {
		r := e.run(append(append([]string{"--rm", "--name", name}, vols...), e.hello(), "-cat", "/proc/mounts")...)
		if r.code != 0 || strings.Count(r.stdout, " /w") != 6 {
			t.Fatalf("VM %s: want its six volumes mounted:\n%s", name, r)
		}
		if k := e.starts(name); k != (startKinds{template: 1}) {
			t.Fatalf("VM %s: want one start from a template, got %+v", name, k)
		}
	}
	dirs := e.templateDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one template, got %v", dirs)
	}
	if b, _ := os.ReadFile(filepath.Join(dirs[0], "template.json")); !bytes.Contains(b, []byte(`"ACPI": true`)) {
		t.Errorf("the template was not booted with ACPI:\n%s", b)
	}
}

// TestTemplateClockIsTheHosts: a template's guest clock stopped when it
// was saved; a VM restored from it 8 s later reads the host's time, not
// the template's.
func TestTemplateClockIsTheHosts(t *testing.T) {
	t.Parallel()
	e := templateEnv(t)
	prog := counter(t)
	if r := e.run("--rm", prog, "-now"); r.code != 0 || e.templateDirs() == nil {
		t.Fatalf("first VM (makes the template):\n%s", r)
	}
	time.Sleep(8 * time.Second) // a clock left as saved would lag this much
	r := e.run("--rm", "--name", "later", prog, "-now")
	host := time.Now().Unix()
	guest, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
	if r.code != 0 || err != nil {
		t.Fatalf("VM restored from the 8 s old template:\n%s", r)
	}
	if k := e.starts("later"); k != (startKinds{template: 1}) {
		t.Fatalf("want a start from the template, got %+v", k)
	}
	// The program runs within a second or two of the restore; kiln run
	// returns after it.
	if d := host - guest; d < 0 || d > 3 {
		t.Fatalf("the restored guest's clock is %d s behind the host's, want 0-3", d)
	}
}
