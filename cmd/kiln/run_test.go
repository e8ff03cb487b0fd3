package main

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestRunPrintsOutputAndExitsWithProgramStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("--rm", e.hello(), "-exit", "3", "a", "b c")
	if r.code != 3 {
		t.Fatalf("want exit 3:\n%s", r)
	}
	if !strings.Contains(r.stdout, `args: ["a" "b c"]`) {
		t.Errorf("stdout lacks the program's arguments:\n%s", r)
	}
	if !strings.Contains(r.stderr, "this line went to stderr") || strings.Contains(r.stdout, "this line went to stderr") {
		t.Errorf("the program's stderr is not kept apart from its stdout:\n%s", r)
	}
	if got := strings.Count(r.stderr, "warning:"); got > 1 {
		t.Errorf("want at most one warning, got %d:\n%s", got, r.stderr)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("--rm left VM directories: %v", d)
	}
}

func TestRunKeepsVMStateWithoutRm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("--name", "kept", e.hello())
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	dirs := e.vmDirs()
	if len(dirs) != 1 {
		t.Fatalf("want one VM directory, got %v", dirs)
	}
	out, err := os.ReadFile(filepath.Join(e.root, "vms", dirs[0], "vm.log"))
	if err != nil || !strings.Contains(string(out), "hello from kept") {
		t.Errorf("vm.log = %q, %v; want the program's output", out, err)
	}
}

func TestRunExitCodeOfSignal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, c := range []struct {
		sig  string
		want int
	}{{"9", 137}, {"15", 143}} {
		r := e.run("--rm", e.hello(), "-signal", c.sig)
		if r.code != c.want {
			t.Errorf("killed by signal %s: want exit %d:\n%s", c.sig, c.want, r)
		}
	}
}

func TestRunAppliesEnvWorkdirUserAndName(t *testing.T) {
	// Serial: t.Setenv changes the test process's environment.
	e := newEnv(t)
	envFile := filepath.Join(t.TempDir(), "app.env")
	if err := os.WriteFile(envFile, []byte("# comment\nFROMFILE=yes\n\nFOO=overridden-later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KILN_TEST_PASSTHROUGH", "from-host")
	r := e.run("--rm", "--name", "web", "--memory", "128m", "--cpus", "2",
		"--env-file", envFile, "-e", "FOO=bar", "-e", "KILN_TEST_PASSTHROUGH",
		"-w", "/srv/app", "-u", "1000:1001", e.hello(), "-env", "FOO")
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	for _, want := range []string{"hello from web", "FOO=bar", "uid=1000 gid=1001 cwd=/srv/app cpus=2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r)
		}
	}
	r = e.run("--rm", "--env-file", envFile, "-e", "KILN_TEST_PASSTHROUGH", e.hello(), "-env", "KILN_TEST_PASSTHROUGH")
	if !strings.Contains(r.stdout, "KILN_TEST_PASSTHROUGH=from-host") {
		t.Errorf("-e KEY did not pass the host's value:\n%s", r)
	}
	r = e.run("--rm", "--env-file", envFile, e.hello(), "-env", "FROMFILE")
	if !strings.Contains(r.stdout, "FROMFILE=yes") {
		t.Errorf("--env-file not applied:\n%s", r)
	}
}

func TestRunEntrypointNotFoundInGuestExits127(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("--rm", "--entrypoint", "/no/such/program", e.hello())
	if r.code != 127 {
		t.Fatalf("want exit 127:\n%s", r)
	}
	if !strings.Contains(r.stderr, "/no/such/program") {
		t.Errorf("stderr does not name the missing program:\n%s", r)
	}
}

