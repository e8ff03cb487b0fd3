package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"kiln.dev/kiln/internal/kernel"
	"kiln.dev/kiln/internal/testenv"
)

// These tests drive the built kiln binary as a user would, booting real VMs.
// They are the VM tier: they run only with KILN_VM_TESTS=1 (make test sets
// it; see internal/testenv), and every one goes through newEnv, testKernel
// or requireQEMU, which check that first. They need QEMU and a guest kernel
// (scripts/setup provides both) and skip with the fix when either is
// missing.
//
// Each test has its own root, daemon and home (newEnv), and a network test
// its own namespace, so most call t.Parallel: go test runs them two at a
// time (-parallel defaults to GOMAXPROCS), after the serial ones. A test
// stays serial, saying why in its first line, when it changes the
// process's environment or working directory, looks at host-wide state
// other tests' VMs change (cgroups, jail uids), presses the host on
// purpose (memory, many boots at once), or depends on timing.

var (
	binDir   string // kiln, kiln-init and hello, built by TestMain
	buildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	if testenv.VMTests() {
		// Only the VM tier drives the binaries; the unit tier does not
		// wait for (race-built) builds it would not use.
		buildErr = buildBinaries(dir)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildBinaries(dir string) error {
	return testenv.Build(dir, raceEnabled,
		testenv.Binary{Out: "kiln", Pkg: "kiln.dev/kiln/cmd/kiln"},
		testenv.Binary{Out: "kiln-init", Pkg: "kiln.dev/kiln/cmd/kiln-init", Static: true},
		testenv.Binary{Out: "hello", Pkg: "kiln.dev/kiln/examples/hello", Static: true})
}

// testKernel returns the guest kernel the tests boot: $KILN_TEST_KERNEL, or
// the default kernel of the default kiln root (what scripts/setup builds).
func testKernel(t *testing.T) string {
	t.Helper()
	testenv.NeedVM(t)
	if p := os.Getenv("KILN_TEST_KERNEL"); p != "" {
		return p
	}
	k, err := kernel.NewStore(defaultRoot()).Get(kernel.DefaultName)
	if err != nil {
		t.Skipf("no guest kernel (%v): run scripts/setup (or `kiln kernel build`), or set KILN_TEST_KERNEL", err)
	}
	return k.Path
}

func requireQEMU(t *testing.T) {
	t.Helper()
	testenv.NeedVM(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not found: run scripts/setup (apt-get install qemu-system-x86)")
	}
}

// env is one test's kiln: its own root and the test kernel, and a home of
// its own for the kiln processes it runs.
type env struct {
	t      *testing.T
	root   string
	kernel string
	// home, when set, stands for the user's home and registry
	// configuration in the environment of kiln commands (and so of the
	// daemon they start): the developer's own registry credentials stay
	// out of kiln, and tests need not change the process's environment,
	// which would keep them from running in parallel.
	home string
	// extraEnv is added to the environment of kiln commands (and so of
	// the daemon they start): KILN_TEMPLATES=1, say.
	extraEnv []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.NeedVM(t)
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	requireQEMU(t)
	e := &env{t: t, root: t.TempDir(), kernel: testKernel(t), home: t.TempDir()}
	t.Cleanup(func() {
		e.stopDaemon()
		if pids := qemuUnder(e.root); len(pids) > 0 {
			t.Errorf("QEMU processes left running under %s: %v", e.root, pids)
			for _, p := range pids {
				_ = exec.Command("kill", "-9", fmt.Sprint(p)).Run()
			}
		}
		e.checkDaemonLog()
	})
	return e
}

// checkDaemonLog fails the test with the race reports in the root's
// daemon.log: every daemon the test started for the root (on demand, or
// again after a kill) appends to it, and a race-built one (see
// buildBinaries) writes its reports there. Run it once the daemon is
// stopped, so that the log is whole.
func (e *env) checkDaemonLog() {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.root, "daemon.log"))
	if err != nil {
		return // no daemon ran
	}
	if reports := raceReports(string(b)); reports != "" {
		e.t.Errorf("the daemon of %s reported a data race:\n%s", e.root, reports)
	}
}

