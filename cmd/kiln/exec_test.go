package main

import (
	"strings"
	"testing"
)

// A bare VM: exec runs commands beside the program, with its environment,
// and exits with their codes; kill -s delivers signals to the program.
func TestExecAndSignalsInABareVM(t *testing.T) {
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

	ok(t, "kill -s HUP", e.kiln("kill", "-s", "HUP", "web"))
	e.awaitLog("web", "got hangup, still running", 1)
	r = e.kiln("kill", "-s", "NOPE", "web")
	if r.code != 125 || !strings.Contains(r.stderr, `"NOPE"`) {
		t.Errorf("kill -s NOPE: want 125 naming the signal\n%s", r)
	}
	if got := e.inspect("web", "{{.State.Status}}"); got != "running" {
		t.Errorf("after the bad signal the VM is %s", got)
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