func TestRunStopsGracefullyOnSIGTERM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "run", "--rm", "--kernel", e.kernel, "--time", "20", e.hello(), "-sleep", "10m", "-exit", "7")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var mu sync.Mutex
	sleeping := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if sc.Text() == "sleeping" {
				once.Do(func() { close(sleeping) })
			}
		}
	}()
	select {
	case <-sleeping:
	case <-done:
		t.Fatalf("kiln run ended before the program slept; stderr:\n%s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-done
	err = cmd.Wait()
	code := 0
	if err != nil {
		code = cmd.ProcessState.ExitCode()
	}
	mu.Lock()
	defer mu.Unlock()
	if code != 7 {
		t.Errorf("want exit 7 (the program's own, after it handled SIGTERM), got %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), stderr.String())
	}
	if !strings.Contains(out.String(), "got terminated") {
		t.Errorf("the program did not get SIGTERM:\n%s", out.String())
	}
}

func TestRunBootDeadlineReportsFailedBoot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("--rm", "--boot-timeout", "1ms", e.hello())
	if r.code != 125 {
		t.Fatalf("want exit 125:\n%s", r)
	}
	if !strings.Contains(r.stderr, "did not reach kiln-init within 1ms") {
		t.Errorf("stderr does not report the failed boot:\n%s", r)
	}
}

func TestRunBadInputFailsCleanly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		env  []string
		want string // a regexp the one error line must match
	}{
		{"missing program", []string{"run", "--kernel", e.kernel, filepath.Join(dir, "nope")}, nil, `program: stat .*/nope: no such file or directory`},
		{"not an ELF", []string{"run", "--kernel", e.kernel, text}, nil, `notes.txt is not an ELF executable`},
		{"dynamically linked", []string{"run", "--kernel", e.kernel, "/bin/ls"}, nil, `dynamically linked \(needs /lib64/ld-linux-x86-64.so.2\)`},
		{"unknown flag", []string{"run", "--bogus", e.hello()}, nil, `unknown flag: --bogus`},
		{"memory 0", []string{"run", "--kernel", e.kernel, "--memory", "0", e.hello()}, nil, `invalid memory "0"`},
		{"memory 1t", []string{"run", "--kernel", e.kernel, "--memory", "1t", e.hello()}, nil, `invalid memory 1024g: allowed 64m to \d+m`},
		{"memory junk", []string{"run", "--kernel", e.kernel, "--memory", "lots", e.hello()}, nil, `invalid memory "lots"`},
		{"cpus 0", []string{"run", "--kernel", e.kernel, "--cpus", "0", e.hello()}, nil, `invalid cpus -1|invalid cpus 0`},
		{"relative workdir", []string{"run", "--kernel", e.kernel, "-w", "srv", e.hello()}, nil, `invalid working directory "srv"`},
		{"bad accel", []string{"run", "--kernel", e.kernel, "--accel", "warp", e.hello()}, nil, `invalid accelerator "warp"`},
		{"bad name", []string{"run", "--kernel", e.kernel, "--name", "../x", e.hello()}, nil, `invalid VM name "../x"`},
		{"missing kernel name", []string{"run", "--kernel", "nosuchkernel", e.hello()}, nil, `no guest kernel "nosuchkernel"`},
		{"missing kernel path", []string{"run", "--kernel", filepath.Join(dir, "vmlinux"), e.hello()}, nil, `kernel image: .*vmlinux`},
		{"QEMU dies at start", []string{"run", "--kernel", text, e.hello()}, nil, `QEMU exited during start-up: .*qemu`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := e.command(context.Background(), c.args...)
			cmd.Env = append(cmd.Env, c.env...)
			var out, errb strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errb
			_ = cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 125 {
				t.Errorf("want exit 125, got %d\nstderr: %s", code, errb.String())
			}
			errLines := errorLines(errb.String())
			if len(errLines) != 1 || !regexp.MustCompile(c.want).MatchString(errLines[0]) {
				t.Errorf("want one error line matching %q, got:\n%s", c.want, errb.String())
			}
			if d := e.vmDirs(); len(d) != 0 {
				t.Errorf("left VM directories behind: %v", d)
			}
		})
	}
}

