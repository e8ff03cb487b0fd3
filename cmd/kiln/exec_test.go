package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A bare VM: exec runs commands beside the program, with its environment,
// and exits with their codes; kill -s delivers signals to the program.
func TestExecAndSignalsInABareVM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "web", "-e", "K=from-run", "--memory", "128m", e.hello(), "-sleep", "10m", "-trap-hup")
	t.Cleanup(func() { e.kiln("rm", "-f", "web") })
	e.awaitLog("web", "sleeping", 1)

	r := ok(t, "exec", e.kiln("exec", "-e", "X=from-exec", "web", "hello", "-env", "K"))
	if !strings.Contains(r.stdout, "K=from-run\n") || !strings.Contains(r.stderr, "this line went to stderr") {
		t.Errorf("exec output: %s", r)
	}
	r = ok(t, "exec -e", e.kiln("exec", "-e", "X=from-exec", "web", "hello", "-env", "X"))
	if !strings.Contains(r.stdout, "X=from-exec\n") {
		t.Errorf("exec -e: %s", r)
	}
	r = ok(t, "exec -e over the program's", e.kiln("exec", "-e", "K=over", "web", "hello", "-env", "K"))
	if !strings.Contains(r.stdout, "K=over\n") {
		t.Errorf("exec -e K=over: %s", r)
	}
	if r = e.kiln("exec", "web", "hello", "-exit", "7"); r.code != 7 {
		t.Errorf("exec exit 7: %s", r)
	}
	if r = e.kiln("exec", "web", "no-such-command"); r.code != 127 || !strings.Contains(r.stderr, "no-such-command") {
		t.Errorf("exec of a missing command: want 127 naming it\n%s", r)
	}
	if r = e.kiln("exec", "web", "/proc"); r.code != 126 {
		t.Errorf("exec of a directory: want 126\n%s", r)
	}
	if r = e.kiln("exec", "web", "hello", "-signal", "9"); r.code != 137 {
		t.Errorf("exec killed by SIGKILL: want 137\n%s", r)
	}

	// Sessions run at once on the one agent connection, each output whole.
	results := make(chan result, 4)
	for i := range 4 {
		go func() { results <- e.kilnAsync("exec", "web", "hello", "-lines", "3000", "-exit", fmt.Sprint(i)) }()
	}
	codes := map[int]bool{}
	for range 4 {
		r := <-results
		codes[r.code] = true
		if n := strings.Count(r.stdout, "\nline "); n != 3000 || !strings.Contains(r.stdout, "line 3000 of 3000\n") {
			t.Errorf("concurrent exec: %d lines, exit %d", n, r.code)
		}
	}
	if len(codes) != 4 {
		t.Errorf("concurrent execs' exit codes: %v, want 0 to 3", codes)
	}

	// A signal to kiln exec reaches the command.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "exec", "web", "hello", "-sleep", "5m")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "sleeping" {
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	var rest []string
	for sc.Scan() {
		rest = append(rest, sc.Text())
	}
	if err := cmd.Wait(); err != nil || len(rest) != 1 || rest[0] != "got terminated, exiting" {
		t.Errorf("SIGTERM to kiln exec: %v, then %q", err, rest)
	}

	ok(t, "kill -s HUP", e.kiln("kill", "-s", "HUP", "web"))
	e.awaitLog("web", "got hangup, still running", 1)
	r = e.kiln("kill", "-s", "NOPE", "web")
	if r.code != 125 || !strings.Contains(r.stderr, `"NOPE"`) {
		t.Errorf("kill -s NOPE: want 125 naming the signal\n%s", r)
	}
	if got := e.inspect("web", "{{.State.Status}}"); got != "running" {
		t.Errorf("after the bad signal the VM is %s", got)
	}

	r = ok(t, "stats", e.kiln("stats", "--no-stream", "web"))
	if !regexp.MustCompile(`(?m)^web\s+[0-9.]+MiB / 1[0-2][0-9]\.[0-9]MiB\s+[0-9.]+%\s+[0-9.]+ [0-9.]+ [0-9.]+\s+[1-9][0-9]*$`).MatchString(r.stdout) {
		t.Errorf("stats of a 128m VM:\n%s", r)
	}

	ok(t, "stop", e.kiln("stop", "web"))
	r = e.kiln("exec", "web", "hello")
	if r.code != 125 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("exec in a stopped VM: want 125, not running\n%s", r)
	}
	r = e.kiln("exec", "nosuchvm", "hello")
	if r.code != 125 || !strings.Contains(r.stderr, "nosuchvm") {
		t.Errorf("exec in a missing VM:\n%s", r)
	}
}

func TestOOMKillIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "hog", "--memory", "96m", e.hello(), "-alloc-mb", "1024")
	t.Cleanup(func() { e.kiln("rm", "-f", "hog") })
	r := e.kiln("wait", "hog")
	if strings.TrimSpace(r.stdout) != "137" {
		t.Fatalf("wait for the hog: %s", r)
	}
	if got := e.inspect("hog", "{{.State.OOMKilled}}"); got != "true" {
		t.Errorf("State.OOMKilled = %s, want true", got)
	}
	e.awaitEvents("hog", "oom", 1)
}

// The agent connection going away mid-exec, from either end, leaves the
// VM running and later execs working; the guest going away ends an exec
// with a clear error.
func TestExecSurvivesDisconnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runD("--name", "web", "--memory", "128m", e.hello(), "-sleep", "10m")
	t.Cleanup(func() { e.kiln("rm", "-f", "web") })
	e.awaitLog("web", "sleeping", 1)
	if got := e.inspect("web", "{{.State.OOMKilled}}"); got != "false" {
		t.Errorf("State.OOMKilled of a VM that did not run out of memory: %s", got)
	}

	// streaming starts an exec writing zeros without end and returns once
	// output flows.
	streaming := func() (*exec.Cmd, *bytes.Buffer) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		t.Cleanup(cancel)
		cmd := e.command(ctx, "exec", "web", "hello", "-zero", "100000000000")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(out, make([]byte, 1<<20)); err != nil {
			t.Fatalf("reading exec output: %v", err)
		}
		go io.Copy(io.Discard, out)
		return cmd, &stderr
	}
	alive := func(what string) {
		t.Helper()
		r := e.kiln("exec", "web", "hello", "-exit", "5")
		if r.code != 5 {
			t.Fatalf("exec after %s: %s", what, r)
		}
		if got := e.inspect("web", "{{.State.Status}}"); got != "running" {
			t.Fatalf("after %s the VM is %s", what, got)
		}
	}

	cmd, _ := streaming()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	alive("the exec client was killed")

	cmd, stderr := streaming()
	daemon := e.daemonPID()
	_ = syscall.Kill(daemon, syscall.SIGKILL)
	if err := cmd.Wait(); err == nil {
		t.Errorf("exec went on as if nothing happened when its daemon was killed")
	} else if !strings.Contains(stderr.String(), "exec stream ended") {
		t.Errorf("exec whose daemon was killed: %v, stderr %q", err, stderr)
	}
	alive("the daemon was killed")

	cmd, stderr = streaming()
	ok(t, "kill the VM", e.kiln("kill", "web"))
	err := cmd.Wait()
	if ee, isExit := err.(*exec.ExitError); !isExit || ee.ExitCode() != 125 || !strings.Contains(stderr.String(), "guest agent") {
		t.Errorf("exec in a VM that ended: %v, stderr %q; want 125 and a word on the guest agent", err, stderr)
	}
}