// raceReports returns the race detector's reports in log (each from its
// "WARNING: DATA RACE" to the "==================" that closes it), or "".
func raceReports(log string) string {
	const start, sep = "WARNING: DATA RACE", "=================="
	var out []string
	for {
		i := strings.Index(log, start)
		if i < 0 {
			break
		}
		log = log[i:]
		end := strings.Index(log, "\n"+sep)
		if end < 0 {
			out = append(out, log)
			break
		}
		out = append(out, log[:end])
		log = log[end+1+len(sep):]
	}
	return strings.Join(out, "\n"+sep+"\n")
}

// daemonPID returns the PID of the root's daemon, or 0.
func (e *env) daemonPID() int {
	b, err := os.ReadFile(filepath.Join(e.root, "run", "kiln.pid"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscanf(string(b), "%d", &pid)
	return pid
}

// stopDaemon ends the root's daemon (started on demand by the CLI), if any,
// and waits for it to be gone.
func (e *env) stopDaemon() {
	pid := e.daemonPID()
	if pid == 0 {
		return
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p.Signal(syscall.Signal(0)) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = p.Kill()
}

// result is one finished kiln command.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--root", e.root}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "kiln"), all...)
	cmd.Env = append(os.Environ(), "KILN_ROOT="+e.root)
	if e.home != "" {
		cmd.Env = append(cmd.Env, "HOME="+e.home, "DOCKER_CONFIG="+e.home,
			"REGISTRY_AUTH_FILE="+filepath.Join(e.home, "none.json"), "XDG_RUNTIME_DIR="+e.home)
	}
	cmd.Env = append(cmd.Env, e.extraEnv...)
	return cmd
}

// kiln runs a kiln command to its end (bounded, so a hang fails the test
// rather than the whole run).
func (e *env) kiln(args ...string) result {
	e.t.Helper()
	r, err := e.tryKiln(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// kilnAsync is kiln for a goroutine other than the test's own, which must
// not end the test: a command that could not be run at all comes back as
// exit -1 with the error as its stderr, for the test goroutine to fail on.
func (e *env) kilnAsync(args ...string) result {
	r, err := e.tryKiln(args...)
	if err != nil {
		return result{code: -1, stderr: err.Error()}
	}
	return r
}

// tryKiln runs a kiln command to its end, bounded; the error says why it
// could not be run (a non-zero exit is no error: it is in the result).
func (e *env) tryKiln(args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return result{}, fmt.Errorf("running kiln %v: %w", args, err)
	}
	if reports := raceReports(errb.String()); reports != "" {
		// The CLI is race-built too; Errorf, unlike Fatal, is fine from
		// any goroutine.
		e.t.Errorf("kiln %v reported a data race:\n%s", args, reports)
	}
	return result{code, out.String(), errb.String()}, nil
}

// run is `kiln run --kernel K ARGS...`.
func (e *env) run(args ...string) result {
	e.t.Helper()
	return e.kiln(append([]string{"run", "--kernel", e.kernel}, args...)...)
}

func (e *env) hello() string { return filepath.Join(binDir, "hello") }

// vmDirs lists the VM directories under the root.
func (e *env) vmDirs() []string {
	ents, _ := os.ReadDir(filepath.Join(e.root, "vms"))
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

// qemuUnder returns the PIDs of QEMU processes of root: an unconfined one
// names root's files on its command line; a jailed one names none (its
// files are bound under /vm in its jail) and carries KILN_ROOT=root in its
// environment.
func qemuUnder(root string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) {
			continue
		}
		env, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "environ"))
		if !bytes.Contains(b, []byte(root+"/")) && !bytes.Contains(env, []byte("\x00KILN_ROOT="+root+"\x00")) && !bytes.HasPrefix(env, []byte("KILN_ROOT="+root+"\x00")) {
			continue
		}
		var pid int
		fmt.Sscanf(strings.TrimPrefix(p, "/proc/"), "%d", &pid)
		pids = append(pids, pid)
	}
	return pids
}
