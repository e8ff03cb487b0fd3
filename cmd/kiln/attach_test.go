package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestAttach follows a running VM's program from the attach on, passes
// it a Ctrl-C, and exits with its exit code; a stopped VM is refused.
func TestAttach(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/box:attach", dockerTestImage(t))
	ok(t, "run -d", e.run("-d", "--name", "a", "--pull", "never", "kiln-test/box:attach", "sh", "-c",
		`trap 'echo got-int; exit 7' INT; echo before-attach; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done`))
	t.Cleanup(func() { e.kiln("rm", "-f", "a") })
	e.awaitLog("a", "tick 2", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "attach", "a")
	var out, errb lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for a tick printed after the attach, then Ctrl-C.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), "tick") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("kiln attach: want exit 7 (the program's, after the Ctrl-C it was passed), got %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "got-int") || strings.Contains(out.String(), "before-attach") {
		t.Errorf("kiln attach output: want the trap's line and nothing from before the attach:\n%s", out.String())
	}
	if r := e.kiln("attach", "a"); r.code != 125 || !strings.Contains(r.stderr, "start it first") {
		t.Errorf("kiln attach of a stopped VM: want 125:\n%s", r)
	}
}

// lockedBuffer is a bytes.Buffer a command writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