// errorLines drops the lines that are not errors: warnings and the notice
// that a daemon was started.
func errorLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !strings.Contains(l, "warning:") && !strings.HasPrefix(l, "kiln: started a daemon") {
			out = append(out, l)
		}
	}
	return out
}

// Without QEMU the daemon refuses to create the VM, with the fix. The
// daemon is started by this command, so it inherits the PATH that lacks
// QEMU.
func TestRunWithoutQEMUSaysHowToInstallIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cmd := e.command(context.Background(), "run", "--kernel", e.kernel, e.hello())
	cmd.Env = append(cmd.Env, "PATH="+t.TempDir())
	var errb strings.Builder
	cmd.Stderr = &errb
	_ = cmd.Run()
	lines := errorLines(errb.String())
	if code := cmd.ProcessState.ExitCode(); code != 125 || len(lines) != 1 || !strings.Contains(lines[0], "QEMU (qemu-system-x86_64) not found: install it") {
		t.Errorf("want exit 125 and one line naming the fix, got %d:\n%s", code, errb.String())
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("left VM directories behind: %v", d)
	}
}

func TestRunManyAtOnce(t *testing.T) {
	// Serial: it boots several VMs at once on purpose; other tests' boots on top would test the machine's load, not kiln.
	e := newEnv(t)
	const n = 4
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.kilnAsync("run", "--kernel", e.kernel, "--rm", e.hello(), "-exit", "5")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 5 || !strings.Contains(r.stdout, "hello from") {
			t.Errorf("VM %d of %d booted in parallel: want exit 5 and its greeting:\n%s", i, n, r)
		}
	}
}

func TestDoctorExplainsAccelerator(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.kiln("doctor")
	if !regexp.MustCompile(`(?m)^OK\s+accelerator\s+(kvm|tcg): `).MatchString(r.stdout) {
		t.Fatalf("doctor does not report the accelerator:\n%s", r)
	}
	// What this machine actually presents, read here rather than through
	// the probe doctor uses, decides what doctor must say.
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	var modules []string
	for _, m := range []string{"kvm_intel", "kvm_amd", "kvm_pvm"} {
		if exists("/sys/module/" + m) {
			modules = append(modules, m)
		}
	}
	accel := regexp.MustCompile(`(?m)^OK\s+accelerator\s+(.*)$`).FindStringSubmatch(r.stdout)[1]
	switch {
	case !exists("/dev/kvm"):
		if !strings.HasPrefix(accel, "tcg: ") || !strings.Contains(accel, "/dev/kvm does not exist") {
			t.Errorf("on a host without /dev/kvm doctor must choose TCG and say /dev/kvm is missing: %q", accel)
		}
		for _, m := range modules {
			if !strings.Contains(accel, m) {
				t.Errorf("module %s is loaded here but doctor does not name it: %q", m, accel)
			}
		}
		if len(modules) == 0 && !strings.Contains(accel, "no KVM module") {
			t.Errorf("no KVM module is loaded here but doctor does not say so: %q", accel)
		}
	case exists("/sys/module/kvm_pvm"):
		if !strings.HasPrefix(accel, "tcg: ") || !strings.Contains(accel, "PVM") {
			t.Errorf("on a host whose /dev/kvm is PVM doctor must choose TCG and say KVM is PVM: %q", accel)
		}
	default:
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		switch {
		case err != nil && (!strings.HasPrefix(accel, "tcg: ") || !strings.Contains(accel, "cannot be opened")):
			t.Errorf("/dev/kvm cannot be opened here (%v) but doctor says: %q", err, accel)
		case err == nil && len(modules) > 0 && !strings.HasPrefix(accel, "kvm: "):
			t.Errorf("/dev/kvm is usable %v here but doctor says: %q", modules, accel)
		}
	}
	if !regexp.MustCompile(`(?m)^OK\s+qemu\s+/`).MatchString(r.stdout) {
		t.Errorf("doctor does not report QEMU:\n%s", r)
	}
	// The test root has no kernel: doctor fails that check and says how to fix it.
	if r.code != 1 || !regexp.MustCompile(`(?m)^FAIL\s+kernel`).MatchString(r.stdout) || !strings.Contains(r.stdout, "kiln kernel build") {
		t.Errorf("doctor on a root without a kernel: want exit 1 and the fix:\n%s", r)
	}
}

