package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestPauseFreezesTheGuest: a paused VM's guest is frozen (a loop that
// prints ten lines a second prints none while paused), ps and inspect say
// Paused, exec is refused,
// a daemon restart keeps it paused, unpause lets it run on, and a stop of
// a paused VM delivers the program its signal.
func TestPauseFreezesTheGuest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loadImage("kiln-test/ticker:1", testImage(t, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/busybox", "sh", "-c"}
	}, userlandLayer(t)))
	e.runD("--name", "frozen", "--pull", "never", "kiln-test/ticker:1",
		"trap 'echo got TERM; exit 6' TERM; i=0; while :; do i=$((i+1)); echo tick $i; usleep 100000; done")
	e.awaitLog("frozen", "tick 3", 1)
	ticks := func() int {
		t.Helper()
		return strings.Count(e.kiln("logs", "frozen").stdout, "tick ")
	}
	if r := e.kiln("pause", "frozen"); r.code != 0 {
		t.Fatalf("pause:\n%s", r)
	}
	time.Sleep(time.Second) // lines written before the pause reach the log
	atPause := ticks()
	if got := e.inspect("frozen", "{{.State.Status}} {{.State.Running}} {{.State.Paused}}"); got != "paused true true" {
		t.Errorf("inspect of a paused VM: %q", got)
	}
	if r := e.kiln("ps"); !strings.Contains(r.stdout, "(Paused)") {
		t.Errorf("ps does not show the VM paused:\n%s", r)
	}
	if r := e.kiln("exec", "frozen", "/bin/busybox", "true"); r.code != 125 || !strings.Contains(r.stderr, "paused") {
		t.Errorf("exec into a paused VM: want 125 saying it is paused:\n%s", r)
	}
	if r := e.kiln("pause", "frozen"); r.code != 125 || !strings.Contains(r.stderr, "already paused") {
		t.Errorf("pause of a paused VM:\n%s", r)
	}
	e.stopDaemon() // the next command's daemon finds it paused
	if got := e.inspect("frozen", "{{.State.Status}}"); got != "paused" {
		t.Errorf("after a daemon restart the VM is %q, want paused", got)
	}
	time.Sleep(2 * time.Second)
	// Frozen: a line in flight when the pause came, at most, in 2 s where
	// the loop writes 10 a second.
	if n := ticks(); n > atPause+1 {
		t.Errorf("the paused guest went on: %d lines at the pause, %d two seconds later", atPause, n)
	}
	if r := e.kiln("unpause", "frozen"); r.code != 0 {
		t.Fatalf("unpause:\n%s", r)
	}
	e.awaitLog("frozen", fmt.Sprintf("tick %d", atPause+5), 1)
	if r := e.kiln("unpause", "frozen"); r.code != 125 || !strings.Contains(r.stderr, "not paused") {
		t.Errorf("unpause of a running VM:\n%s", r)
	}
	// Stopping a paused VM: its program gets the stop signal.
	if r := e.kiln("pause", "frozen"); r.code != 0 {
		t.Fatalf("pause:\n%s", r)
	}
	if r := e.kiln("stop", "frozen"); r.code != 0 {
		t.Fatalf("stop of a paused VM:\n%s", r)
	}
	if got := e.inspect("frozen", "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 6" {
		t.Errorf("after stop of a paused VM: %q, want exited 6 (the program's TERM trap)", got)
	}
	if r := e.kiln("pause", "frozen"); r.code != 125 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("pause of a stopped VM:\n%s", r)
	}
}
