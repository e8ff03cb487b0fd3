package qemu

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/vmm"
)

// helperEnv guards TestHelperProcess: set, the test binary acts as a
// stand-in QEMU process that carries "-name kiln-<id>" on its command line
// and lives until its stdin closes.
const helperEnv = "KILN_QEMU_TEST_HELPER"

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	// Readiness: by the time the parent reads this, exec has finished and
	// /proc/self/cmdline is set (it is empty for a moment during execve,
	// after the parent's Start has already returned).
	os.Stdout.WriteString("ready\n")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startHelper starts a process whose cmdline has "-name <name>" and returns
// it; it is killed and reaped when the test ends.
func startHelper(t *testing.T, name string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "--", "-name", name)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper process did not start: %q, %v; stderr: %s", line, err, stderr.String())
	}
	return cmd
}

func writePIDFile(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, PIDFile), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFindProcessNotRunning(t *testing.T) {
	// A PID that certainly belonged to a process that has exited.
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1) to make an exited PID")
	}
	done := exec.Command(truePath)
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	gonePID := done.ProcessState.Pid()

	tests := []struct {
		name    string
		pidfile *string // nil: no pidfile
	}{
		{"no pidfile", nil},
		{"not a number", ptr("abc")},
		{"empty", ptr("")},
		{"negative", ptr("-5")},
		{"zero", ptr("0\n")},
		{"our own process, not a QEMU of this VM", ptr(strconv.Itoa(os.Getpid()) + "\n")},
		{"exited process", ptr(strconv.Itoa(gonePID))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.pidfile != nil {
				writePIDFile(t, dir, *tt.pidfile)
			}
			pid, err := FindProcess(dir, "vm1")
			if !errors.Is(err, vmm.ErrNotRunning) {
				t.Fatalf("FindProcess = %d, %v; want ErrNotRunning", pid, err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestFindProcessLive(t *testing.T) {
	cmd := startHelper(t, ProcessName("vm1"))
	pid := cmd.Process.Pid
	dir := t.TempDir()
	writePIDFile(t, dir, strconv.Itoa(pid)+"\n")

	got, err := FindProcess(dir, "vm1")
	if err != nil || got != pid {
		t.Fatalf("FindProcess(vm1) = %d, %v; want %d, nil", got, err, pid)
	}
	// The same live process is not another VM's QEMU (a reused PID).
	for _, id := range []string{"vm2", "vm", "vm1x"} {
		if got, err := FindProcess(dir, id); !errors.Is(err, vmm.ErrNotRunning) {
			t.Errorf("FindProcess(%s) = %d, %v; want ErrNotRunning", id, got, err)
		}
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	for _, c := range []vmm.Config{
		{},
		{ID: "a", Dir: "/d", Kernel: "/k", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelAuto},
		{ID: "a", Dir: "/d", Kernel: "/k", MemoryMiB: 0, CPUs: 1, Accel: vmm.AccelTCG},
	} {
		if m, err := New(c); err == nil {
			t.Errorf("New(%+v) = %v, nil; want error", c, m)
		}
	}
}

func testConfig(t *testing.T, id string) vmm.Config {
	return vmm.Config{ID: id, Dir: t.TempDir(), Kernel: "/k", MemoryMiB: 64, CPUs: 1, Accel: vmm.AccelTCG}
}

func TestMachineNotStarted(t *testing.T) {
	m, err := New(testConfig(t, "idle"))
	if err != nil {
		t.Fatal(err)
	}
	info := m.Info()
	if info.Backend != "qemu" || info.Running || info.PID != 0 || info.Accel != vmm.AccelTCG {
		t.Errorf("Info() = %+v, want qemu backend, not running, no PID, tcg", info)
	}
	ctx := context.Background()
	if err := m.Wait(ctx); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Wait = %v, want ErrNotRunning", err)
	}
	if err := m.Stop(ctx); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Stop = %v, want ErrNotRunning", err)
	}
	if err := m.Kill(); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Kill = %v, want ErrNotRunning", err)
	}
}

func TestAttachAndKill(t *testing.T) {
	cmd := startHelper(t, ProcessName("att"))
	cfg := testConfig(t, "att")
	writePIDFile(t, cfg.Dir, strconv.Itoa(cmd.Process.Pid)+"\n")

	m, err := Attach(cfg)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	info := m.Info()
	if !info.Running || info.PID != cmd.Process.Pid {
		t.Errorf("Info() = %+v, want running with pid %d", info, cmd.Process.Pid)
	}
	if !slices.Equal(info.Argv, cmd.Args) {
		t.Errorf("Info().Argv = %q, want the process's cmdline %q", info.Argv, cmd.Args)
	}
	// The helper is our child: reap it as soon as it dies so that its
	// pidfd reports the exit.
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()

	if err := m.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := m.Wait(context.Background()); err != nil {
		t.Fatalf("Wait after Kill: %v", err)
	}
	if m.Info().Running {
		t.Error("Info().Running after Kill")
	}
	<-reaped
	if ws := cmd.ProcessState; ws == nil || ws.Success() {
		t.Errorf("helper process state %v: want killed", ws)
	}
}

func TestAttachNotRunning(t *testing.T) {
	cfg := testConfig(t, "none")
	if _, err := Attach(cfg); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Attach without pidfile = %v, want ErrNotRunning", err)
	}
}

// TestStopEscalatesToSIGTERM: a process that does not answer QMP is ended
// with SIGTERM, and Stop reports that it had to force it.
func TestStopEscalatesToSIGTERM(t *testing.T) {
	cmd := startHelper(t, ProcessName("stop"))
	cfg := testConfig(t, "stop")
	cfg.StopTimeout = 50 * time.Millisecond
	writePIDFile(t, cfg.Dir, strconv.Itoa(cmd.Process.Pid)+"\n")
	m, err := Attach(cfg)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()

	err = m.Stop(context.Background())
	if !errors.Is(err, vmm.ErrTimeout) {
		t.Fatalf("Stop = %v, want ErrTimeout", err)
	}
	<-reaped
	if m.Info().Running {
		t.Error("Info().Running after Stop")
	}
}

func TestLastLines(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		n             int
		want          string
	}{
		{"empty", "", 3, ""},
		{"blank lines only", "\n  \n\n", 3, ""},
		{"fewer than n", "a\n\nb\n", 5, "a | b"},
		{"last n", "1\n2\n3\n4\n5\n", 2, "4 | 5"},
		{"trims", "  x  \n\ty\t\n", 2, "x | y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := LastLines(p, tt.n); got != tt.want {
				t.Errorf("LastLines = %q, want %q", got, tt.want)
			}
		})
	}
	if got := LastLines(filepath.Join(dir, "missing"), 1); got != "" {
		t.Errorf("LastLines(missing) = %q", got)
	}
}

func TestListenHandsOverSocket(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "qmp.sock")
	// A stale file at the path is replaced.
	if err := os.WriteFile(p, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := listen(p)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer f.Close()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a 0600 socket", st.Mode())
	}
}