// TestRunRootDir: `kiln run --rootfs DIR` boots DIR as the VM's root (what
// a container runtime prepares), runs the command in it with the flags'
// environment, directory and exit status, and keeps the guest's writes on
// the VM's disk: the host's directory is never written.
func TestRunRootDir(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	for _, d := range []string{"bin", "etc", "work"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prog, err := os.ReadFile(e.hello())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "hello"), prog, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte("from the root directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("--rm", "-e", "GREETING=hi", "-w", "/work", "--rootfs", dir,
		"/bin/hello", "-cat", "/etc/motd", "-write", "/etc/new", "-env", "GREETING", "-exit", "3")
	if r.code != 3 {
		t.Fatalf("want exit 3 from the program in the root directory:\n%s", r)
	}
	for _, want := range []string{"from the root directory\n", "write /etc/new: ok\n", "cwd=/work ", "GREETING=hi\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("want %q in the output:\n%s", want, r.stdout)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "new")); !os.IsNotExist(err) {
		t.Errorf("the guest's write reached the host's root directory: %v", err)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("--rm left VM directories: %v", d)
	}

	// Bad input: nothing is made, and the error names the directory.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rootfs", filepath.Join(dir, "missing"), "/bin/hello"}, "missing: no such file or directory"},
		{[]string{"--rootfs", filepath.Join(dir, "etc", "motd"), "/bin/hello"}, "motd is not a directory"},
		{[]string{"--rootfs", dir}, "no command to run in it"},
		{[]string{"--rootfs", "--mode", "binary", dir, "/bin/hello"}, "--mode applies to images"},
	} {
		r := e.run(append([]string{"--rm"}, c.args...)...)
		if r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("kiln run %v: want exit 125 and %q:\n%s", c.args, c.want, r)
		}
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("refused runs left VM directories: %v", d)
	}
}

// TestCreateThenStartAttached: kiln create makes a VM without starting it
// (ps: Created), kiln start -a runs it as kiln run would (its output, its
// exit status) and keeps it, and a second start -a prints only that run's
// output.
func TestCreateThenStartAttached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.kiln("create", "--name", "made", "--kernel", e.kernel, "-e", "GREETING=hi", e.hello(), "-env", "GREETING", "-exit", "4")
	if r.code != 0 || len(strings.TrimSpace(r.stdout)) != 64 {
		t.Fatalf("create: want a VM ID:\n%s", r)
	}
	if got := e.inspect("made", "{{.State.Status}}"); got != "created" {
		t.Errorf("after create the VM is %q, want created", got)
	}
	for i := 0; i < 2; i++ {
		r := e.kiln("start", "-a", "made")
		if r.code != 4 || strings.Count(r.stdout, "hello from made") != 1 || !strings.Contains(r.stdout, "GREETING=hi\n") || !strings.Contains(r.stderr, "this line went to stderr") {
			t.Errorf("start -a (run %d): want exit 4 and this run's output once:\n%s", i+1, r)
		}
	}
	if got := e.inspect("made", "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 4" {
		t.Errorf("after start -a the VM is %q, want exited 4 (kept)", got)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "-d", e.hello()}, "-d is for kiln run"},
		{[]string{"create", "--memory", "1q", e.hello()}, `"1q"`},
		{[]string{"start", "-a", "made", "other"}, "start -a takes one VM"},
		{[]string{"start", "-a", "no-such-vm"}, "no-such-vm"},
	} {
		if r := e.kiln(c.args...); r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("kiln %v: want exit 125 and %q:\n%s", c.args, c.want, r)
		}
	}
	if d := e.vmDirs(); len(d) != 1 {
		t.Errorf("want only the created VM's directory, got %v", d)
	}
}
