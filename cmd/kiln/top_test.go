package main

import (
	"strings"
	"testing"
)

// TestTop lists a guest's processes, and a hostile guest's process
// names reach the host's terminal without their escape sequences.
func TestTop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/box:top", dockerTestImage(t))
	// The inner sh's $0 (its command line's first word) is an escape
	// sequence that would clear a terminal and ring its bell.
	ok(t, "run -d", e.run("-d", "--name", "procs", "--pull", "never", "kiln-test/box:top", "sh", "-c",
		`e=$(printf "\033[2J\007"); sh -c "sleep 3000; true" "$e" & echo up; exec sleep 2000`))
	t.Cleanup(func() { e.kiln("rm", "-f", "procs") })
	e.awaitLog("procs", "up", 1)
	r := ok(t, "top", e.kiln("top", "procs"))
	for _, want := range []string{"UID", "sleep 2000", "sleep 3000"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("kiln top: no %q:\n%s", want, r.stdout)
		}
	}
	if strings.ContainsAny(r.stdout, "\x1b\x07") {
		t.Errorf("kiln top printed the guest's escape sequence: %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "?[2J?") {
		t.Errorf("kiln top: the hostile name is not shown replaced:\n%s", r.stdout)
	}
	// PID 1 is kiln-init.
	lines := strings.Split(r.stdout, "\n")
	if len(lines) < 2 || !strings.Contains(lines[1], " 1 ") {
		t.Errorf("kiln top: the first process is not PID 1:\n%s", r.stdout)
	}
	ok(t, "stop", e.kiln("stop", "-t", "1", "procs"))
	if r := e.kiln("top", "procs"); r.code != 125 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("kiln top of a stopped VM: want 125, not running:\n%s", r)
	}
}
